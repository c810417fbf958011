"""The README's quick-start commands, read from README.md and run exactly as written (from the
repository's root, by bash), so that the first command a new user types cannot break unseen.

Run after `cargo build` (scripts/test runs it after the Rust tests):  python3 -m pytest tests/readme
The engine command needs the Docker Engine: without one it is skipped with the reason, except
under CI=true, where it fails.
"""

import os
import re
import signal
import subprocess
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


def test_the_quick_start_has_its_three_commands():
    cmds = quick_start()
    assert len(cmds) == 3, cmds
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
