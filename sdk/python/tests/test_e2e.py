"""The SDK against the real thing: `tether bus serve` and two `tether sidecar` processes on
loopback, with the example policy (examples/bus-policy.yaml), and Python plugins on both sides.

The tether binary is `$TETHER_BIN`, else target/debug/tether in the repository (scripts/test
builds it first and sets TETHER_BIN). Without one these tests are skipped with the reason, except
under CI=true, where that is a failure. Waits are bounded by HANG only to fail instead of hang;
nothing depends on how fast anything is.
"""

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from conftest import Running, wait

import tether_plugin as tp

REPO = Path(__file__).resolve().parents[3]
POLICY = REPO / "examples" / "bus-policy.yaml"
HANG = 60.0

# The grants each side asks for; the example policy gives them to these pools.
OMS = ("oms-1", "OMSPool", [("orders.>", "publish"), ("signals.>", "subscribe")])
SIGNALS = ("signals-1", "SignalPool", [("orders.*", "subscribe"), ("signals.>", "publish")])


@pytest.fixture(scope="module")
def tether() -> str:
    path = Path(os.environ.get("TETHER_BIN") or REPO / "target" / "debug" / "tether")
    if not os.access(path, os.X_OK):
        reason = (f"no tether binary at {path} "
                  "(build it: cargo build -p tether-cli, or set TETHER_BIN)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"required under CI=true: {reason}")
        print(f"skipping: {reason}")
        pytest.skip(reason)
    return str(path)


class Proc:
    """A tether process whose stderr is read line by line on a thread of its own."""

    def __init__(self, argv: List[str], env: Dict[str, str]) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(argv, env=dict(env, NO_COLOR="1"),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
        self.seen: List[str] = []
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _next(self, deadline: float) -> Optional[str]:
        if self._ended:
            return None
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if line is None:
            self._ended = True
        else:
            self.seen.append(line)
        return line

    def wait_for(self, needle: str) -> str:
        """The first line that contains ``needle``."""
        for line in self.seen:
            if needle in line:
                return line
        deadline = time.monotonic() + HANG
        while True:
            line = self._next(deadline)
            if line is None:
                raise AssertionError(f"{self.argv[1:3]} said no line with {needle!r}:\n"
                                     + "\n".join(self.seen))
            if needle in line:
                return line

    def addr_after(self, prefix: str) -> str:
        """The address after ``prefix`` in the first line that has it."""
        line = self.wait_for(prefix)
        return re.split(r"[ ,]", line.split(prefix, 1)[1])[0].removeprefix("http://")

    def stop(self) -> Tuple[int, str]:
        """SIGTERM; the exit code and everything it said."""
        self.popen.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> Tuple[int, str]:
        code = self.popen.wait(HANG)
        deadline = time.monotonic() + HANG
        while self._next(deadline) is not None:
            pass
        return code, "\n".join(self.seen)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def procs():
    """Starts tether processes and kills whatever is left at the end."""
    started: List[Proc] = []

    def start(argv: List[str], env: Dict[str, str]) -> Proc:
        p = Proc(argv, env)
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        p.kill()


@pytest.fixture
def bus(tether, procs, tmp_path) -> str:
    """A Bus API with the example policy; its address."""
    p = procs([tether, "bus", "serve", "--listen", "127.0.0.1:0", "--data", str(tmp_path / "bus"),
               "--policy", str(POLICY)], dict(os.environ))
    return p.addr_after("tether bus: listening on ")


@pytest.fixture
def sidecar(tether, procs, tmp_path, bus):
    """Starts a sidecar for (instance, pool, grants); answers it with the address plugins dial."""

    def start(who) -> Tuple[Proc, str]:
        instance, pool, grants = who
        config = tmp_path / f"{instance}.yaml"
        config.write_text(f"data_dir: {instance}-data\ndrain_timeout: 30s\n")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "INSTANCE_ID": instance,
            "POOL_TYPE": pool,
            "REQUESTED_GRANTS": json.dumps([{"topic": t, "action": a} for t, a in grants]),
            "SIDECAR_BUS_API_URL": bus,
            "SIDECAR_ADDR": "127.0.0.1:0",
            "SIDECAR_HEALTH_ADDR": "127.0.0.1:0",
            "SIDECAR_CONFIG": str(config),
        }
        p = procs([tether, "sidecar"], env)
        return p, p.addr_after("plugins connect to ")

    return start


def drained(p: Proc) -> str:
    """SIGTERM to a sidecar: it drains, deregisters and exits 0; answers what it said."""
    code, said = p.stop()
    assert code == 0, said
    assert "tether sidecar: drained and deregistered" in said, said
    return said


class Oms(tp.Plugin):
    """Publishes when asked; records the signals it is delivered."""

    subscriptions = [tp.Subscription("signals.>")]

    def __init__(self) -> None:
        self.bus: Optional[tp.Bus] = None
        self.started = threading.Event()
        self.signals: "queue.Queue[tp.Message]" = queue.Queue()

    def on_start(self, bus: tp.Bus) -> None:
        self.bus = bus
        self.started.set()

    def on_message(self, bus: tp.Bus, msg: tp.Message) -> None:
        self.signals.put(msg)

    def next_signal(self) -> tp.Message:
        try:
            return self.signals.get(timeout=HANG)
        except queue.Empty:
            raise AssertionError(f"no signal within {HANG} s") from None


class Signals(tp.Plugin):
    """orders.<kind> in, signals.<kind> out; with ``hold``, each on_message waits for it first."""

    subscriptions = [tp.Subscription("orders.*", group="signals")]

    def __init__(self, hold: Optional[threading.Event] = None) -> None:
        self.hold = hold
        self.calls: List[str] = []
        self.started = threading.Event()
        self.in_flight = threading.Event()
        self.stopped = threading.Event()

    def on_start(self, bus: tp.Bus) -> None:
        self.started.set()

    def on_message(self, bus: tp.Bus, msg: tp.Message) -> None:
        self.calls.append(f"message {msg.topic}")
        self.in_flight.set()
        if self.hold is not None:
            assert self.hold.wait(HANG), "the test never let on_message go on"
        kind = msg.topic.split(".", 1)[1]
        bus.publish(f"signals.{kind}", msg.data, headers={"source-topic": msg.topic})
        self.calls.append(f"message {msg.topic} done")

    def on_stop(self) -> None:
        self.calls.append("stop")
        self.stopped.set()


def test_a_plugin_publishes_and_receives_through_two_sidecars(sidecar):
    oms_sidecar, oms_addr = sidecar(OMS)
    signals_sidecar, signals_addr = sidecar(SIGNALS)
    oms, signals = Oms(), Signals()
    oms_run = Running(oms, oms_addr)
    signals_run = Running(signals, signals_addr)
    wait(oms.started, "the oms plugin's on_start")
    wait(signals.started, "the signals plugin's on_start")
    assert oms.bus is not None
    assert oms.bus.instance_id == "oms-1"
    assert sorted(oms.bus.granted) == [("orders.>", "publish"), ("signals.>", "subscribe")]

    # Durable on the bus: the answer is the topic's sequence.
    assert oms.bus.publish("orders.created", b'{"order": 1}') == 1
    assert oms.bus.publish("orders.paid", b'{"order": 1}', headers={"x": "y"}) == 1
    got = sorted((oms.next_signal(), oms.next_signal()), key=lambda m: m.topic)
    assert [(m.topic, m.data, m.headers["source-topic"], m.sequence, m.redelivered)
            for m in got] == [
        ("signals.created", b'{"order": 1}', "orders.created", 1, 0),
        ("signals.paid", b'{"order": 1}', "orders.paid", 1, 0),
    ]

    for running in (oms_run, signals_run):
        running.stop.set()
        assert running.join() is None
        assert running.returned
    assert "the plugin closed its session 1" in drained(oms_sidecar)
    assert "the plugin closed its session 1" in drained(signals_sidecar)


def test_a_publish_outside_the_grants_is_permission_denied(sidecar):
    oms_sidecar, oms_addr = sidecar(OMS)
    oms = Oms()
    running = Running(oms, oms_addr)
    wait(oms.started, "on_start")
    assert oms.bus is not None
    with pytest.raises(tp.PermissionDenied) as denied:
        oms.bus.publish("signals.created", b"{}")
    assert denied.value.code == "PERMISSION_DENIED"
    assert "signals.created" in str(denied.value) and "publish" in str(denied.value), denied.value
    # The session goes on.
    assert oms.bus.publish("orders.created", b"{}") == 1
    running.stop.set()
    assert running.join() is None
    drained(oms_sidecar)


def test_sigterm_to_the_sidecar_stops_the_plugin_after_its_message_in_flight(sidecar):
    oms_sidecar, oms_addr = sidecar(OMS)
    signals_sidecar, signals_addr = sidecar(SIGNALS)
    hold = threading.Event()
    oms, signals = Oms(), Signals(hold)
    oms_run = Running(oms, oms_addr)
    signals_run = Running(signals, signals_addr)
    wait(oms.started, "the oms plugin's on_start")
    assert oms.bus is not None
    oms.bus.publish("orders.created", b'{"order": 7}')
    wait(signals.in_flight, "on_message")

    # SIGTERM to the signals plugin's sidecar while on_message runs: Stop, then on_stop ...
    signals_sidecar.popen.send_signal(signal.SIGTERM)
    wait(signals.stopped, "on_stop after the sidecar's SIGTERM")
    assert signals.calls == ["message orders.created", "stop"]
    assert not signals_run.thread.join(0.2) and signals_run.thread.is_alive(), \
        "tp.run returned with on_message still running"
    # ... the message in flight finishes (its publish still goes through), is acked, run returns.
    hold.set()
    assert signals_run.join() is None
    assert signals_run.returned
    assert signals.calls == ["message orders.created", "stop", "message orders.created done"]
    code, said = signals_sidecar.wait()
    assert code == 0, said
    assert "tether sidecar: drained and deregistered" in said, said
    assert "released" not in said, f"the in-flight delivery was not acked:\n{said}"

    signal_ = oms.next_signal()
    assert (signal_.topic, signal_.data) == ("signals.created", b'{"order": 7}')
    oms_run.stop.set()
    assert oms_run.join() is None
    drained(oms_sidecar)
