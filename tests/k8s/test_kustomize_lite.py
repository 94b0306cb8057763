"""The fallback renderer gives the same objects as the real kustomize for both overlays."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.kustomize_lite import KustomizeError, build

K8S = Path(__file__).resolve().parents[2] / "k8s"


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _normal(obj: dict[str, Any]) -> dict[str, Any]:
    """Secrets compared by their decoded values (kustomize wraps long base64 lines)."""
    if obj["kind"] == "Secret":
        obj = {**obj, "data": {k: base64.b64decode("".join(v.split())) for k, v in obj["data"].items()}}
    return obj


@pytest.mark.parametrize("overlay", ["cpu-dev", "gpu"])
def test_same_objects_as_kustomize(overlay: str) -> None:
    if shutil.which("kubectl") is None and shutil.which("kustomize") is None:
        pytest.skip("no kustomize here to compare with")
    cmd = ["kustomize", "build"] if shutil.which("kustomize") else ["kubectl", "kustomize"]
    if not all((K8S / "base" / f).exists() for f in ("prometheus-rules.yaml", "grafana-dashboard.json")):
        pytest.skip("the monitor's rule and dashboard files are not there yet")
    proc = subprocess.run([*cmd, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    real = {_key(o): o for o in yaml.safe_load_all(proc.stdout) if o}
    lite = {_key(o): o for o in build(K8S / "overlays" / overlay)}
    assert sorted(lite) == sorted(real)
    for key, obj in real.items():
        assert _normal(lite[key]) == _normal(obj), key


def test_unsupported_fields_are_refused(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nhelmCharts: []\n")
    with pytest.raises(KustomizeError, match="helmCharts"):
        build(tmp_path)
