"""The SDK's exceptions: every refusal by the sidecar is a :class:`BusError`."""

from typing import Optional


class BusError(Exception):
    """Base of every error the bus or the sidecar reports to the plugin.

    ``code`` is the gRPC status code's name the refusal carried (``PERMISSION_DENIED``, ...), or
    ``None`` when the SDK itself raised the error (a timeout, a closed session).
    """

    code: Optional[str] = None

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class PermissionDenied(BusError):
    """A publish to a topic outside the instance's grants."""

    code = "PERMISSION_DENIED"


class InvalidArgument(BusError):
    """A publish to a topic with a wildcard, or a malformed one."""

    code = "INVALID_ARGUMENT"


class ResourceExhausted(BusError):
    """The sidecar's outbox is full; publish again later (with the same idempotency key)."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(BusError):
    """The sidecar is stopping and the bus is unreachable, or the session ended before a result."""

    code = "UNAVAILABLE"


class PublishTimeout(BusError, TimeoutError):
    """No result for a publish within the caller's ``timeout``.

    The message may still have been stored: publishing again with the same ``idempotency_key``
    stores it at most once.
    """


class SessionClosed(BusError):
    """The plugin's session is over (``run`` returned or is stopping): nothing can be published."""


class SessionRefused(BusError):
    """The sidecar refused the session or ended it with an error; ``run`` raises it.

    ``addr`` is the sidecar's address, ``code`` the status code's name (``FAILED_PRECONDITION``
    for another protocol major, ``PERMISSION_DENIED`` for a subscription outside the grants,
    ``INVALID_ARGUMENT`` for a bad pattern or group, ``ALREADY_EXISTS`` when another plugin
    session is live) and ``details`` the sidecar's reason.
    """

    def __init__(self, addr: str, code: str, details: str, *, ended: bool = False) -> None:
        what = "ended the session" if ended else "refused the session"
        super().__init__(f"the sidecar at {addr} {what}: {code}: {details}", code)
        self.addr = addr
        self.details = details


class ConnectTimeout(BusError, TimeoutError):
    """No session with the sidecar within the connect timeout; ``run`` raises it.

    ``addr`` is the sidecar's address and ``cause`` the last connection error.
    """

    def __init__(self, addr: str, timeout: float, cause: str) -> None:
        super().__init__(f"no session with the sidecar at {addr} within {timeout:g} s "
                         f"(SIDECAR_CONNECT_TIMEOUT): {cause}")
        self.addr = addr
        self.cause = cause


# What a PublishRefused's code turns into.
REFUSALS = {
    "PERMISSION_DENIED": PermissionDenied,
    "INVALID_ARGUMENT": InvalidArgument,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "UNAVAILABLE": Unavailable,
}
