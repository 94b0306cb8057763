"""k8s/: both overlays render with kustomize, every object validates against the Kubernetes schemas, and the
pieces agree with each other and with careloop's settings (replicas vs upstream list, GPUs vs accelerate)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from careloop.core.settings import Settings
from tests.k8s.kustomize_lite import build

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu-dev", "gpu")
K8S_VERSION = "1.32"  # the oldest Kubernetes the manifests target (preStop sleep, sidecar-free)
MONITOR_FILES = {"prometheus-rules.yaml", "grafana-dashboard.json"}  # written by the monitor (issue 4)
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
CARELOOP_COMPONENTS = {"gateway", "monitor", "retrain"}


def _kustomize_cmd() -> list[str] | None:
    """The real kustomize (standalone or kubectl's), or None: then tests/k8s/kustomize_lite.py renders."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _tree(tmp: Path) -> Path:
    """k8s/ itself, or a copy with stand-ins where the monitor's rule and dashboard files are not there yet."""
    missing = {f for f in MONITOR_FILES if not (K8S / "base" / f).exists()}
    if not missing:
        return K8S
    warnings.warn(f"k8s/base lacks {sorted(missing)}; rendering with stand-ins", stacklevel=2)
    copy = tmp / "k8s"
    shutil.copytree(K8S, copy)
    stand_ins = {
        "prometheus-rules.yaml": "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n"
                                 "metadata:\n  name: careloop\nspec:\n  groups: []\n",
        "grafana-dashboard.json": "{}\n",
    }
    for name in missing:
        (copy / "base" / name).write_text(stand_ins[name])
    return copy


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Each overlay rendered by kustomize, as a list of objects."""
    tree = _tree(tmp_path_factory.mktemp("k8s"))
    out: dict[str, list[dict[str, Any]]] = {}
    cmd = _kustomize_cmd()
    for overlay in OVERLAYS:
        if cmd is None:
            out[overlay] = build(tree / "overlays" / overlay)
            continue
        proc = subprocess.run([*cmd, str(tree / "overlays" / overlay)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(pod_spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    return next(c for c in pod_spec.get(key, []) if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def config(objs: list[dict[str, Any]]) -> dict[str, str]:
    return dict(find(objs, "ConfigMap", "careloop-config")["data"])


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process reads from exactly `env`'s CARELOOP_* variables, as a pod's would."""
    for key in [k for k in os.environ if k.startswith("CARELOOP_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def served_vllm_args(objs: list[dict[str, Any]], c: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The vLLM flags a vllm container serves with, as `--flag=value`: its args, or for `careloop model serve` the
    command line careloop builds from the pod's settings (its ConfigMap, then its own env)."""
    if c["command"][-3:] != ["careloop", "model", "serve"]:
        return list(c["args"])
    from careloop.stack import vllm_command

    env = {k: v for src in c.get("envFrom", []) if src.get("configMapRef", {}).get("name") == "careloop-config"
           for k, v in config(objs).items()}
    env |= {k: v for k, v in env_of(c).items() if k.startswith("CARELOOP_") and isinstance(v, str)}
    cmd = vllm_command(settings_from_env(env, monkeypatch), host="0.0.0.0")
    flags = cmd[cmd.index("--model"):]
    out: list[str] = []
    for tok in flags:
        if out and not tok.startswith("--") and "=" not in out[-1]:
            out[-1] += f"={tok}"
        else:
            out.append(tok)
    return out


def job_template(objs: list[dict[str, Any]], run_id: int = 7) -> dict[str, Any]:
    """The Job the monitor's Kubernetes launcher makes for `run_id` from the mounted template and its settings."""
    import tempfile

    from careloop.monitor.launcher import KubernetesLauncher, load_job_template

    text = find(objs, "ConfigMap", "careloop-retrain-job")["data"]["job.yaml"]
    assert "{run_id}" in text
    monitor = container(find(objs, "Deployment", "monitor")["spec"]["template"]["spec"], "monitor")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.yaml"
        path.write_text(text)
        launcher = KubernetesLauncher("https://kubernetes.invalid", "careloop", template=load_job_template(path),
                                      image=env_of(monitor)["CARELOOP_MONITOR__KUBERNETES_IMAGE"])
        job: dict[str, Any] = launcher.manifest(run_id)
        launcher.client.close()
    return job


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], overlay: str,
) -> None:
    """Core objects (and the retrain Job template) pass kubernetes-validate strict; CRDs are checked by hand."""
    objs = [*rendered[overlay], job_template(rendered[overlay])]
    for obj in objs:
        key = (obj["apiVersion"], obj["kind"])
        if key in CRDS:
            assert obj["metadata"]["name"] and isinstance(obj["spec"], dict)
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "StatefulSet", "Deployment", "Service", "HorizontalPodAutoscaler", "NetworkPolicy",
            "ServiceMonitor", "PrometheusRule", "ConfigMap", "PersistentVolumeClaim", "Job"} <= kinds
    namespaced = [o for o in rendered[overlay] if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"careloop"}


