"""Every example, rendered by `tether render kubernetes`, passes kubernetes-validate --strict
for Kubernetes 1.33 (and the newest schema it carries).

Run after `cargo build` (scripts/test does):  python3 -m pytest tests/render
Needs: kubernetes-validate, pyyaml, pytest.
"""

import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TETHER = Path(os.environ.get("TETHER_BIN", REPO / "target" / "debug" / "tether"))
EXAMPLES = sorted(REPO.glob("examples/*/tether.yaml"))


def render(example: Path, *extra: str) -> str:
    out = subprocess.run(
        [str(TETHER), "render", "kubernetes", "--allow-lossy", "-f", str(example), *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.parent.name)
@pytest.mark.parametrize("version", ["1.33.0", "1.37.0"])
def test_example_is_valid_kubernetes(example: Path, version: str) -> None:
    docs = [d for d in yaml.safe_load_all(render(example)) if d is not None]
    assert docs, "no objects rendered"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_session_sidecars_are_native_sidecars_with_a_startup_probe() -> None:
    docs = list(yaml.safe_load_all(render(REPO / "examples" / "web-sidecar" / "tether.yaml")))
    workload = next(d for d in docs if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "web-sidecar")
    pod = workload["spec"]["template"]["spec"]
    [echo] = pod["initContainers"]
    assert echo["name"] == "echo"
    assert echo["restartPolicy"] == "Always"
    # log readiness has no probe equivalent: it is listed as a loss, not invented.
    assert "startupProbe" not in echo
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    # In the Pod, the session sidecar is on loopback; the shared one is its Service.
    assert env["TETHER_ECHO_HOST"] == "127.0.0.1"
    assert env["TETHER_WEB_HOST"] == "web"
    services = [d["metadata"]["name"] for d in docs if d and d["kind"] == "Service"]
    assert services == ["web"]


@pytest.mark.parametrize("version", ["1.33.0", "1.37.0"])
def test_with_a_wait_image_the_pod_waits_for_shared_sidecars(version: str) -> None:
    text = render(REPO / "examples" / "web-sidecar" / "tether.yaml", "--wait-image", "tether:1")
    assert "# note: the workload does not wait" not in text
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    workload = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "web-sidecar")
    wait, echo = workload["spec"]["template"]["spec"]["initContainers"]
    # First the shared sidecar's Service answers (http readiness, its timeout), then the
    # session sidecar starts beside the workload.
    assert wait == {
        "name": "wait-web",
        "image": "tether:1",
        "args": ["wait", "--timeout", "20s", "http://web:8080/"],
    }
    assert echo["name"] == "echo"


def test_the_bus_sidecar_starts_on_its_own_readiness_and_is_checked_on_its_health_endpoint() -> None:
    docs = [d for d in yaml.safe_load_all(render(REPO / "examples" / "plugin-bus" / "tether.yaml")) if d]
    workload = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "plugin-bus")
    pod = workload["spec"]["template"]["spec"]
    [bus] = pod["initContainers"]
    assert bus["restartPolicy"] == "Always"
    # The startup gate needs only the sidecar's own part (registered, grants recovered): plain
    # /readyz also needs the plugin, which starts only after this probe passed.
    assert bus["startupProbe"]["httpGet"] == {"path": "/readyz?bus", "port": 9192}
    assert bus["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9192}
    assert bus["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9192}
    # The plugin shares the Pod's network: it reaches the sidecar on 127.0.0.1:9191, and the
    # sidecar reaches the Bus API through its Service.
    [plugin] = pod["containers"]
    env = {e["name"]: e["value"] for e in plugin["env"]}
    assert env["SIDECAR_ADDR"] == "127.0.0.1:9191"
    sidecar_env = {e["name"]: e["value"] for e in bus["env"]}
    assert sidecar_env["SIDECAR_BUS_API_URL"] == "bus-api:8443"
    services = [d["metadata"]["name"] for d in docs if d["kind"] == "Service"]
    assert services == ["bus-api"]
