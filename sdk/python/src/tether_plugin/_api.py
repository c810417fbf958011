"""What a plugin is made of: :class:`Plugin`, :class:`Subscription`, :class:`Message`, :class:`Nack`."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Mapping, Optional, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    from ._runtime import Bus


@dataclass(frozen=True)
class Subscription:
    """What the plugin asks the sidecar to deliver.

    Args:
        topic: a topic pattern, dot-separated tokens where ``*`` matches one token and ``>`` (last
            only) one or more: ``orders.*``, ``signals.>``.
        group: a queue group: the instances subscribed with one group share the messages (each
            message goes to one of them). ``None``: every instance gets every message.
        ack_deadline: seconds a delivery may stay unacknowledged before it is delivered again;
            ``None`` for the bus's default (30 s).
        max_deliver: deliveries without an ack before the message goes to ``dlq.<topic>``;
            ``None`` for the bus's default (5).
    """

    topic: str
    group: Optional[str] = None
    ack_deadline: Optional[float] = None
    max_deliver: Optional[int] = None


@dataclass(frozen=True)
class Message:
    """One delivery handed to :meth:`Plugin.on_message`.

    Attributes:
        topic: the concrete topic it was published to (``orders.eu.created``).
        data: the payload, as published.
        headers: the publisher's headers.
        redelivered: how many times this message was delivered to this consumer before; 0 the
            first time.
        sequence: the message's sequence in its topic's log (1, 2, ...).
        subscription: the subscription's pattern this delivery answers (``orders.*``).
        delivery_id: names this delivery to the sidecar; the SDK acks or nacks it for you.
    """

    topic: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    redelivered: int = 0
    sequence: int = 0
    subscription: str = ""
    delivery_id: str = ""


class Nack(Exception):
    """Raise from :meth:`Plugin.on_message` to have the message delivered again after ``delay``.

    Any other exception nacks too, with no delay and the exception as the reason.

    Args:
        reason: why, for the sidecar's logs.
        delay: seconds before the bus delivers the message again (0: at once).
    """

    def __init__(self, reason: str = "", delay: float = 0.0) -> None:
        if delay < 0:
            raise ValueError(f"Nack delay must be >= 0 seconds, got {delay}")
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Plugin:
    """Base class of a plugin: override the hooks you need and pass an instance to :func:`run`.

    The SDK calls the hooks in this order: :meth:`on_start` once the sidecar welcomed the
    session; then :meth:`on_message` for each delivery, in order, one at a time, while
    :meth:`on_health_check` answers the sidecar's health checks on a thread of its own; and
    :meth:`on_stop` once, when the plugin is asked to stop.
    """

    #: What to receive; an empty list for a plugin that only publishes.
    subscriptions: ClassVar[Sequence[Union[Subscription, str]]] = ()

    def on_start(self, bus: "Bus") -> None:
        """Called once, after the sidecar accepted the session and before any delivery.

        It may publish. Health checks are answered only once it returned; raising from it ends
        :func:`run` with that exception.
        """

    def on_message(self, bus: "Bus", msg: Message) -> None:
        """Called for each delivery, in order, one at a time.

        Returning acknowledges the message; raising nacks it: the bus delivers it again (after
        ``delay`` seconds when the exception is a :class:`Nack`). The default acks.
        """

    def on_health_check(self) -> bool:
        """Answers the sidecar's health check: ``True`` when healthy.

        Called on a thread of its own (a long :meth:`on_message` does not delay it) and only
        after :meth:`on_start` returned; it must answer within 5 s. Raising counts as unhealthy.
        """
        return True

    def on_stop(self) -> None:
        """Called once when the plugin is asked to stop (the sidecar's Stop, SIGTERM or SIGINT,
        or the ``stop`` event given to :func:`run`).

        The :meth:`on_message` in flight, if any, runs on and is acked or nacked after; no new
        delivery starts. Publishing from here still works.
        """
