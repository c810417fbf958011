"""The plugin session's contract (bus.proto, PluginService, "the session, step by step"), tested
against a fake sidecar over real sockets. Waits are bounded by WAIT only to fail instead of hang.
"""

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import Probe, Running, free_port, wait
from fake_sidecar import WAIT, FakeSidecar

import tether_plugin as tp
from tether_plugin.proto import bus_pb2 as pb


def start(sidecar, plugin, **kw):
    """Runs the plugin, answers its Hello with a Welcome and waits for on_start to return."""
    running = Running(plugin, sidecar.addr, **kw)
    session = sidecar.next_session()
    session.recv_kind("hello")
    session.welcome()
    wait(plugin.started, "on_start")
    return running, session


def finish(running, session):
    """Stops the plugin with its stop event; the plugin half-closes and run returns."""
    running.stop.set()
    session.expect_half_close()
    session.end()
    assert running.join() is None
    assert running.returned


# -- step 1 and 2: connect, Hello, Welcome ----------------------------------------------------


def test_hello_carries_the_protocol_major_the_subscriptions_and_the_client(sidecar):
    class Plugin(Probe):
        subscriptions = [
            tp.Subscription("orders.*", group=None),
            tp.Subscription("audit.>", group="auditors", ack_deadline=2.5, max_deliver=3),
        ]

    plugin = Plugin()
    running = Running(plugin, sidecar.addr)
    session = sidecar.next_session()

    assert session.metadata["tether-bus-protocol"] == "1"
    hello = session.recv_kind("hello")
    assert hello == pb.Hello(
        protocol_major=1,
        client=f"tether-plugin-python {tp.__version__}",
        subscriptions=[
            pb.Subscription(topic="orders.*", group=""),
            pb.Subscription(topic="audit.>", group="auditors", ack_deadline_ms=2500,
                            max_deliver=3),
        ],
    )
    session.welcome(instance_id="signals-1")
    wait(plugin.started, "on_start")
    assert plugin.bus.instance_id == "signals-1"
    assert plugin.bus.granted == [("signals.>", "publish"), ("orders.*", "subscribe")]
    finish(running, session)
    assert plugin.calls == ["start", "stop"]


def test_the_address_comes_from_SIDECAR_ADDR(sidecar, monkeypatch):
    monkeypatch.setenv("SIDECAR_ADDR", sidecar.addr)
    plugin = Probe()
    running = Running(plugin)  # no addr
    session = sidecar.next_session()
    session.recv_kind("hello")
    session.welcome()
    wait(plugin.started, "on_start")
    finish(running, session)


def test_waits_for_a_sidecar_that_comes_up_late():
    port = free_port()
    plugin = Probe()
    running = Running(plugin, f"127.0.0.1:{port}", connect_timeout=WAIT)
    time.sleep(0.5)  # let the plugin find nothing there, at least once
    late = FakeSidecar(port)
    try:
        session = late.next_session()
        session.recv_kind("hello")
        session.welcome()
        wait(plugin.started, "on_start")
        finish(running, session)
    finally:
        late.close()


@pytest.mark.parametrize("code, details", [
    (grpc.StatusCode.PERMISSION_DENIED,
     "subscription orders.* (subscribe) is outside the grants of signals-1"),
    (grpc.StatusCode.FAILED_PRECONDITION,
     "the plugin speaks tether-bus-protocol 2, this sidecar 1"),
    (grpc.StatusCode.ALREADY_EXISTS, "another plugin session is live"),
])
def test_a_refused_session_raises_naming_the_address_and_the_cause(sidecar, code, details):
    plugin = Probe()
    running = Running(plugin, sidecar.addr)
    session = sidecar.next_session()
    session.recv_kind("hello")
    session.end(code, details)

    error = running.join()
    assert isinstance(error, tp.SessionRefused)
    assert isinstance(error, tp.BusError)
    assert str(error) == f"the sidecar at {sidecar.addr} refused the session: {code.name}: {details}"
    assert error.code == code.name
    assert error.addr == sidecar.addr
    assert plugin.calls == []


