"""The README's quick-start commands, read from README.md and run exactly as written (from the
repository's root, by bash), so that the first command a new user types cannot break unseen.

Run after `cargo build` (scripts/test runs it after the Rust tests):  python3 -m pytest tests/readme
The engine command needs the Docker Engine: without one it is skipped with the reason, except
under CI=true, where it fails.
"""

import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def quick_start() -> list[str]:
    """The ```sh blocks of the README's `## Quick start` section, in order."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", section, re.S)]


def command(containing: str) -> str:
    found = [c for c in quick_start() if containing in c]
    assert len(found) == 1, f"the README's quick start has {len(found)} commands with {containing!r}"
    return found[0]


def bash(cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True, **kw)


def engine_reachable() -> bool:
    ok = subprocess.run(["docker", "version"], capture_output=True).returncode == 0
    if not ok and os.environ.get("CI") == "true":
        pytest.fail("required under CI=true: no Docker Engine reachable")
    return ok


def test_the_quick_start_has_its_four_commands():
    cmds = quick_start()
    assert len(cmds) == 4, cmds
    assert all(c.count("\n") == 0 for c in cmds), "each quick-start command is one line"


def test_the_first_command_runs_a_workload_beside_its_sidecars():
    if not engine_reachable():
        pytest.skip("no Docker Engine reachable")
    cmd = command("examples/web-sidecar/build-image")
    project = ["-f", "examples/web-sidecar/tether.yaml"]
    try:
        for _ in range(2):  # the second run reuses `web` and makes `echo` afresh
            out = bash(cmd, timeout=900)
            assert out.returncode == 0, out.stderr
            assert out.stdout.splitlines()[-2:] == ["hello from the web sidecar", "ping"], out
    finally:
        bash("cargo run -q -p tether-cli -- down --all " + " ".join(project), timeout=300)


def test_the_init_command_serves_health_and_stops_on_ctrl_c():
    cmd = command("examples/gateway-bundle/tether.yaml")
    # The command as written, as a terminal would run it: its own process group for Ctrl-C.
    proc = subprocess.Popen(
        ["bash", "-c", "exec " + cmd],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        ready = None
        deadline = time.monotonic() + 600  # a first `cargo run` may build
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen("http://127.0.0.1:19090/readyz", timeout=2) as r:
                    ready = r.status
                    break
            except OSError:
                time.sleep(0.2)
        assert ready == 200, "the gateway bundle never answered /readyz with 200"
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
        assert "[tether] exiting: all daemons stopped" in output, output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_engine_free_command_checks_and_plans():
    out = bash(command("examples/dev-services/tether.yaml"), timeout=600)
    assert out.returncode == 0, out.stderr
    assert "examples/dev-services/tether.yaml: valid" in out.stderr
    assert out.stdout.startswith("project dev-services"), out.stdout



class Lines:
    """A process's output, line by line, read on a thread so that waiting has a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.seen: list[str] = []
        self._queue: "queue.Queue[str | None]" = queue.Queue()
        self._ended = False

        def read() -> None:
            for line in proc.stdout:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=read, daemon=True).start()

    def _next(self, deadline: float) -> "str | None":
        if self._ended:
            return None
        try:
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if line is None:
            self._ended = True
        else:
            self.seen.append(line)
        return line

    def wait_for(self, line: str, deadline: float) -> None:
        """Waits for `line`, exactly; `{ts}` in it stands for a timestamp (one word)."""
        rx = re.compile(re.escape(line).replace(re.escape("{ts}"), r"\S+"))
        if any(rx.fullmatch(seen) for seen in self.seen):
            return
        while (got := self._next(deadline)) is not None:
            if rx.fullmatch(got):
                return
        raise AssertionError(f"no line {line!r}; the output was:\n" + "\n".join(self.seen))

    def rest(self, deadline: float) -> list[str]:
        while self._next(deadline) is not None:
            pass
        return self.seen


def stop_bundle(proc: subprocess.Popen) -> None:
    """Ends a `tether init` that is still running (a failed test) without leaving its daemons
    behind: each runs in a process group of its own, which SIGKILL to tether would orphan. A
    first SIGTERM stops them in order, a second kills them at once."""
    for _ in range(2):
        if proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_the_bus_demo_exchanges_orders_and_signals_and_stops_cleanly():
    cmd = command("scripts/bus-demo")
    # Orders 0.2 s apart (the demo's are 1 s apart) keep the test short.
    env = dict(os.environ, OMS_INTERVAL="0.2")
    proc = subprocess.Popen(
        ["bash", "-c", "exec " + cmd],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out = Lines(proc)
    try:
        # The script may build and make its Python environment first.
        first = "[tether] 1 step, daemons: bus, signals-bus, oms-bus, signals, oms"
        out.wait_for(first, time.monotonic() + 900)
        deadline = time.monotonic() + 60
        orders = [(1, "created", "#1", "2 x widget"), (2, "paid", "#1", "3 x gadget"),
                  (3, "shipped", "#1", "4 x gizmo"), (4, "created", "#2", "5 x sprocket")]
        for n, kind, seq, what in orders:
            # Python to Rust: the order reaches the Rust plugin, which publishes a signal ...
            out.wait_for(f"[oms] sent order {n} on orders.{kind} {seq}: {what}", deadline)
            out.wait_for(f"[signals] {{ts}}  INFO signals: signalled order=orders.{kind}{seq} "
                         f"signal=signals.{kind}{seq} redelivered=0", deadline)
            # ... and Rust to Python: the signal comes back, naming its order.
            out.wait_for(f"[oms] got signals.{kind} {seq} for order {n} (orders.{kind} {seq}): "
                         f"{what}", deadline)
        os.kill(proc.pid, signal.SIGTERM)  # tether itself: the script exec'd it
        proc.wait(timeout=60)
        lines = out.rest(time.monotonic() + 10)
    finally:
        stop_bundle(proc)
    text = "\n".join(lines)
    assert proc.returncode == 0, text
    for line in ("[tether] stopping: received SIGTERM",
                 "[oms] stopping: no more orders",
                 "[oms] stopped",
                 "[signals-bus] tether sidecar: drained and deregistered",
                 "[oms-bus] tether sidecar: drained and deregistered",
                 "[bus] tether bus: stopped",
                 "[tether] exiting: all daemons stopped"):
        assert line in lines, f"no line {line!r} in:\n{text}"
    for daemon in ("bus", "signals-bus", "oms-bus", "signals", "oms"):
        assert f"[tether] {daemon}: stopped (exited with code 0)" in lines, text
    # Each plugin stopped before its sidecar, and the sidecars before the bus.
    at = {line: i for i, line in enumerate(lines)}
    for plugin in ("signals", "oms"):
        assert at[f"[tether] {plugin}: stopped (exited with code 0)"] \
            < at[f"[{plugin}-bus] tether sidecar: drained and deregistered"] \
            < at["[bus] tether bus: stopped"], text
