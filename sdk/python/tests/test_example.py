"""The example plugin (examples/signals) run as a script against the fake sidecar: the signal
handling, the exit codes, and its Dockerfile's practices (the image itself cannot be built here:
there is no registry)."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from fake_sidecar import WAIT

from tether_plugin.proto import bus_pb2 as pb

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "signals"


def plugin_process(addr: str) -> subprocess.Popen:
    env = dict(os.environ, SIDECAR_ADDR=addr, SIDECAR_CONNECT_TIMEOUT="20s")
    return subprocess.Popen([sys.executable, str(EXAMPLE / "plugin.py")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_example_turns_orders_into_signals_and_exits_0_on_a_signal(sidecar, signum):
    proc = plugin_process(sidecar.addr)
    try:
        session = sidecar.next_session()
        assert session.recv_kind("hello").subscriptions == [pb.Subscription(topic="orders.*")]
        session.welcome(instance_id="signals-1")
        session.health_check(1)
        assert session.recv_kind("health") == pb.HealthAnswer(id=1, healthy=True)

        session.deliver("d1", topic="orders.created", data=b'{"id": 7}', sequence=3)
        publish = session.recv_kind("publish")
        assert (publish.topic, publish.data, dict(publish.headers)) == (
            "signals.created", b'{"id": 7}',
            {"source-topic": "orders.created", "source-sequence": "3"})
        session.accept(publish.request_id, 12)
        assert session.recv_kind("ack") == pb.PluginAck(delivery_id="d1")

        proc.send_signal(signum)
        session.expect_half_close()
        session.end()
        _, stderr = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "INFO signals: started as signals-1\n" in stderr
    assert "INFO signals: orders.created #3 -> signals.created #12\n" in stderr
    assert stderr.endswith("INFO signals: stopping\nINFO signals: stopped\n")


def test_the_example_exits_non_zero_naming_the_sidecar_when_refused(sidecar):
    proc = plugin_process(sidecar.addr)
    try:
        session = sidecar.next_session()
        session.recv_kind("hello")
        session.end(grpc.StatusCode.FAILED_PRECONDITION,
                    "the plugin speaks tether-bus-protocol 1, this sidecar 2")
        _, stderr = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert stderr.endswith(
        f"ERROR signals: the sidecar at {sidecar.addr} refused the session: FAILED_PRECONDITION: "
        "the plugin speaks tether-bus-protocol 1, this sidecar 2\n")


def dockerfile() -> list:
    lines = (EXAMPLE / "Dockerfile").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_the_dockerfile_follows_the_container_contract():
    lines = dockerfile()
    text = "\n".join(lines)
    assert lines[0] == "FROM python:3.12-slim"
    index = {word: next(i for i, line in enumerate(lines) if word in line)
             for word in ("requirements.txt", "pip install", "COPY src/", "plugin.py .", "USER",
                          "CMD")}
    # dependencies, then the SDK, then the plugin's source; a user that is not root runs it
    assert index["requirements.txt"] < index["pip install"] < index["COPY src/"] \
        < index["plugin.py ."] < index["CMD"]
    assert index["USER"] < index["CMD"]
    user = next(line for line in lines if line.startswith("USER")).split()[1]
    assert user not in ("root", "0")
    assert lines[-1] == 'CMD ["python", "plugin.py"]'
    for dev in ("pytest", "grpcio-tools", "[dev]"):
        assert dev not in text


def version(text: str) -> tuple:
    return tuple(int(part) for part in text.split("."))


def test_the_example_pins_versions_the_sdk_accepts():
    pins = dict(line.split("==") for line in (EXAMPLE / "requirements.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pyproject = (EXAMPLE.parents[1] / "pyproject.toml").read_text()
    minimums = dict(re.findall(r'"([a-z]+)>=([0-9.]+)', pyproject.split("dependencies = [")[1]
                               .split("]")[0]))
    assert set(pins) == set(minimums) == {"grpcio", "protobuf"}
    for name, pin in pins.items():
        assert version(pin) >= version(minimums[name]), f"{name}=={pin} < {minimums[name]}"
