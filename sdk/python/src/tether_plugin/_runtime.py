"""The plugin session: connect, Hello, callbacks, publishes, Stop, reconnect.

Threads of one :func:`run`:

* the caller's thread: the control loop. It connects, reconnects and stops, driven by events on
  ``_Runner._control`` (a ``queue.SimpleQueue``, whose ``put`` may be called from a signal
  handler);
* one reader per session call: turns the sidecar's messages into events, health checks, work and
  publish results;
* the worker: ``on_start``, then ``on_message`` for each delivery in order, one at a time;
* the health thread: ``on_health_check``, once ``on_start`` returned;
* gRPC's own thread that sends the session's outbox (the request iterator).

What the plugin sends goes through two queues (``_Outbox``): control messages (Hello, acks,
nacks, health answers) go before any publish still queued, so that they do not wait behind a
burst of publishes (an ack past its deadline is delivered again); publishes keep their order.
Publishes are bounded: while those queued or sent and not yet answered by the sidecar weigh
``PUBLISH_BUDGET`` (16 MiB, the sidecar's own budget), a further ``publish`` blocks until enough
of them are answered.
"""

import collections
import itertools
import logging
import os
import queue
import re
import signal
import threading
import time
import uuid
from typing import (Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple, Type,
                    Union, cast)

import grpc

from ._api import Message, Nack, Plugin, Subscription
from ._errors import (
    REFUSALS,
    BusError,
    ConnectTimeout,
    PublishTimeout,
    SessionClosed,
    SessionRefused,
    Unavailable,
)
from ._version import __version__
from .proto import bus_pb2 as pb
from .proto import bus_pb2_grpc as pb_grpc

log = logging.getLogger("tether_plugin")

PROTOCOL_MAJOR = 1
METADATA = (("tether-bus-protocol", str(PROTOCOL_MAJOR)),)
CLIENT = f"tether-plugin-python {__version__}"
DEFAULT_ADDR = "127.0.0.1:9191"
DEFAULT_CONNECT_TIMEOUT = 60.0
MAX_BACKOFF = 2.0
FIRST_BACKOFF = 0.05
# How long the sidecar may take to end the call after the plugin half-closed it.
CLOSE_WAIT = 30.0

# Codes with which a call may end that say nothing about the session itself: the connection, or
# the sidecar's process, went away. The SDK tries again; every other code is a refusal.
TRANSIENT = frozenset({"OK", "UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "UNKNOWN",
                       "INTERNAL", "ABORTED"})

_START = object()

# What the plugin's publishes queued or sent and not yet answered by the sidecar may weigh
# together: 16 MiB, the sidecar's own budget for what it took from the plugin. A publish past it
# blocks (in call order) until the sidecar answered enough of those before it.
PUBLISH_BUDGET = 16 * 1024 * 1024
# The unit a publish weighs in, as the sidecar counts it.
PUBLISH_UNIT = 1024


