"""`tether render compose` of the NATS-backed bus example, read back by `docker-compose config`:
the Bus API's replicas are one service scaled by `deploy.replicas`, with nothing that two of its
containers could not share.

Run after `cargo build` (scripts/test does):  python3 -m pytest tests/render
Needs: docker-compose (Debian's), pyyaml, pytest.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TETHER = Path(os.environ.get("TETHER_BIN", REPO / "target" / "debug" / "tether"))


def compose_config(example: Path, out: Path) -> dict:
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is required under CI=true")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    subprocess.run(
        [str(TETHER), "render", "compose", "-f", str(example), "-o", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    config = subprocess.run(
        ["docker-compose", "-f", str(out), "config"],
        capture_output=True,
        text=True,
        check=True,
    )
    return yaml.safe_load(config.stdout)


def test_replicas_are_deploy_replicas_with_no_fixed_name_or_host_port(tmp_path: Path) -> None:
    config = compose_config(REPO / "examples" / "plugin-bus-nats" / "tether.yaml", tmp_path / "compose.yml")
    api = config["services"]["bus-api"]
    assert api["deploy"] == {"replicas": 2}
    # Two containers of one service: Compose names them; no host port for both to take.
    assert "container_name" not in api
    assert "ports" not in api
    # Every replica answers to the one name the bus sidecars dial.
    assert "bus-api" in api["networks"]["tether"]["aliases"]
    assert config["services"]["bus"]["environment"]["SIDECAR_BUS_API_URL"] == "bus-api:8443"
    # The NATS credentials are Compose secrets (files), not values in the environment.
    assert api["environment"] == {
        "NATS_PASSWORD_FILE": "/run/secrets/nats-password",
        "NATS_USER_FILE": "/run/secrets/nats-user",
    }
    assert {s["target"] for s in api["secrets"]} == {"nats-user", "nats-password", "nats-ca.pem"}
    # A service without `replicas` is one container, as before.
    assert "deploy" not in config["services"]["bus"]