def test_no_sidecar_within_the_connect_timeout_raises_naming_the_address(monkeypatch):
    addr = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("SIDECAR_CONNECT_TIMEOUT", "300ms")
    plugin = Probe()
    error = Running(plugin, addr).join()

    assert isinstance(error, tp.ConnectTimeout)
    assert isinstance(error, tp.BusError)
    assert str(error).startswith(f"no session with the sidecar at {addr} within 0.3 s "
                                 "(SIDECAR_CONNECT_TIMEOUT): UNAVAILABLE: ")
    assert error.addr == addr
    assert plugin.calls == []


def test_a_malformed_connect_timeout_is_refused(monkeypatch):
    monkeypatch.setenv("SIDECAR_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"SIDECAR_CONNECT_TIMEOUT='soon': expected a positive "
                                         r"duration such as 60, 30s, 500ms or 2m"):
        tp.run(Probe(), addr="127.0.0.1:1")


def test_an_exception_from_on_start_ends_run_with_it(sidecar):
    def on_start(bus):
        raise RuntimeError("no config")

    running = Running(Probe(on_start=on_start), sidecar.addr)
    session = sidecar.next_session()
    session.recv_kind("hello")
    session.welcome()
    error = running.join()
    assert isinstance(error, RuntimeError)
    assert str(error) == "no config"


# -- step 3: health ----------------------------------------------------------------------------


def test_health_checks_are_answered_only_after_on_start_returned(sidecar):
    gate = threading.Event()
    plugin = Probe(on_start=lambda bus: gate.wait(WAIT))
    running = Running(plugin, sidecar.addr)
    session = sidecar.next_session()
    session.recv_kind("hello")
    session.welcome()
    session.health_check(1)
    time.sleep(0.3)  # give a wrong SDK the time to answer early: calls would then say so
    gate.set()

    assert session.recv_kind("health") == pb.HealthAnswer(id=1, healthy=True)
    assert plugin.calls == ["start", "health"]
    finish(running, session)


def test_health_checks_are_answered_while_on_message_runs(sidecar):
    inside, gate = threading.Event(), threading.Event()

    def on_message(bus, msg):
        inside.set()
        assert gate.wait(WAIT)

    plugin = Probe(on_message=on_message)
    running, session = start(sidecar, plugin)
    session.deliver("d1")
    wait(inside, "on_message")
    session.health_check(7)

    assert session.recv_kind("health") == pb.HealthAnswer(id=7, healthy=True)
    assert not gate.is_set()  # on_message is still running
    gate.set()
    assert session.recv_kind("ack") == pb.PluginAck(delivery_id="d1")
    finish(running, session)


def test_an_unhealthy_plugin_says_so(sidecar):
    answers = iter([False])

    def health():
        try:
            return next(answers)
        except StopIteration:
            raise RuntimeError("database gone") from None

    running, session = start(sidecar, Probe(health=health))
    session.health_check(1)
    assert session.recv_kind("health") == pb.HealthAnswer(
        id=1, healthy=False, detail="on_health_check returned False")
    session.health_check(2)
    assert session.recv_kind("health") == pb.HealthAnswer(
        id=2, healthy=False, detail="on_health_check raised RuntimeError: database gone")
    finish(running, session)


# -- step 4: deliveries ------------------------------------------------------------------------


def test_returning_acks_and_raising_nacks(sidecar):
    def on_message(bus, msg):
        if msg.delivery_id == "d2":
            raise ValueError("bad order")
        if msg.delivery_id == "d3":
            raise tp.Nack("not yet", delay=1.5)

    plugin = Probe(on_message=on_message)
    running, session = start(sidecar, plugin)
    session.deliver("d1", topic="orders.created", data=b'{"id": 1}',
                    headers={"trace": "abc"}, sequence=11, redelivered=2)
    session.deliver("d2", sequence=12)
    session.deliver("d3", sequence=13)

    assert session.recv_kind("ack") == pb.PluginAck(delivery_id="d1")
    assert session.recv_kind("nack") == pb.PluginNack(
        delivery_id="d2", delay_ms=0, reason="ValueError: bad order")
    assert session.recv_kind("nack") == pb.PluginNack(
        delivery_id="d3", delay_ms=1500, reason="not yet")
    assert plugin.messages[0] == tp.Message(
        topic="orders.created", data=b'{"id": 1}', headers={"trace": "abc"}, redelivered=2,
        sequence=11, subscription="orders.*", delivery_id="d1")
    finish(running, session)


