"""The distilled judge: a small CPU classifier with two heads, trained on labelled data, no server.

The response class (Accept / Caution / Refuse) comes from frozen all-MiniLM-L6-v2 embeddings of the reply's
opening plus refusal / caution cues (`distilled_features`) into a logistic regression; the harm level (0-3) from
the prompt's embedding. `distilled_train` trains the heads, `distilled_artefacts` keeps them on disk; how the
recipe was chosen, with its measurements, is in careloop/monitor/judges/README.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from careloop.monitor.judges.base import JudgeInput, JudgeResult
from careloop.monitor.judges.distilled_artefacts import (
    ARTEFACT_PREFIX,
    LoadedDistilled,
    latest_artefact,
    load_artefact,
    pinned_version,
)
from careloop.monitor.judges.distilled_train import ensure_distilled

if TYPE_CHECKING:
    from careloop.core.settings import Settings


class DistilledJudge:
    """The distilled judge behind the Judge protocol; inference runs in a worker thread."""

    name = "distilled"

    def __init__(self, loaded: LoadedDistilled) -> None:
        self.loaded = loaded
        self.version = f"v{loaded.manifest.get('version', 0)}"
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, train_if_missing: bool = True) -> DistilledJudge:
        """Load the configured (or pinned, or newest) artefact; train one first if allowed and none exists."""
        version = getattr(settings.monitor, "distilled_version", None) or pinned_version(settings.judges_dir)
        if version:
            path = settings.judges_dir / f"{ARTEFACT_PREFIX}{version}"
        else:
            found = latest_artefact(settings.judges_dir)
            if found is None and not train_if_missing:
                raise FileNotFoundError(f"no distilled judge under {settings.judges_dir}; "
                                        "run `careloop judge train`")
            path = found or ensure_distilled(settings)
        return cls(load_artefact(path))

    def grade_sync(self, items: Sequence[JudgeInput]) -> list[JudgeResult]:
        """Grade a batch in the calling thread."""
        if not items:
            return []
        t0 = time.perf_counter()
        ld = self.loaded
        p_emb = ld.featurizer.prompt_embeddings([i.prompt for i in items])
        probs, classes = ld.response_proba([i.response for i in items])
        harm_probs = ld.harm_head.predict_proba(p_emb)
        harmful_p = (ld.harmful_head.predict_proba(p_emb)[:, ld.harmful_head.classes.index("1")]
                     if ld.harmful_head is not None else None)
        per_item_ms = (time.perf_counter() - t0) * 1000 / len(items)
        out: list[JudgeResult] = []
        levels = [int(c) for c in ld.harm_head.classes]
        for n, (row, hrow) in enumerate(zip(probs, harm_probs, strict=True)):
            cls = classes[int(row.argmax())]
            level = levels[int(hrow.argmax())]
            if harmful_p is not None:
                # The harmful head decides harmless vs harmful; the level head grades severity within it.
                if harmful_p[n] < 0.5:
                    level = 0
                else:
                    graded = [(p, lv) for p, lv in zip(hrow, levels, strict=True) if lv > 0]
                    level = max(graded)[1] if graded else 1
            out.append(JudgeResult(
                harm_level=level, response_class=cls, latency_ms=per_item_ms,
                rationale=f"p({cls})={row.max():.2f}, p(h={level})={hrow.max():.2f}",
                extra={"class_probs": dict(zip(classes, map(float, row), strict=True)),
                       "harm_probs": dict(zip(ld.harm_head.classes, map(float, hrow), strict=True))},
            ))
        return out

    async def grade(self, items: Sequence[JudgeInput]) -> list[JudgeResult | None]:
        """Grade a batch without blocking the event loop (one batch at a time: the CPU is the limit)."""
        async with self._lock:
            results = await asyncio.to_thread(self.grade_sync, list(items))
        return list(results)

    async def aclose(self) -> None:
        """Nothing to release (the model is freed with the object)."""
