"""Judges: build one by name from the settings (`self`, `external`, `distilled`, `ensemble`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from careloop.monitor.judges.base import Judge, JudgeError, JudgeInput, JudgeResult

if TYPE_CHECKING:
    from careloop.core.settings import JudgeEndpoint, Settings

JUDGE_NAMES: tuple[str, ...] = ("self", "external", "distilled", "ensemble")

__all__ = ["JUDGE_NAMES", "Judge", "JudgeError", "JudgeInput", "JudgeResult", "build_judge"]


def _llm_judge(name: str, endpoint: JudgeEndpoint, settings: Settings) -> Judge:
    from careloop.monitor.judges.llm import LLMJudge

    if name == "external" and not endpoint.url:
        raise ValueError("the external judge needs monitor.external_judge.url "
                         "(CARELOOP_MONITOR__EXTERNAL_JUDGE__URL) and usually .model and .api_key")
    url = endpoint.url or settings.upstream
    model = endpoint.model or settings.base_model
    api_key = endpoint.api_key or (settings.upstream_api_key if name == "self" else None)
    return LLMJudge(name=name, url=url, model=model, api_key=api_key, concurrency=endpoint.concurrency,
                    timeout_s=endpoint.timeout_s, structured=endpoint.structured,
                    max_retries=max(0, settings.monitor.judge_max_retries - 1))


def build_judge(name: str, settings: Settings) -> Judge:
    """A ready judge by name. `distilled` trains its artefact first if there is none (minutes)."""
    if name == "self":
        return _llm_judge("self", settings.monitor.self_judge, settings)
    if name == "external":
        return _llm_judge("external", settings.monitor.external_judge, settings)
    if name == "distilled":
        from careloop.monitor.judges.distilled import DistilledJudge

        return DistilledJudge.from_settings(settings)
    if name == "ensemble":
        from careloop.monitor.judges.ensemble import EnsembleJudge

        members = [m for m in settings.monitor.ensemble_members if m not in ("ensemble", "human")]
        if not members:
            raise ValueError("monitor.ensemble_members names no judge to combine")
        return EnsembleJudge([build_judge(m, settings) for m in members], settings.monitor.ensemble_weights)
    raise ValueError(f"unknown judge {name!r}; choose one of {', '.join(JUDGE_NAMES)}")