def test_crds_are_well_formed(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """ServiceMonitor scrapes /metrics on ports the selected Services have; PrometheusRule has groups of rules."""
    objs = rendered["gpu"]
    sm = find(objs, "ServiceMonitor", "careloop")
    (expr,) = sm["spec"]["selector"]["matchExpressions"]
    services = [o for o in objs if o["kind"] == "Service"
                and o["metadata"]["labels"].get("app.kubernetes.io/component") in expr["values"]]
    assert {s["metadata"]["name"] for s in services} == {"gateway", "monitor", "vllm"}
    for endpoint in sm["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in services)
    rules = [o for o in objs if o["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    for group in rules[0]["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule) and rule["expr"]
    dash = find(objs, "ConfigMap", "careloop-grafana-dashboard")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1" and "careloop.json" in dash["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_serves_every_vllm_replica(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """CARELOOP_UPSTREAM_REPLICAS names exactly vllm-0..N-1 through the headless Service; the gateway is HA."""
    objs = rendered[overlay]
    vllm = find(objs, "StatefulSet", "vllm")
    svc = find(objs, "Service", "vllm")
    assert svc["spec"]["clusterIP"] == "None" and vllm["spec"]["serviceName"] == "vllm"
    cfg = config(objs)
    settings = Settings(upstream_replicas=yaml.safe_load(cfg["CARELOOP_UPSTREAM_REPLICAS"]))
    assert settings.upstreams == [f"http://vllm-{i}.vllm:8000" for i in range(vllm["spec"]["replicas"])]
    gw = find(objs, "Deployment", "gateway")
    assert gw["spec"]["replicas"] >= 2
    c = container(gw["spec"]["template"]["spec"], "gateway")
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    hpa = find(objs, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gateway" and hpa["spec"]["minReplicas"] >= 2
    migrate = container(gw["spec"]["template"]["spec"], "migrate", init=True)
    assert migrate["args"] == ["db", "upgrade"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_vllm_takes_runtime_adapters_from_the_shared_volume(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--enable-lora, runtime loading on, the data volume at CARELOOP_HOME (where retrain writes adapters)."""
    objs = rendered[overlay]
    spec = find(objs, "StatefulSet", "vllm")["spec"]["template"]["spec"]
    c = container(spec, "vllm")
    args = served_vllm_args(objs, c, monkeypatch)
    assert "--enable-lora" in args and "--host=0.0.0.0" in args and "--port=8000" in args
    rank = next(int(a.split("=", 1)[1]) for a in args if a.startswith("--max-lora-rank="))
    assert rank >= Settings().retrain.lora_r, "vLLM must accept the adapters retrain trains"
    assert env_of(c)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    if overlay == "cpu-dev":  # the model the init container prepares, under the name the gateway asks for
        cfg = config(objs)
        assert f"--model={cfg['CARELOOP_BASE_MODEL_PATH']}" in args
        assert f"--served-model-name={cfg['CARELOOP_BASE_MODEL']}" in args
    home = config(objs)["CARELOOP_HOME"]
    data_vol = next(v["name"] for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName")
                    == "careloop-data")
    assert any(m["name"] == data_vol and m["mountPath"] == home for m in c["volumeMounts"])
    assert config(objs)["CARELOOP_BASE_MODEL_PATH"].startswith(home + "/")
    job_spec = job_template(objs)["spec"]["template"]["spec"]
    job_c = container(job_spec, "retrain")
    job_vol = next(v["name"] for v in job_spec["volumes"]
                   if v.get("persistentVolumeClaim", {}).get("claimName") == "careloop-data")
    assert any(m["name"] == job_vol and m["mountPath"] == home and not m.get("readOnly") for m in job_c["volumeMounts"])
    if overlay == "gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert c["image"].startswith("vllm/vllm-openai:")
    pvc = find(objs, "PersistentVolumeClaim", "careloop-data")
    replicas = find(objs, "StatefulSet", "vllm")["spec"]["replicas"]
    assert replicas == 1 or pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitor_is_a_single_leader_that_launches_the_job_template(
    rendered: dict[str, list[dict[str, Any]]], overlay: str,
) -> None:
    """One monitor pod, never two in a rollout; it reads the Job template at the path its settings name."""
    objs = rendered[overlay]
    mon = find(objs, "Deployment", "monitor")
    assert mon["spec"]["replicas"] == 1 and mon["spec"]["strategy"]["type"] == "Recreate"
    spec = mon["spec"]["template"]["spec"]
    c = container(spec, "monitor")
    cfg = config(objs)
    settings = Settings.model_validate({"monitor": {
        "retrain_backend": cfg["CARELOOP_MONITOR__RETRAIN_BACKEND"],
        "kubernetes_job_template": cfg["CARELOOP_MONITOR__KUBERNETES_JOB_TEMPLATE"]}})
    assert settings.monitor.retrain_backend == "kubernetes"
    template_path = Path(str(settings.monitor.kubernetes_job_template))
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(template_path.parent))
    vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert vol["configMap"]["name"] == "careloop-retrain-job"
    assert template_path.name in find(objs, "ConfigMap", "careloop-retrain-job")["data"]
    assert env_of(c)["CARELOOP_MONITOR__KUBERNETES_IMAGE"] == c["image"] != "careloop-train"
    binding = find(objs, "RoleBinding", "careloop-retrain-launcher")
    assert binding["subjects"][0]["name"] == spec["serviceAccountName"]
    role = find(objs, "Role", "careloop-retrain-launcher")
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in role["rules"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_retrain_job_runs_accelerate_with_a_config_matching_its_gpus(
    rendered: dict[str, list[dict[str, Any]]], overlay: str,
) -> None:
    """`accelerate launch --config_file=<settings.retrain.accelerate_config>`; num_processes = GPUs requested."""
    from accelerate.commands.config.config_args import ClusterConfig

    objs = rendered[overlay]
    job = job_template(objs, run_id=42)
    assert job["metadata"]["name"] == "careloop-retrain-42" and job["spec"]["backoffLimit"] == 0
    spec = job["spec"]["template"]["spec"]
    c = container(spec, "retrain")
    env = env_of(c)
    settings = Settings.model_validate({"retrain": {"accelerate_config": env["CARELOOP_RETRAIN__ACCELERATE_CONFIG"]}})
    cfg_path = Path(str(settings.retrain.accelerate_config))
    cmd = c["command"]
    i = cmd.index("accelerate")
    assert cmd[i + 1] == "launch"
    assert "--config_file=$(CARELOOP_RETRAIN__ACCELERATE_CONFIG)" in cmd
    assert cmd[cmd.index("-m") + 1:] == ["careloop.cli", "retrain", "--run-id", "42"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(cfg_path.parent))
    vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    files = find(objs, "ConfigMap", vol["configMap"]["name"])["data"]
    assert cfg_path.name in files
    tmp = Path(pytest.importorskip("tempfile").mkdtemp()) / cfg_path.name
    tmp.write_text(files[cfg_path.name])
    acc = ClusterConfig.from_yaml_file(str(tmp))  # rejects unknown keys
    gpus = int(c["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
    if gpus:
        assert acc.num_processes * acc.num_machines == gpus
        assert str(acc.distributed_type) in {"DistributedType.FSDP", "DistributedType.DEEPSPEED"}
        assert not acc.use_cpu
    else:
        assert acc.use_cpu and acc.num_processes == 1
    for name, text in files.items():  # every shipped config parses
        other = tmp.parent / name
        other.write_text(text)
        ClusterConfig.from_yaml_file(str(other))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_careloop_config_parses_as_settings(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ConfigMap, read from the environment as a pod reads it, gives the settings the cluster relies on."""
    cfg = config(rendered[overlay])
    settings = settings_from_env(cfg, monkeypatch)
    vllm = find(rendered[overlay], "StatefulSet", "vllm")
    assert settings.upstreams == [f"http://vllm-{i}.vllm:8000" for i in range(vllm["spec"]["replicas"])]
    assert str(settings.home) == "/var/lib/careloop"
    assert settings.base_model_dir == Path(cfg["CARELOOP_BASE_MODEL_PATH"])
    assert settings.monitor.retrain_backend == "kubernetes"
    assert settings.monitor.kubernetes_job_template == "/etc/careloop/retrain/job.yaml"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_careloop_env_names_real_settings(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """Every CARELOOP_* variable in the manifests is a field of careloop/core/settings.py (a typo would be ignored)."""
    objs = rendered[overlay]
    names = set(config(objs))
    for obj in [*objs, job_template(objs)]:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {}) or obj.get("spec", {}).get(
            "jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            names |= {e["name"] for e in c.get("env", [])}
    for name in sorted(n for n in names if n.startswith("CARELOOP_")):
        path = name[len("CARELOOP_"):].lower().split("__")
        model: Any = Settings
        for part in path:
            assert part in model.model_fields, f"{name}: no setting {part!r}"
            model = model.model_fields[part].annotation
    Settings.model_validate({}, context=None)  # the defaults still build


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_fence_vllm_and_postgres(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """Default deny; vLLM and PostgreSQL admit only careloop's own components (plus Prometheus for vLLM)."""
    objs = rendered[overlay]
    deny = find(objs, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"]["podSelector"] == {} and "ingress" not in deny["spec"]
    for name in ("vllm", "postgres"):
        pol = find(objs, "NetworkPolicy", name)
        assert pol["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == name
        for rule in pol["spec"]["ingress"]:
            for peer in rule["from"]:
                if "namespaceSelector" in peer:  # only Prometheus from the monitoring namespace
                    assert name == "vllm"
                    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
                    continue
                (expr,) = peer["podSelector"]["matchExpressions"]
                assert set(expr["values"]) <= CARELOOP_COMPONENTS
    gw = find(objs, "NetworkPolicy", "gateway")
    ns_peers = [p["namespaceSelector"]["matchLabels"] for r in gw["spec"]["ingress"] for p in r["from"]
                if "namespaceSelector" in p]
    assert {"careloop.io/operator": "true"} in ns_peers
    ingress = find(objs, "Ingress", "gateway")
    paths = [p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert paths == ["/v1/"], "the public ingress must not route /admin/"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """ConfigMaps and PVCs that pods use exist; Services select some workload's pods; careloop pods run non-root."""
    objs = rendered[overlay]
    configmaps = {o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"}
    pvcs = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
    secrets = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    operator_secrets = {"careloop-db", "careloop-admin", "careloop-postgres", "hf-token"}
    workloads = [o for o in objs if o["kind"] in {"Deployment", "StatefulSet", "Job"}] + [job_template(objs)]
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in pvcs
        for c in spec["containers"] + spec.get("initContainers", []):
            for ref in [e["valueFrom"] for e in c.get("env", []) if "valueFrom" in e]:
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] in configmaps
                if "secretKeyRef" in ref and overlay == "cpu-dev":
                    assert ref["secretKeyRef"]["name"] in secrets
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] in secrets | operator_secrets
            if c["image"].startswith(("careloop", "ghcr.io/careloop")):
                assert spec["securityContext"]["runAsNonRoot"] is True
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
        command = " ".join(shlex.quote(x) for x in spec["containers"][0].get("command", []))
        assert "{run_id}" not in command
    for svc in (o for o in objs if o["kind"] == "Service"):
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= labels.items() for labels in pod_labels), svc["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_careloop_commands_exist(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """Every `careloop …` the manifests run (image entrypoint or `-m careloop.cli`) is a real CLI command."""
    from typer.testing import CliRunner

    from careloop.cli import app

    objs = rendered[overlay]
    workloads = [o for o in objs if o["kind"] in {"Deployment", "StatefulSet", "Job"}] + [job_template(objs)]
    invocations: set[tuple[str, ...]] = set()
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        for c in spec["containers"] + spec.get("initContainers", []):
            if "-m" in c.get("command", []):
                invocations.add(tuple(c["command"][c["command"].index("-m") + 2:]))
            elif c["image"].startswith(("careloop", "ghcr.io/careloop")) and "command" not in c:
                invocations.add(tuple(c["args"]))
    assert ("serve",) in invocations and ("db", "upgrade") in invocations and ("monitor",) in invocations
    runner = CliRunner()
    for args in invocations:
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, f"careloop {' '.join(args)}: {result.output}"
