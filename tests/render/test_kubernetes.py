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


def test_a_nats_bus_api_is_a_deployment_of_its_replicas_behind_one_service() -> None:
    docs = [d for d in yaml.safe_load_all(render(REPO / "examples" / "plugin-bus-nats" / "tether.yaml")) if d]
    bus_api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "plugin-bus-nats-bus-api")
    assert bus_api["spec"]["replicas"] == 2
    pod = bus_api["spec"]["template"]["spec"]
    # Spread over nodes where the cluster can, and taken away one at a time.
    [spread] = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == bus_api["spec"]["selector"]["matchLabels"]
    [budget] = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert budget["spec"] == {"maxUnavailable": 1, "selector": bus_api["spec"]["selector"]}
    # One Service in front; the bus sidecars name it.
    [service] = [d for d in docs if d["kind"] == "Service"]
    assert service["metadata"]["name"] == "bus-api"
    assert service["spec"]["selector"] == bus_api["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == 8443
    workload = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "plugin-bus-nats")
    [bus] = workload["spec"]["template"]["spec"]["initContainers"]
    assert {e["name"]: e["value"] for e in bus["env"]}["SIDECAR_BUS_API_URL"] == "bus-api:8443"
    # Probed on the bus's --http endpoints: /readyz gates the start and takes a replica out of
    # the Service while NATS refuses writes or it is stopping; /healthz restarts it.
    [api] = pod["containers"]
    assert api["args"][api["args"].index("--http") + 1] == "0.0.0.0:8080"
    assert api["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 8080}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8080}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    # The NATS user, password and CA: files from the Secret, named by path, never by value.
    env = {e["name"]: e for e in api["env"]}
    assert env["NATS_USER_FILE"] == {"name": "NATS_USER_FILE", "value": "/run/secrets/nats-user"}
    assert env["NATS_PASSWORD_FILE"] == {"name": "NATS_PASSWORD_FILE", "value": "/run/secrets/nats-password"}
    assert "NATS_PASSWORD" not in env and "NATS_USER" not in env
    assert api["args"][api["args"].index("--nats-ca") + 1] == "/run/secrets/nats-ca.pem"
    [mount] = api["volumeMounts"]
    assert mount["mountPath"] == "/run/secrets" and mount["readOnly"] is True
    [volume] = pod["volumes"]
    assert volume["name"] == mount["name"]
    assert volume["secret"]["secretName"] == "plugin-bus-nats-secrets"
    assert {i["path"] for i in volume["secret"]["items"]} == {"nats-user", "nats-password", "nats-ca.pem"}
    [secret] = [d for d in docs if d["kind"] == "Secret"]
    assert secret["stringData"] == {
        "bus-api-nats-user": "",
        "bus-api-nats-password": "",
        "bus-api-nats-ca.pem": "",
    }


def test_secret_values_reach_the_secret_only_when_asked(tmp_path: Path) -> None:
    example = REPO / "examples" / "plugin-bus-nats" / "tether.yaml"
    out = tmp_path / "k8s.yaml"
    env = dict(os.environ, NATS_USER="bus", NATS_PASSWORD="s3cret-pw")
    # The CA file is read beside the declaration: render a copy of the example with one.
    copy = tmp_path / "tether.yaml"
    copy.write_text(example.read_text())
    (tmp_path / "nats-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    subprocess.run(
        [str(TETHER), "render", "kubernetes", "--allow-lossy", "--include-secret-values", "-f", str(copy), "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    text = out.read_text()
    [secret] = [d for d in yaml.safe_load_all(text) if d and d["kind"] == "Secret"]
    assert secret["stringData"]["bus-api-nats-password"] == "s3cret-pw"
    # Only in the Secret: nowhere in a Pod's spec.
    assert text.count("s3cret-pw") == 1