def test_deliveries_are_handled_in_order_one_at_a_time(sidecar):
    log = []

    def on_message(bus, msg):
        log.append(f"begin {msg.delivery_id}")
        time.sleep(0.01)
        log.append(f"end {msg.delivery_id}")

    running, session = start(sidecar, Probe(on_message=on_message))
    ids = [f"d{i}" for i in range(1, 6)]
    for i, delivery_id in enumerate(ids, 1):
        session.deliver(delivery_id, sequence=i)

    assert [session.recv_kind("ack").delivery_id for _ in ids] == ids
    assert log == [f"{step} {d}" for d in ids for step in ("begin", "end")]
    finish(running, session)


# -- step 5: publishes -------------------------------------------------------------------------


def test_publish_blocks_until_accepted_and_carries_an_idempotency_key(sidecar):
    results = []

    def on_start(bus):
        results.append(bus.publish("signals.created", b"payload", {"k": "v"}))
        results.append(bus.publish("signals.created", b"again", idempotency_key="order-1"))

    plugin = Probe(on_start=on_start)
    running = Running(plugin, sidecar.addr)
    session = sidecar.next_session()
    session.recv_kind("hello")
    session.welcome()

    first = session.recv_kind("publish")
    assert (first.topic, first.data, dict(first.headers)) == ("signals.created", b"payload",
                                                              {"k": "v"})
    assert re.fullmatch(r"[0-9a-f]{32}", first.idempotency_key)
    assert results == []  # still waiting for the answer
    session.accept(first.request_id, 42)
    second = session.recv_kind("publish")
    assert second.idempotency_key == "order-1"
    assert second.request_id != first.request_id
    session.accept(second.request_id, 0)  # in the sidecar's outbox

    wait(plugin.started, "on_start")
    assert results == [42, 0]
    finish(running, session)


@pytest.mark.parametrize("code, error", [
    ("PERMISSION_DENIED", tp.PermissionDenied),
    ("INVALID_ARGUMENT", tp.InvalidArgument),
    ("RESOURCE_EXHAUSTED", tp.ResourceExhausted),
    ("UNAVAILABLE", tp.Unavailable),
    ("DATA_LOSS", tp.BusError),
])
def test_a_refused_publish_raises_its_own_error_naming_the_topic(sidecar, code, error):
    plugin = Probe()
    running, session = start(sidecar, plugin)
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(plugin.bus.publish, "secrets.keys", b"x")
        request = session.recv_kind("publish")
        session.refuse(request.request_id, code, "publish on secrets.keys is not granted")
        with pytest.raises(tp.BusError) as raised:
            result.result(WAIT)

    assert type(raised.value) is error
    assert raised.value.code == code
    assert str(raised.value) == (f"publish to 'secrets.keys' refused: {code}: "
                                 "publish on secrets.keys is not granted")
    finish(running, session)


def test_publishes_from_several_threads_are_in_flight_at_once(sidecar):
    plugin = Probe()
    running, session = start(sidecar, plugin)
    topics = [f"signals.t{i}" for i in range(4)]
    with ThreadPoolExecutor(len(topics)) as pool:
        results = {t: pool.submit(plugin.bus.publish, t, t.encode()) for t in topics}
        requests = [session.recv_kind("publish") for _ in topics]  # all sent, none answered
        assert sorted(r.topic for r in requests) == topics
        assert len({r.request_id for r in requests}) == len(topics)
        assert len({r.idempotency_key for r in requests}) == len(topics)
        for r in reversed(requests):
            session.accept(r.request_id, 100 + topics.index(r.topic))
        assert {t: f.result(WAIT) for t, f in results.items()} == {
            t: 100 + i for i, t in enumerate(topics)}
    finish(running, session)


def test_publish_after_run_returned_raises_session_closed(sidecar):
    plugin = Probe()
    running, session = start(sidecar, plugin)
    finish(running, session)
    with pytest.raises(tp.SessionClosed, match=f"the session with the sidecar at "
                                               f"{sidecar.addr} is over"):
        plugin.bus.publish("signals.late", b"")


# -- what goes first, and how much waits -------------------------------------------------------


