"""The cluster and compose assets keep serving locked down: every manifest validates, TF Serving runs
unprivileged on a read-only root filesystem, a NetworkPolicy admits only Airflow and the prediction
service, and compose publishes on loopback only. Removing any of these fails a test here."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
MANIFESTS = sorted((DOCKER / "k8s").glob("*.yaml"))
# The official Airflow Helm chart's labels for the pods that run tasks (LocalExecutor: the scheduler),
# and the prediction service's.
ADMITTED = [
    {"tier": "airflow", "component": "worker"},
    {"tier": "airflow", "component": "scheduler"},
    {"app.kubernetes.io/name": "nightshift-predict"},
]


def _documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(kind: str, name: str = "tf-serving") -> dict[str, Any]:
    [doc] = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_every_manifest_validates_strictly(manifest: Path) -> None:
    result = subprocess.run(["kubernetes-validate", "--strict", str(manifest)], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_serving_pods_run_as_non_root_with_seccomp() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert isinstance(context["runAsUser"], int)
    assert context["runAsUser"] > 0
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False


def test_every_serving_container_is_unprivileged_on_a_read_only_root() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    for container in pod.get("initContainers", []) + pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert not context["capabilities"].get("add"), container["name"]
        assert not context.get("privileged"), container["name"]
        assert context.get("runAsUser", pod["securityContext"]["runAsUser"]) != 0


def test_the_only_writable_mounts_are_scratch_volumes() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [m for c in pod["containers"] for m in c["volumeMounts"]]
    writable = {m["mountPath"]: volumes[m["name"]] for m in mounts if not m.get("readOnly")}
    assert "/tmp" in writable
    assert all("emptyDir" in volume for volume in writable.values()), writable
    assert all(volume["emptyDir"].get("sizeLimit") for volume in writable.values())


def test_a_network_policy_admits_only_airflow_and_the_prediction_service() -> None:
    deployment = _one("Deployment")
    policy = _one("NetworkPolicy")
    assert policy["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected
    assert selected.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert "Ingress" in policy["spec"]["policyTypes"]
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    # Pod selectors only: no ipBlock, no namespaceSelector (another namespace could wear the labels),
    # no empty selector (every pod).
    assert all(set(peer) == {"podSelector"} for peer in peers), peers
    assert all(set(peer["podSelector"]) == {"matchLabels"} for peer in peers), peers
    assert sorted((p["podSelector"]["matchLabels"] for p in peers), key=str) == sorted(ADMITTED, key=str)
    container_ports = {p["containerPort"] for c in deployment["spec"]["template"]["spec"]["containers"]
                       for p in c["ports"]}  # fmt: skip
    for rule in policy["spec"]["ingress"]:
        assert rule["ports"], "a rule without ports admits every port"
        assert {p["port"] for p in rule["ports"]} <= container_ports


def test_serving_reaches_nothing() -> None:
    policy = _one("NetworkPolicy")
    assert "Egress" in policy["spec"]["policyTypes"]
    assert policy["spec"].get("egress", []) == []


def test_compose_publishes_on_loopback_only() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    assert published["api-server"]
    assert published["predict"]
    assert published["tf-serving"]
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str), f"{name}: write ports as 'HOST_IP:HOST:CONTAINER' strings"
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_serving_is_unprivileged() -> None:
    serving = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["tf-serving"]
    assert serving["read_only"] is True
    assert serving["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in serving["security_opt"]
    assert not serving["user"].startswith(("0:", "root"))