def _publish_weight(p: "pb.PluginPublish") -> int:
    """A publish's share of PUBLISH_BUDGET, counted as the sidecar counts it (its encoded size
    in started KiB, at least one) and at most the whole budget (a larger publish goes alone).
    Counted alike, and over more (what the sidecar has not read yet too), the SDK's budget is
    spent no later than the sidecar's, so the sidecar does not stop reading while acks and
    health answers wait here."""
    units = max(1, -(-p.ByteSize() // PUBLISH_UNIT))
    return min(units * PUBLISH_UNIT, PUBLISH_BUDGET)


class _Outbox:
    """What the plugin sends on one session: control messages before the publishes queued,
    each kind in its order. ``get`` blocks without polling until there is something to send."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._control: "collections.deque[pb.PluginMessage]" = collections.deque()
        self._publishes: "collections.deque[pb.PluginMessage]" = collections.deque()
        self._closing = False  # half-close once what was queued before is sent
        self._cancelled = False  # the call is over: send nothing more

    def put(self, msg: pb.PluginMessage, publish: bool = False) -> None:
        with self._cond:
            if self._closing or self._cancelled:
                return
            (self._publishes if publish else self._control).append(msg)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify()

    def get(self) -> Optional[pb.PluginMessage]:
        """The next message to send, or None to end the plugin's half of the call."""
        with self._cond:
            while True:
                if self._cancelled:
                    return None
                if self._control:
                    return self._control.popleft()
                if self._publishes:
                    return self._publishes.popleft()
                if self._closing:
                    return None
                self._cond.wait()


class _Event(NamedTuple):
    """What the control loop hears: ``welcome``, ``ended``, ``sidecar_stop`` (of ``session``),
    ``stop`` (a signal or the stop event; ``value`` says which), ``start_failed`` (``value`` is
    on_start's exception)."""

    kind: str
    session: "Optional[_Session]" = None
    value: object = None


def _duration(name: str, text: str) -> float:
    """Seconds from ``60``, ``2.5``, ``500ms``, ``30s``, ``2m`` or ``1h``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    seconds = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2) or "s"] \
        if m else 0.0
    if seconds <= 0:
        raise ValueError(f"{name}={text!r}: expected a positive duration such as 60, 30s, "
                         "500ms or 2m")
    return seconds


class _Session:
    """One Session call to the sidecar and what travels on it."""

    def __init__(self, number: int, addr: str) -> None:
        self.number = number
        self.channel = grpc.insecure_channel(addr, options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(MAX_BACKOFF * 1000)),
        ])
        # What the plugin sends: control messages first, then publishes; put never blocks.
        self.outbox = _Outbox()
        self.ended = threading.Event()
        self.code = ""
        self.details = ""
        self.welcome: Optional[pb.Welcome] = None
        self.call: Optional[Iterator[pb.SidecarMessage]] = None  # also a grpc.Call

    def requests(self) -> Iterator[pb.PluginMessage]:
        while True:
            msg = self.outbox.get()
            if msg is None:
                return
            yield msg

    def send(self, msg: pb.PluginMessage) -> None:
        """Queues a control message (Hello, ack, nack, health answer) ahead of the publishes."""
        if not self.ended.is_set():
            self.outbox.put(msg)

    def send_publish(self, msg: pb.PluginMessage) -> None:
        """Queues a publish after the publishes queued before it."""
        if not self.ended.is_set():
            self.outbox.put(msg, publish=True)

    def half_close(self) -> None:
        """Ends the plugin's half of the call once what is queued is sent."""
        self.outbox.close()

    def cancel(self) -> None:
        if self.call is not None:
            cast(grpc.Call, self.call).cancel()
        self.outbox.cancel()

    def close(self) -> None:
        self.cancel()
        self.channel.close()



class _Pending:
    __slots__ = ("msg", "weight", "done", "sequence", "error")

    def __init__(self, msg: pb.PluginMessage) -> None:
        self.msg = msg
        self.weight = _publish_weight(msg.publish)
        self.done = threading.Event()
        self.sequence = 0
        self.error: Optional[Tuple[Type[BusError], str, Optional[str]]] = None


class Bus:
    """The plugin's handle on the bus, passed to :meth:`Plugin.on_start` and
    :meth:`Plugin.on_message`.

    Safe to use from any thread, with many publishes in flight at once; keep it for as long as
    :func:`run` runs.
    """

    def __init__(self, addr: str) -> None:
        self._addr = addr
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        # Publishes queued or sent (or to send on the next session), not answered yet.
        self._pending: Dict[int, _Pending] = {}
        # Publishes held back by PUBLISH_BUDGET, in call order.
        self._waiting: Dict[int, _Pending] = {}
        # Publishes sent whose caller gave up (timeout): they hold their weight until answered.
        self._abandoned: Dict[int, int] = {}
        self._weight = 0  # what _pending and _abandoned weigh
        self._session: Optional[_Session] = None
        self._closed = False
        self._welcome: Optional[pb.Welcome] = None

    @property
    def instance_id(self) -> str:
        """The instance's name, as the sidecar's Welcome gave it (``INSTANCE_ID``)."""
        return self._welcome.instance_id if self._welcome else ""

    @property
    def granted(self) -> List[Tuple[str, str]]:
        """The instance's grants from the Welcome, as ``(topic pattern, "publish"|"subscribe")``."""
        if not self._welcome:
            return []
        names = {pb.ACTION_PUBLISH: "publish", pb.ACTION_SUBSCRIBE: "subscribe"}
        return [(g.topic, names.get(g.action, "unspecified")) for g in self._welcome.granted]

    def publish(self, topic: str, data: bytes, headers: Optional[Mapping[str, str]] = None, *,
                idempotency_key: Optional[str] = None, timeout: Optional[float] = None) -> int:
        """Publishes ``data`` to ``topic`` and blocks until the sidecar accepted it.

        Accepted means durable: on the bus, or in the sidecar's outbox. While the connection to
        the sidecar is down, the publish waits and is sent again after the reconnect, with the
        same idempotency key, so the bus stores it once. While the publishes not yet answered
        weigh 16 MiB (``PUBLISH_BUDGET``: its encoded size in started KiB, as the sidecar counts it), it
        waits before it is sent, in call order, until enough of them are answered.

        Args:
            topic: a concrete topic (no wildcards), within the instance's publish grants.
            data: the payload.
            headers: string headers carried with the message.
            idempotency_key: the bus stores a message once per key and topic; a random one
                when ``None``.
            timeout: seconds to wait for the sidecar's answer (the wait for the budget
                included); ``None`` waits as long as the session lasts.

        Returns:
            The message's sequence in the topic's log; 0 while it waits in the sidecar's outbox.

        Raises:
            PermissionDenied: the topic is outside the instance's grants.
            InvalidArgument: the topic has a wildcard or is malformed.
            ResourceExhausted: the sidecar's outbox is full.
            Unavailable: the sidecar is stopping and the bus is unreachable.
            PublishTimeout: no answer within ``timeout``.
            SessionClosed: the session is over (:func:`run` returned or is closing).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"publish data must be bytes, not {type(data).__name__}")
        msg = pb.PluginMessage(publish=pb.PluginPublish(
            topic=topic, data=bytes(data), headers=dict(headers or {}),
            idempotency_key=idempotency_key or uuid.uuid4().hex))
        pending = _Pending(msg)
        with self._cond:
            if self._closed:
                raise SessionClosed(f"publish to {topic!r}: the session with the sidecar at "
                                    f"{self._addr} is over")
            rid = next(self._ids)
            msg.publish.request_id = rid
            if not self._waiting and self._fits(pending.weight):
                self._admit(rid, pending)
            else:
                self._waiting[rid] = pending  # _admit_waiting sends it when its turn comes
        if not pending.done.wait(timeout):
            with self._cond:
                held = self._waiting.pop(rid, None) is not None
                if held:
                    self._admit_waiting()  # it may have held back smaller ones
                else:
                    sent = self._pending.pop(rid, None)
                    if sent is not None:
                        self._abandoned[rid] = sent.weight
                self._cond.notify_all()
            if held:
                raise PublishTimeout(
                    f"publish to {topic!r}: not sent within {timeout:g} s, behind 16 MiB of "
                    f"publishes the sidecar at {self._addr} has not answered yet")
            raise PublishTimeout(f"publish to {topic!r}: no answer from the sidecar at "
                                 f"{self._addr} within {timeout:g} s; publishing again with "
                                 f"idempotency_key={msg.publish.idempotency_key!r} stores it once")
        if pending.error is not None:
            cls, text, code = pending.error
            raise cls(text, code)
        return pending.sequence

    # -- the budget (with _cond held) --------------------------------------------------------

    def _fits(self, weight: int) -> bool:
        return self._weight + weight <= PUBLISH_BUDGET

    def _admit(self, rid: int, pending: _Pending) -> None:
        self._weight += pending.weight
        self._pending[rid] = pending
        if self._session is not None:
            self._session.send_publish(pending.msg)

    def _admit_waiting(self) -> None:
        """Sends the publishes held back, oldest first, while they fit."""
        while self._waiting:
            rid, pending = next(iter(self._waiting.items()))
            if not self._fits(pending.weight):
                return
            del self._waiting[rid]
            self._admit(rid, pending)

    # -- for the runner ----------------------------------------------------------------------

    def _attach(self, session: _Session) -> None:
        """Makes ``session`` the one publishes go to and sends it every publish still pending."""
        with self._cond:
            self._session = session
            self._welcome = session.welcome
            for rid in sorted(self._pending):
                session.send_publish(self._pending[rid].msg)

    def _detach(self) -> None:
        with self._cond:
            self._session = None
            # Nobody waits for these and they are not sent again: the lost session's answers
            # to them will never come.
            self._weight -= sum(self._abandoned.values())
            self._abandoned.clear()
            self._admit_waiting()

    def _resolve(self, result: pb.PublishResult) -> None:
        with self._cond:
            pending = self._pending.pop(result.request_id, None)
            if pending is not None:
                self._weight -= pending.weight
            else:
                self._weight -= self._abandoned.pop(result.request_id, 0)
            self._admit_waiting()
            self._cond.notify_all()
        if pending is None:
            log.debug("a result for request %d that nobody waits for", result.request_id)
            return
        topic = pending.msg.publish.topic
        which = result.WhichOneof("result")
        if which == "accepted":
            pending.sequence = result.accepted.sequence
        elif which == "refused":
            code = result.refused.code
            pending.error = (REFUSALS.get(code, BusError),
                             f"publish to {topic!r} refused: {code}: {result.refused.message}",
                             code)
        else:
            pending.error = (BusError, f"publish to {topic!r}: the sidecar answered without a "
                             "result", None)
        pending.done.set()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _drain(self, session: _Session, deadline: Optional[float]) -> None:
        """Waits for every pending publish's result (while ``session`` lasts, until
        ``deadline``), then refuses new publishes."""
        with self._cond:
            while (self._pending or self._waiting) and not session.ended.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    log.warning("%d publishes still unanswered at the drain timeout",
                                len(self._pending) + len(self._waiting))
                    break
                self._cond.wait(left)
            self._closed = True

    def _close(self, error: Tuple[Type[BusError], str, Optional[str]]) -> None:
        """Refuses new publishes and fails the pending ones with ``error``."""
        with self._cond:
            self._closed = True
            self._session = None
            pending = list(self._pending.values()) + list(self._waiting.values())
            self._pending, self._waiting, self._abandoned = {}, {}, {}
            self._weight = 0
            self._cond.notify_all()
        for p in pending:
            p.error = error
            p.done.set()


def _subscription(s: Union[Subscription, str]) -> pb.Subscription:
    if isinstance(s, str):
        s = Subscription(s)
    return pb.Subscription(
        topic=s.topic, group=s.group or "",
        ack_deadline_ms=0 if s.ack_deadline is None else int(round(s.ack_deadline * 1000)),
        max_deliver=s.max_deliver or 0)


class _Runner:
    def __init__(self, plugin: Plugin, addr: str, connect_timeout: float,
                 stop: Optional[threading.Event], handle_signals: bool) -> None:
        self.plugin = plugin
        self.addr = addr
        self.connect_timeout = connect_timeout
        self.stop_event = stop
        self.handle_signals = handle_signals
        self.bus = Bus(addr)
        self.hello = pb.PluginMessage(hello=pb.Hello(
            protocol_major=PROTOCOL_MAJOR, client=CLIENT,
            subscriptions=[_subscription(s) for s in plugin.subscriptions]))
        self._control: "queue.SimpleQueue[_Event]" = queue.SimpleQueue()
        self._work: "queue.SimpleQueue[object]" = queue.SimpleQueue()
        self._health: "queue.SimpleQueue[object]" = queue.SimpleQueue()
        self._work_lock = threading.Lock()  # held while a callback of the worker runs
        self._started = threading.Event()   # on_start returned
        self._stopping = threading.Event()  # no new delivery starts
        self._finished = threading.Event()
        self._numbers = itertools.count(1)
        self._session: Optional[_Session] = None

    # -- the control loop (the caller's thread) ----------------------------------------------

    def run(self) -> None:
        restore = self._install_signals()
        for target, name in ((self._worker, "work"), (self._answer_health, "health")):
            threading.Thread(target=target, name=f"tether-plugin-{name}", daemon=True).start()
        if self.stop_event is not None:
            threading.Thread(target=self._watch_stop, name="tether-plugin-stop",
                             daemon=True).start()
        try:
            self._main()
        finally:
            self._finished.set()
            restore()
            self._work.put(None)
            self._health.put(None)
            self.bus._close((SessionClosed, "the session with the sidecar at "
                             f"{self.addr} ended before the publish was answered", None))
            if self._session is not None:
                self._session.close()

    def _main(self) -> None:
        session = self._connect(first=True)
        if session is None:
            return
        self._work.put(_START)
        while True:
            ev = self._next_event(None)
            assert ev is not None
            kind = ev.kind
            if kind == "stop":
                self._stop(session, None)
                return
            if kind == "sidecar_stop" and ev.session is session:
                drain_ms = cast(int, ev.value)
                self._stop(session, drain_ms / 1000 if drain_ms else None)
                return
            if kind == "ended" and ev.session is session:
                self.bus._detach()
                if session.code not in TRANSIENT:
                    raise SessionRefused(self.addr, session.code, session.details, ended=True)
                log.warning("the session with the sidecar at %s ended (%s: %s); reconnecting",
                            self.addr, session.code, session.details)
                session.close()
                session = self._connect(first=False)
                if session is None:
                    self._stop(None, None)
                    return
            # anything else is about a session that is over: nothing to do

    def _next_event(self, deadline: Optional[float]) -> Optional[_Event]:
        """The next control event, or None at ``deadline``; raises on_start's exception."""
        try:
            if deadline is None:
                ev = self._control.get()
            else:
                ev = self._control.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if ev.kind == "start_failed":
            raise cast(BaseException, ev.value)
        return ev

    def _connect(self, first: bool) -> Optional[_Session]:
        """A welcomed session, or None when asked to stop before; retries until the deadline."""
        deadline = time.monotonic() + self.connect_timeout
        backoff = FIRST_BACKOFF
        cause = "the sidecar did not answer Hello"
        while True:
            session = self._open()
            while True:
                ev = self._next_event(deadline)
                if ev is None:
                    session.close()
                    raise ConnectTimeout(self.addr, self.connect_timeout, cause)
                if ev.kind == "stop":
                    session.close()
                    return None
                if ev.kind == "welcome" and ev.session is session:
                    self._session = session
                    self.bus._attach(session)
                    return session
                if ev.kind == "ended" and ev.session is session:
                    break
            session.close()
            code, details = session.code, session.details
            # While the sidecar has not noticed that the last connection dropped, it may still
            # count the old session as live.
            if code not in TRANSIENT and (first or code != "ALREADY_EXISTS"):
                raise SessionRefused(self.addr, code, details)
            cause = f"{code}: {details}"
            log.debug("no session with the sidecar at %s yet: %s", self.addr, cause)
            pause_until = min(deadline, time.monotonic() + backoff)
            while time.monotonic() < pause_until:
                ev = self._next_event(pause_until)
                if ev is not None and ev.kind == "stop":
                    return None
            if time.monotonic() >= deadline:
                raise ConnectTimeout(self.addr, self.connect_timeout, cause)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _open(self) -> _Session:
        session = _Session(next(self._numbers), self.addr)
        session.send(self.hello)
        stub = pb_grpc.PluginServiceStub(session.channel)  # type: ignore[no-untyped-call]
        session.call = stub.Session(session.requests(), metadata=METADATA)
        threading.Thread(target=self._read, args=(session,), daemon=True,
                         name=f"tether-plugin-read-{session.number}").start()
        return session

    def _stop(self, session: Optional[_Session], drain: Optional[float]) -> None:
        """Stop, step 6: on_stop, the delivery in flight, the publishes, half-close."""
        self._stopping.set()
        deadline = None if drain is None else time.monotonic() + drain
        try:
            self.plugin.on_stop()
        except Exception:
            log.exception("on_stop raised")
        left = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if self._work_lock.acquire(timeout=left):
            self._work_lock.release()
        else:
            log.warning("on_message still runs at the drain timeout; its delivery is released "
                        "to the bus unacknowledged")
        if session is None or session.ended.is_set():
            return
        self.bus._drain(session, deadline)
        session.half_close()
        if not session.ended.wait(CLOSE_WAIT):
            log.warning("the sidecar at %s did not end the session %g s after the plugin "
                        "closed it", self.addr, CLOSE_WAIT)
        elif session.code != "OK":
            log.warning("the session with the sidecar at %s ended with %s: %s while stopping",
                        self.addr, session.code, session.details)

    # -- the reader (one per session) --------------------------------------------------------

    def _read(self, session: _Session) -> None:
        code, details = "OK", ""
        try:
            for msg in cast(Iterator[pb.SidecarMessage], session.call):
                self._dispatch(session, msg)
        except grpc.RpcError as e:
            code = e.code().name if e.code() is not None else "UNKNOWN"
            details = e.details() or ""
        except Exception as e:  # a bug of ours or a message we cannot read: drop the session
            log.exception("reading from the sidecar failed")
            code, details = "INTERNAL", f"{type(e).__name__}: {e}"
        session.code, session.details = code, details
        session.ended.set()
        session.outbox.cancel()
        self.bus._wake()
        self._control.put(_Event("ended", session))

    def _dispatch(self, session: _Session, msg: pb.SidecarMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "welcome":
            session.welcome = msg.welcome
            self._control.put(_Event("welcome", session))
        elif kind == "health_check":
            self._health.put((session, msg.health_check.id))
        elif kind == "delivery":
            self._work.put((session, msg.delivery))
        elif kind == "publish_result":
            self.bus._resolve(msg.publish_result)
        elif kind == "stop":
            self._control.put(_Event("sidecar_stop", session, msg.stop.drain_timeout_ms))
        else:  # a newer sidecar's addition (the protocol grows additively): not for us
            log.debug("ignoring a sidecar message of kind %s", kind)

    # -- the worker and the health thread ----------------------------------------------------

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            with self._work_lock:
                if item is _START:
                    try:
                        self.plugin.on_start(self.bus)
                    except BaseException as e:
                        self._control.put(_Event("start_failed", value=e))
                        return
                    self._started.set()
                    continue
                session, delivery = cast(Tuple[_Session, pb.Delivery], item)
                if self._stopping.is_set() or session.ended.is_set():
                    continue  # the sidecar releases it, the bus delivers it again
                self._deliver(session, delivery)

    def _deliver(self, session: _Session, d: pb.Delivery) -> None:
        msg = Message(topic=d.topic, data=d.data, headers=dict(d.headers),
                      redelivered=d.redelivered, sequence=d.sequence,
                      subscription=d.subscription, delivery_id=d.delivery_id)
        try:
            self.plugin.on_message(self.bus, msg)
        except Nack as n:
            session.send(pb.PluginMessage(nack=pb.PluginNack(
                delivery_id=d.delivery_id, delay_ms=int(round(n.delay * 1000)),
                reason=n.reason)))
        except Exception as e:
            log.exception("on_message raised on %s (sequence %d); nacking", d.topic, d.sequence)
            session.send(pb.PluginMessage(nack=pb.PluginNack(
                delivery_id=d.delivery_id, reason=f"{type(e).__name__}: {e}")))
        else:
            session.send(pb.PluginMessage(ack=pb.PluginAck(delivery_id=d.delivery_id)))

    def _answer_health(self) -> None:
        while True:
            item = self._health.get()
            if item is None:
                return
            while not self._started.wait(0.2):
                if self._finished.is_set():
                    return
            session, check_id = cast(Tuple[_Session, int], item)
            if session.ended.is_set():
                continue
            try:
                healthy, detail = bool(self.plugin.on_health_check()), ""
                if not healthy:
                    detail = "on_health_check returned False"
            except Exception as e:
                healthy, detail = False, f"on_health_check raised {type(e).__name__}: {e}"
            session.send(pb.PluginMessage(health=pb.HealthAnswer(
                id=check_id, healthy=healthy, detail=detail)))

    # -- stop triggers -----------------------------------------------------------------------

    def _watch_stop(self) -> None:
        assert self.stop_event is not None
        while not self._finished.is_set():
            if self.stop_event.wait(0.1):
                self._control.put(_Event("stop", value="the stop event"))
                return

    def _install_signals(self) -> Callable[[], None]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None
        signals = (signal.SIGTERM, signal.SIGINT)
        before = {s: signal.getsignal(s) for s in signals}

        def restore() -> None:
            for s, handler in before.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)

        def on_signal(signum: int, _frame: object) -> None:
            restore()  # a second signal acts as it did before run
            self._control.put(_Event("stop", value=signal.Signals(signum).name))

        for s in signals:
            signal.signal(s, on_signal)
        return restore


def run(plugin: Plugin, *, addr: Optional[str] = None, stop: Optional[threading.Event] = None,
        connect_timeout: Optional[float] = None, handle_signals: bool = True) -> None:
    """Runs ``plugin`` against its sidecar until it is stopped.

    Connects to the sidecar (retrying with backoff while it is not up yet), says Hello with the
    plugin's subscriptions, calls :meth:`Plugin.on_start`, then delivers messages and answers
    health checks. If the connection drops, it reconnects (backoff capped at 2 s), says Hello
    again and resends the publishes still waiting for an answer with their idempotency keys.

    It returns (so a script exits 0) once stopped: by the sidecar's Stop, by SIGTERM or SIGINT
    to the process (when called from the main thread), or by ``stop``. Stopping calls
    :meth:`Plugin.on_stop`, lets the delivery in flight finish and acks or nacks it, waits for
    the publishes' results and closes the session.

    Args:
        plugin: the plugin.
        addr: the sidecar's address, ``host:port``; default ``$SIDECAR_ADDR`` or
            ``127.0.0.1:9191``.
        stop: setting this event stops the plugin, as the sidecar's Stop does.
        connect_timeout: seconds to wait for a session (first and after a dropped connection);
            default ``$SIDECAR_CONNECT_TIMEOUT`` (``60``, ``30s``, ``500ms``, ``2m``) or 60.
        handle_signals: turn SIGTERM and SIGINT into a stop (only from the main thread).

    Raises:
        SessionRefused: the sidecar refused the session (another protocol major, a subscription
            outside the grants, a bad pattern, another plugin session live) or ended it with an
            error; the message names the address, the code and the sidecar's reason.
        ConnectTimeout: no session within the connect timeout; names the address and the last
            error.
        Exception: whatever :meth:`Plugin.on_start` raised.
    """
    if addr is None:
        addr = os.environ.get("SIDECAR_ADDR") or DEFAULT_ADDR
    if connect_timeout is None:
        text = os.environ.get("SIDECAR_CONNECT_TIMEOUT")
        connect_timeout = _duration("SIDECAR_CONNECT_TIMEOUT", text) if text else \
            DEFAULT_CONNECT_TIMEOUT
    elif connect_timeout <= 0:
        raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout}")
    _Runner(plugin, addr, connect_timeout, stop, handle_signals).run()