def until(condition, what):
    """Waits (bounded by WAIT) until ``condition()`` holds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT} s"
        time.sleep(0.01)


class Call:
    """``fn(*args)`` on a daemon thread: a publish that never returns cannot hang the run."""

    def __init__(self, fn, *args, **kw):
        self.done = threading.Event()
        self.value = None
        self.error = None

        def target():
            try:
                self.value = fn(*args, **kw)
            except BaseException as e:  # handed to the test by result()
                self.error = e
            finally:
                self.done.set()

        threading.Thread(target=target, daemon=True).start()

    def result(self):
        wait(self.done, "the call")
        if self.error is not None:
            raise self.error
        return self.value


def recv_all(session, n):
    return [session.recv() for _ in range(n)]


def kinds(messages):
    return [m.WhichOneof("kind") for m in messages]


def test_acks_and_health_answers_go_before_the_publishes_queued_before_them(sidecar):
    # 60 publishes of 256 KiB (15 MiB: within the SDK's budget, far more than the transport
    # buffers while the fake reads nothing), all queued before d1's ack.
    n, size = 60, 256 * 1024
    results = []
    queued = threading.Event()

    def on_message(bus, msg):
        if msg.delivery_id == "d1":
            results.extend(Call(bus.publish, f"signals.flood.{i}", b"x" * size)
                           for i in range(n))
            until(lambda: len(bus._pending) == n, "the publishes queued")
            queued.set()

    plugin = Probe(on_message=on_message)
    running, session = start(sidecar, plugin)
    session.reading.clear()
    session.deliver("d1")
    wait(queued, "the publishes queued")
    session.deliver("d2")
    session.health_check(1)
    session.health_check(2)
    # Reading nothing yet, wait until d1's ack and the first health answer are queued, after
    # the publishes: d2 starts after d1's ack was queued, and health checks are answered one at
    # a time.
    until(lambda: "message d2" in plugin.calls and plugin.calls.count("health") == 2,
          "d2 and two health checks")
    session.reading.set()

    messages = recv_all(session, n + 4)
    order = kinds(messages)
    last_publish = len(order) - 1 - order[::-1].index("publish")
    acks = [i for i, m in enumerate(messages) if m.WhichOneof("kind") == "ack"]
    answers = [i for i, m in enumerate(messages) if m.WhichOneof("kind") == "health"]
    assert [messages[i].ack.delivery_id for i in acks] == ["d1", "d2"]
    assert [messages[i].health.id for i in answers] == [1, 2]
    assert acks[0] < last_publish, f"d1's ack waited behind every publish: {order}"
    assert answers[0] < last_publish, f"the health answer waited behind every publish: {order}"
    publishes = [m.publish for m in messages if m.WhichOneof("kind") == "publish"]
    ids = [p.request_id for p in publishes]
    assert ids == sorted(ids), "publishes keep the order of the calls"
    for p in publishes:
        session.accept(p.request_id, p.request_id)
    assert sorted(f.result() for f in results) == ids
    finish(running, session)


# Just under 1 MiB: with its topic a publish weighs at most 1 MiB, so 16 fit the 16 MiB budget.
NEAR_MIB = 1024 * 1024 - 256


def flood(results, n):
    def on_message(bus, msg):
        if msg.delivery_id == "d1":
            results.extend(Call(bus.publish, f"signals.flood.{i}", b"x" * NEAR_MIB)
                           for i in range(n))
    return on_message


def test_publishes_past_16_mib_unanswered_wait_for_the_sidecars_answers(sidecar):
    results = []
    plugin = Probe(on_message=flood(results, 40))
    running, session = start(sidecar, plugin)
    session.deliver("d1")
    first = recv_all(session, 17)  # 16 publishes and d1's ack, which may pass them
    assert sorted(kinds(first)) == ["ack"] + ["publish"] * 16
    # Nothing else was sent: the next message answers a health check sent now.
    session.health_check(1)
    assert session.recv_kind("health").id == 1
    # A publish that waits for the budget past its timeout was never sent.
    with pytest.raises(tp.PublishTimeout, match="not sent within 0.2 s, behind 16 MiB"):
        plugin.bus.publish("signals.late", b"", timeout=0.2)

    # One answer lets one more publish go, and only one.
    publishes = [m.publish for m in first if m.WhichOneof("kind") == "publish"]
    session.accept(publishes[0].request_id, 1)
    publishes.append(session.recv_kind("publish"))
    session.health_check(2)
    assert session.recv_kind("health").id == 2

    # Answering the rest lets the others go.
    for p in publishes[1:]:
        session.accept(p.request_id, p.request_id)
    while len(publishes) < 40:
        p = session.recv_kind("publish")
        publishes.append(p)
        session.accept(p.request_id, p.request_id)
    assert sorted(p.topic for p in publishes) == sorted(f"signals.flood.{i}"
                                                        for i in range(40))
    assert all(f.result() >= 1 for f in results)
    finish(running, session)


def test_publishes_held_back_fail_when_the_session_ends_while_stopping(sidecar):
    results = []
    plugin = Probe(on_message=flood(results, 40))
    running, session = start(sidecar, plugin)
    session.deliver("d1")
    assert sorted(kinds(recv_all(session, 17))) == ["ack"] + ["publish"] * 16
    until(lambda: len(results) == 40, "the publish calls")
    session.stop()  # the drain waits for every result
    wait(plugin.stopped, "on_stop")
    session.end(grpc.StatusCode.UNAVAILABLE, "the sidecar crashed")
    for f in results:
        with pytest.raises(tp.SessionClosed):
            f.result()
    assert running.join() is None


# -- step 6: stop ------------------------------------------------------------------------------


def test_stop_calls_on_stop_finishes_the_delivery_in_flight_then_half_closes(sidecar):
    inside, gate = threading.Event(), threading.Event()
    published = []

    def on_message(bus, msg):
        inside.set()
        assert gate.wait(WAIT)
        published.append(bus.publish("signals.created", msg.data))

    plugin = Probe(on_message=on_message)
    running, session = start(sidecar, plugin)
    session.deliver("d1", sequence=1)
    session.deliver("d2", sequence=2)  # queued behind d1: not started once stopping
    wait(inside, "on_message")
    session.stop(drain_timeout_ms=int(WAIT * 1000))
    wait(plugin.stopped, "on_stop")
    assert not gate.is_set()  # on_stop came while on_message ran

    gate.set()
    request = session.recv_kind("publish")  # the delivery in flight still publishes
    session.accept(request.request_id, 5)
    assert session.recv_kind("ack") == pb.PluginAck(delivery_id="d1")
    session.expect_half_close()
    session.end()

    assert running.join() is None
    assert running.returned
    assert published == [5]
    assert plugin.calls == ["start", "message d1", "stop"]


def test_stop_waits_for_the_results_of_publishes_in_flight(sidecar):
    plugin = Probe()
    running, session = start(sidecar, plugin)
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(plugin.bus.publish, "signals.created", b"x")
        request = session.recv_kind("publish")
        running.stop.set()
        wait(plugin.stopped, "on_stop")
        time.sleep(0.3)  # give a wrong SDK the time to half-close before the answer
        assert session.incoming.empty()
        session.accept(request.request_id, 8)
        assert result.result(WAIT) == 8
    session.expect_half_close()
    session.end()
    assert running.join() is None


# -- step 7: reconnect -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["call ended", "sidecar restarted"])
def test_a_dropped_connection_reconnects_and_resends_pending_publishes(sidecar, how):
    plugin = Probe()
    running, first = start(sidecar, plugin)
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(plugin.bus.publish, "signals.created", b"x", {"h": "1"})
        sent = first.recv_kind("publish")

        if how == "call ended":
            first.end(grpc.StatusCode.UNAVAILABLE, "the sidecar lost its connection")
            again = sidecar
        else:
            sidecar.close()
            again = FakeSidecar(sidecar.port)
        try:
            second = again.next_session()
            assert second.recv_kind("hello").subscriptions == [pb.Subscription(topic="orders.*")]
            second.welcome()
            resent = second.recv_kind("publish")
            assert resent == sent  # same request, same idempotency key
            second.accept(resent.request_id, 9)
            assert result.result(WAIT) == 9

            second.health_check(1)  # answered without a second on_start
            assert second.recv_kind("health") == pb.HealthAnswer(id=1, healthy=True)
            assert plugin.calls.count("start") == 1
            finish(running, second)
        finally:
            if again is not sidecar:
                again.close()


def test_a_stop_while_reconnecting_still_calls_on_stop(sidecar):
    plugin = Probe()
    running, session = start(sidecar, plugin, connect_timeout=WAIT)
    sidecar.close()  # nobody to reconnect to
    running.stop.set()
    assert running.join() is None
    assert plugin.calls == ["start", "stop"]

