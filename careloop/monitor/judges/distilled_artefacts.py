"""A distilled judge on disk: `judges_dir/distilled-v<N>/` (a manifest and the heads as plain JSON), its versions,
the pinned reference, and loading one back.

The frozen encoder is not stored: it comes from the offline package. Torch is imported inside functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from careloop.core.hardware import native_bf16
from careloop.monitor.judges.distilled_features import SEGMENTS, DistilledConfig, Featurizer, load_prompt_encoder
from careloop.monitor.scoring import RESPONSE_CLASSES

ARTEFACT_PREFIX = "distilled-v"
ARTEFACT_FORMAT = "minilm/3"  # artefacts of another format are ignored (a new version is trained)
# Earlier formats are the same files; their manifests lack the newer config fields, which then take the
# values those artefacts were trained with (LEGACY_CONFIG), not today's defaults.
READABLE_FORMATS = (ARTEFACT_FORMAT, "minilm/2", "minilm-segments-lr/1")
LEGACY_CONFIG: dict[str, Any] = {"response_layers": 6, "opening_sentences": False, "opening_weight": 1.0}
REFERENCE_PIN = "reference.json"  # in judges_dir: the version an approver accepted as the reference (console)


@dataclass
class LinearHead:
    """Multinomial logistic regression on standardised features; plain JSON on disk (no pickles)."""

    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    classes: list[str]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities over `classes` for each feature row."""
        z = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        if z.shape[1] == 1:  # a binary head
            z = np.hstack([-z, z]) / 2
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def to_json(self) -> dict[str, Any]:
        """A plain-JSON form."""
        return {"coef": self.coef.tolist(), "intercept": self.intercept.tolist(), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "classes": self.classes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinearHead:
        """Read back `to_json`."""
        def arr(key: str) -> np.ndarray:
            return np.asarray(data[key], dtype=np.float32)

        return cls(arr("coef"), arr("intercept"), arr("mean"), arr("scale"), [str(c) for c in data["classes"]])


def unreadable_reason(manifest: dict[str, Any]) -> str | None:
    """Why careloop cannot grade with an artefact of this manifest (None: it can)."""
    if manifest.get("format") not in READABLE_FORMATS:
        return f"a distilled artefact of another format ({manifest.get('format')})"
    config = manifest.get("config", {})
    if config.get("response_model", "segments-lr") != "segments-lr":
        return f"a {config['response_model']} response head, which careloop no longer runs"
    if not set(config.get("segments", ())) <= set(SEGMENTS):
        return f"feature segments {config['segments']}, which careloop no longer reads"
    return None


def artefact_versions(judges_dir: Path) -> list[int]:
    """Versions of complete, loadable distilled artefacts (a manifest careloop can read), ascending."""
    out: list[int] = []
    if judges_dir.is_dir():
        for p in judges_dir.iterdir():
            if p.name.startswith(ARTEFACT_PREFIX) and (p / "manifest.json").is_file():
                try:
                    version = int(p.name[len(ARTEFACT_PREFIX):])
                    manifest = json.loads((p / "manifest.json").read_text())
                except (ValueError, OSError):
                    continue
                if unreadable_reason(manifest) is None:
                    out.append(version)
    return sorted(out)


def pinned_version(judges_dir: Path) -> int | None:
    """The distilled version pinned as the reference (None: none pinned, the newest serves)."""
    try:
        version = json.loads((judges_dir / REFERENCE_PIN).read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return version if isinstance(version, int) and (judges_dir / f"{ARTEFACT_PREFIX}{version}").is_dir() else None


def latest_artefact(judges_dir: Path) -> Path | None:
    """The newest complete artefact dir, or None."""
    versions = artefact_versions(judges_dir)
    return judges_dir / f"{ARTEFACT_PREFIX}{versions[-1]}" if versions else None


@dataclass
class LoadedDistilled:
    """A loaded artefact: the frozen encoder, the response head and the harm heads."""

    path: Path
    manifest: dict[str, Any]
    cfg: DistilledConfig
    featurizer: Featurizer
    response_head: LinearHead
    harm_head: LinearHead
    harmful_head: LinearHead | None = None  # harmless vs harmful; the harm head then grades severity

    def response_proba(self, responses: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """(probabilities, their classes) of the response class of each response."""
        order = [self.response_head.classes.index(c) for c in RESPONSE_CLASSES]
        x = self.featurizer.response_features(responses)
        return self.response_head.predict_proba(x)[:, order], list(RESPONSE_CLASSES)


def read_head(path: Path) -> LinearHead:
    """A head saved as `LinearHead.to_json`."""
    return LinearHead.from_json(json.loads(path.read_text()))


def load_artefact(path: Path, bf16: bool | None = None) -> LoadedDistilled:
    """Load a distilled artefact from its directory (about a second: JSON heads and the encoder)."""
    import torch

    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} is not a distilled judge artefact (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    reason = unreadable_reason(manifest)
    if reason is not None:
        raise FileNotFoundError(f"{path} is {reason}; run `careloop judge train` for a current one")
    known = DistilledConfig.__dataclass_fields__
    raw = {**LEGACY_CONFIG, **{k: v for k, v in manifest.get("config", {}).items() if k in known}}
    if "segments" in raw:
        raw["segments"] = tuple(raw["segments"])
    cfg = DistilledConfig(**raw)
    encoder, tokenizer = load_prompt_encoder()
    use_bf16 = cfg.bf16_inference if bf16 is None else bf16
    if use_bf16 and native_bf16():
        encoder = encoder.to(torch.bfloat16)
    head_path = path / "response_head.json"
    if not head_path.is_file():
        raise FileNotFoundError(f"{path} holds no response head")
    harmful_path = path / "harmful_head.json"
    return LoadedDistilled(path, manifest, cfg, Featurizer(encoder, tokenizer, cfg), read_head(head_path),
                           read_head(path / "harm_head.json"),
                           read_head(harmful_path) if harmful_path.is_file() else None)
