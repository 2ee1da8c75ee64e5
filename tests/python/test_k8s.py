"""The Kubernetes manifests of deploy/k8s: each overlay rendered with `kubectl kustomize`,
validated offline against the Kubernetes schemas with `kubernetes-validate` (strict: a field
the schema does not know is an error), holding what the operations guide promises (a
PodDisruptionBudget everywhere, an HPA on CPU and on connections per pod in the cluster
layout, probes, a preStop pause and a grace period above the drain, rolling updates that
never go below capacity, resources), and with probes that point at endpoints the real binary
answers: the release binary is started with the rendered ConfigMap's file and the
Deployment's own variables (only the listen address moved to a free loopback port, the
secrets set to test values, and the cluster layout's Redis URL pointed at a private Redis),
and each probe's path is fetched from it."""

import subprocess
import sys
import tomllib

import pytest
import yaml

from cluster import Broker, require, wait_until
from conftest import ROOT, Server

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["single", "cluster"]
# Kubernetes 1.30 is the first with the preStop sleep action on by default.
KUBERNETES_VERSION = "1.30.0"


def render(overlay: str) -> list:
    out = subprocess.run([require("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def only(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"one {kind} {name or ''} expected, found {len(found)}"
    return found[0]


def gateway(docs):
    return only(docs, "Deployment", "switchboard")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_and_validates_against_the_kubernetes_schemas(overlay, tmp_path):
    docs = render(overlay)
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    out = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION, str(rendered)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    passed = [line for line in (out.stdout + out.stderr).splitlines() if "passed" in line]
    assert len(passed) == len(docs), out.stdout + out.stderr
    # And a resource the schemas refuse is refused: the validation is not vacuous.
    broken = gateway(docs)
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    bad = tmp_path / "broken.yaml"
    bad.write_text(yaml.safe_dump(broken))
    out = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION, str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0, out.stdout + out.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_has_what_a_rolling_update_without_loss_needs(overlay):
    docs = render(overlay)
    deployment = gateway(docs)
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "switchboard")
    labels = spec["template"]["metadata"]["labels"]

    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"

    # The grace period covers the preStop pause, the drain and a client's close handshake.
    config = node_config(docs)
    drain = seconds(config["server"]["shutdown_drain"])
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + drain + 2

    resources = container["resources"]
    assert resources["requests"]["memory"] and resources["requests"]["cpu"] and resources["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    pdb = only(docs, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
    service = only(docs, "Service", "switchboard")
    assert matches(service["spec"]["selector"], labels)
    assert service["spec"]["ports"][0]["targetPort"] in [p["name"] for p in container["ports"]]

    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    if overlay == "single":
        # The memory broker does not share channels between pods: one pod, never scaled.
        assert not hpas and spec["replicas"] == 1
        return
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "switchboard"}
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "switchboard_connections"
    per_pod = int(metrics["Pods"]["pods"]["target"]["averageValue"])
    assert 0 < per_pod < config["server"]["max_connections"]
    assert hpa["spec"]["minReplicas"] >= 2 and spec["replicas"] >= 2
    env = {e["name"]: e for e in container["env"]}
    assert env["SWITCHBOARD_BROKER"]["value"] == "redis"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_probes_point_at_endpoints_the_binary_answers(overlay, tmp_path):
    docs = render(overlay)
    container = gateway(docs)["spec"]["template"]["spec"]["containers"][0]
    config_text = only(docs, "ConfigMap")["data"]["switchboard.toml"]
    config_file = tmp_path / "switchboard.toml"
    config_file.write_text(config_text)
    # The probes' named port is the one the configuration listens on.
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert port[container[probe]["httpGet"]["port"]] == int(node_config(docs)["server"]["listen"].rsplit(":", 1)[1])
    # The container's plain variables as they are; those from secrets and the pod get test values.
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["SWITCHBOARD_NODE_NAME"] = f"k8s-{overlay}"
    assert container["args"][:2] == ["serve", "--config"]
    redis = None
    try:
        if env.get("SWITCHBOARD_BROKER") == "redis":
            redis = Broker("redis", tmp_path)
            env["SWITCHBOARD_REDIS_URL"] = redis.url
        node = Server(tmp_path, ["--config", str(config_file)], env)
        try:
            for probe in ("livenessProbe", "readinessProbe"):
                path = container[probe]["httpGet"]["path"]
                wait_until(lambda: node.get(path)[0] == 200, 10, what=f"{probe} {path} answering 200")
            # A path that does not exist is not answered 200: the check above means something.
            assert node.get("/healthzz")[0] == 404
        finally:
            node.stop()
    finally:
        if redis:
            redis.stop()


def node_config(docs) -> dict:
    return tomllib.loads(only(docs, "ConfigMap")["data"]["switchboard.toml"])


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60}
    for unit in ("ms", "s", "m"):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * units[unit]
    raise ValueError(duration)


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_dockerfile_copies_only_what_exists_and_runs_the_binary_as_non_root():
    """The image cannot be built here (no container engine): this checks the recipe's inputs
    and its runtime stage instead."""
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    stages = [line.split() for line in dockerfile if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[0][-1] == "build", "a build stage and a runtime stage"
    assert "distroless" in stages[1][1]
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    for line in dockerfile:
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            for source in parts[1:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                top = source.split("/")[0]
                excluded = top in ignored or f"{top}/*" in ignored
                assert not excluded or f"!{source}" in ignored, f"COPY {source} is excluded by .dockerignore"
    runtime = dockerfile[dockerfile.index(next(line for line in dockerfile if line.startswith("FROM ") and "distroless" in line)):]
    user = next(line.split()[1] for line in runtime if line.startswith("USER "))
    assert not user.startswith("0") and user != "root"
    assert any(line.startswith("ENTRYPOINT") and "switchboard" in line for line in runtime)
    # The port the image listens on is the one the manifests probe.
    listen = next(line for line in runtime if "SWITCHBOARD_LISTEN" in line)
    assert listen.endswith(":8000")
