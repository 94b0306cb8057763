"""The monitor's settings: judges, rolling windows, divergence, triggers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class JudgeEndpoint(BaseModel):
    """An OpenAI-compatible endpoint an LLM judge talks to."""

    url: str | None = Field(default=None, description="The endpoint's base URL. None: the gateway's upstream (vLLM).")
    model: str | None = Field(default=None, description="The model name to ask. None: the base model's served name.")
    api_key: str | None = Field(default=None, description="Bearer key for the endpoint, if it needs one.")
    concurrency: int = Field(default=8, description="Requests in flight to the endpoint at most.")
    timeout_s: float = Field(default=60.0, description="Timeout of one judging request.")
    structured: bool = Field(default=True, description=(
        "Use vLLM structured output when the endpoint supports it."))


class MonitorSettings(BaseModel):
    """Judging, rolling metrics, divergence and triggers."""

    host: str = Field(default="127.0.0.1", description="Bind address of the monitor's metrics server.")
    port: int = Field(default=9464, description="Port of the monitor's metrics server (Prometheus scrapes it).")
    judges: list[str] = Field(default_factory=lambda: ["distilled"], description="Judges that grade sampled traffic.")
    reference_judge: str = Field(default="distilled", description=(
        "The judge whose verdicts drive the metrics and triggers; the others are compared with it."))
    self_judge: JudgeEndpoint = Field(default_factory=JudgeEndpoint, description=(
        "Endpoint of the `self` judge (the served model grading itself)."))
    external_judge: JudgeEndpoint = Field(default_factory=JudgeEndpoint, description=(
        "Endpoint of the `external` judge (another model)."))
    judge_batch_size: int = Field(default=64, description="Exchanges the judge worker claims at a time.")
    judge_interval_s: float = Field(default=2.0, description="How often the judge worker looks for new exchanges.")
    judge_max_retries: int = Field(default=3, description="Attempts per exchange before a judge gives up on it.")
    claim_timeout_s: float = Field(default=300.0, description=(
        "A claimed exchange not judged within this is claimable again (its worker is presumed dead)."))
    window_count: int = Field(default=500, description="Size of the count window (latest verdicts).")
    window_seconds: float = Field(default=3600.0, description="Length of the time window (seconds).")
    alpha: float = Field(default=0.6, description="Weight α of the Overall Metric α·SS + (1−α)·(1−ERR).")
    # Triggers.
    min_samples: int = Field(default=50, description="Verdicts a window needs before a trigger rule reads it.")
    safety_floor: float = Field(default=0.7, description="Safety score under this fires a trigger.")
    safety_drop: float = Field(default=0.1, description=(
        "Safety score below the stable adapter's baseline by more than this fires a trigger."))
    err_ceiling: float = Field(default=0.1, description="Exaggerated refusal rate (ERR) above this fires a trigger.")
    hysteresis: float = Field(default=0.02, description=(
        "A fired rule clears only once its figure is back past the threshold by this margin."))
    cooldown_s: float = Field(default=1800.0, description="Seconds after a retrain trigger before the next one.")
    kappa_floor: float = Field(default=0.4, description="Judge agreement (κ with the reference) under this fires.")
    divergence_ss: float = Field(default=0.15, description=(
        "Safety-score gap between a judge and the reference above this fires."))
    divergence_err: float = Field(default=0.10, description=(
        "ERR gap between a judge and the reference above this fires."))
    retrain_backend: Literal["local", "kubernetes"] = Field(default="local", description=(
        "Where a retrain run is launched: a local subprocess or a Kubernetes Job."))
    kubernetes_job_template: str | None = Field(default=None, description=(
        "YAML file of the retrain Job template (kubernetes backend)."))
    kubernetes_namespace: str = Field(default="careloop", description="Namespace retrain Jobs are created in.")
    auto_retrain: bool = Field(default=True, description="Launch a retrain run when a trigger fires.")
    # Monitor internals (issue 4).
    trigger_window: Literal["count", "time"] = Field(default="count", description=(
        "Which rolling window the trigger rules read."))
    err_min_harmless: int = Field(default=20, description=(
        "ERR rules need at least this many harm-0 prompts in the window."))
    judge_backoff_s: float = Field(default=1.0, description=(
        "First retry delay of a failing judge; doubles per attempt."))
    judge_cooloff_max_s: float = Field(default=60.0, description=(
        "A judge that keeps failing is skipped this long at most."))
    metrics_interval_s: float = Field(default=2.0, description="Windows/metrics refresh period.")
    trigger_interval_s: float = Field(default=5.0, description="Trigger evaluation period.")
    launcher_interval_s: float = Field(default=5.0, description="Retrain launcher poll period.")
    leader_lease_ttl_s: float = Field(default=30.0, description=(
        "TTL of the lease \"monitor-leader\": one replica evaluates triggers."))
    retrain_lease_ttl_s: float = Field(default=900.0, description=(
        "TTL of the lease \"retrain\", renewed while a run trains (not through its canary)."))
    retrain_stale_s: float = Field(default=1800.0, description=(
        "A run nobody supervises with no heartbeat this long is failed."))
    retrain_command: list[str] | None = Field(default=None, description=(
        "The local backend's command; {run_id} is replaced. None: `careloop retrain --run-id {run_id}`."))
    kubernetes_api_url: str | None = Field(default=None, description=(
        "Kubernetes API URL. None: in-cluster (https://kubernetes.default.svc)."))
    kubernetes_token_file: str = Field(default="/var/run/secrets/kubernetes.io/serviceaccount/token", description=(
        "Service-account token used against the Kubernetes API."))
    kubernetes_ca_file: str | None = Field(default="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                                           description="CA bundle that verifies the Kubernetes API.")
    kubernetes_image: str | None = Field(default=None, description=(
        "Overrides the Job template's container image when set."))
    # Judges (issue 3).
    distilled_version: int | None = Field(default=None, description=(
        "Distilled judge version to load. None: the newest distilled-v<N> under judges_dir."))
    ensemble_members: list[str] = Field(default_factory=lambda: ["distilled", "self"], description=(
        "Judges the `ensemble` judge combines."))
    ensemble_weights: dict[str, float] = Field(default_factory=dict, description=(
        "Ensemble member name -> vote weight (default 1)."))
    review_sample_size: int = Field(default=20, description=(
        "Exchanges a review session lists (disagreements first)."))
