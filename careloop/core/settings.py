"""The one settings object: environment variables `CARELOOP_*`, an optional YAML file, CLI overrides."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


class GatewaySettings(BaseModel):
    """The serving gateway."""

    host: str = Field(default="127.0.0.1", description="Bind address of the gateway.")
    port: int = Field(default=8080, description="Port of the gateway.")
    max_body_bytes: int = Field(default=1 << 20, description="Largest request body accepted; 413 past it.")
    connect_timeout_s: float = Field(default=5.0, description="Timeout for connecting to vLLM.")
    read_timeout_s: float = Field(default=300.0, description=(
        "Timeout for reading from vLLM: per chunk for streams, the whole body otherwise."))
    pool_size: int = Field(default=256, description="Most open connections to the vLLM replicas.")
    log_queue_size: int = Field(default=20_000, description=(
        "Exchanges queued for the store at most; past half of it requests are slowed, when full they are dropped "
        "(left in the write-ahead log)."))
    log_batch_size: int = Field(default=500, description="Exchanges written to the store per transaction.")
    log_flush_interval_s: float = Field(default=0.2, description="How often the traffic log writes a batch.")
    routes_refresh_s: float = Field(default=2.0, description=(
        "How often the gateway re-reads the registry and reconciles the adapters loaded in vLLM."))
    canary_fraction: float = Field(default=0.1, description=(
        "Share of users (sticky by user/session id) routed to the canary adapter while one is live."))
    gil_switch_interval_s: float = Field(default=0.001, description=(
        "sys.setswitchinterval of the gateway process: how soon the event loop gets the GIL back from the "
        "traffic-log writer thread (Python's default is 0.005 s)."))
    durable_log: bool = Field(default=True, description=(
        "Append each exchange to the encrypted write-ahead log before its response ends, so a killed gateway "
        "loses no answered exchange (the next start replays it)."))
    # Hostile input (careloop/gateway/limits.py).
    max_request_line_bytes: int = Field(default=8192, description="Longest request line (method, URL); 414 past it.")
    max_header_count: int = Field(default=100, description="Most request headers; 431 past it.")
    max_header_bytes: int = Field(default=32768, description="Most bytes of request headers in all; 431 past it.")
    header_timeout_s: float = Field(default=10.0, description=(
        "A client must send its whole request line and headers within this; else 408 and the connection closes."))
    body_timeout_s: float = Field(default=30.0, description=(
        "A client must send its whole body within this after its headers; else 408 and the connection closes."))
    max_n: int = Field(default=1, description="Largest `n` (choices per request) forwarded; more is a 400.")
    max_logprobs: int = Field(default=5, description="Largest `top_logprobs` forwarded; more is a 400.")
    model_max_tokens: int = Field(default=8192, description=(
        "The served model's context length: `max_tokens`/`max_completion_tokens` above it are clamped to it."))
    allow_template_kwargs: bool = Field(default=False, description=(
        "Forward `chat_template`, `chat_template_kwargs` and similar vLLM template fields (stripped otherwise)."))


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
        "TTL of the lease \"retrain\", renewed while a run is alive."))
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


class RetrainSettings(BaseModel):
    """KTO→DPO realignment, checkpoint selection, canary analysis."""

    max_cycles: int = Field(default=5, description="KTO→DPO cycles per run at most.")
    # Recipe: docs/recipe.md.
    kto_learning_rate: float = Field(default=3e-4, description="KTO learning rate (KTO carries the gain).")
    dpo_learning_rate: float = Field(default=2e-5, description=(
        "DPO learning rate (about 10x lower than KTO, on prompt-tied pairs only; docs/recipe.md)."))
    lora_r: int = Field(default=16, description="LoRA rank.")
    lora_alpha: int = Field(default=32, description="LoRA alpha (scaling).")
    lora_dropout: float = Field(default=0.05, description="LoRA dropout.")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules the LoRA adapter wraps.",
    )
    batch_size: int = Field(default=8, description="Training batch size.")
    max_length: int = Field(default=128, description=(
        "Prompt + completion tokens; completions are cut to max_completion_words."))
    max_prompt_length: int = Field(default=192, description="Longest prompt in tokens.")
    seed_mix: int = Field(default=200, description="Vendored examples mixed into each KTO set.")
    max_traffic_examples: int = Field(default=1000, description="Judged traffic exchanges a run trains on at most.")
    validation_size: int = Field(default=60, description="Validation prompts each checkpoint is evaluated on.")
    validation_max_tokens: int = Field(default=96, description="Reply length in tokens during validation.")
    err_reject: float = Field(default=0.5, description="Reject a checkpoint whose validation ERR is above this.")
    register_confidence: float = Field(default=0.9, description=(
        "A checkpoint is registered only when a paired bootstrap over the validation prompts gives it at least "
        "this probability of a higher Overall than the model serving now (careloop/retrain/stats.py)."))
    dpo_min_ratio: float = Field(default=0.3, description=(
        "From cycle 2: a DPO set under this share of the KTO set is \"DPO dataset collapse\"."))
    dpo_min_pairs: int = Field(default=8, description="Fewer pairs than this: no DPO in any cycle.")
    flat_cycles: int = Field(default=3, description="Stop after this many cycles without a gain.")
    flat_epsilon: float = Field(default=0.005, description="Overall gain below this counts as no gain.")
    alphas_report: list[float] = Field(default_factory=lambda: [0.4, 0.6, 0.8], description=(
        "α values the run report gives the Overall Metric at."))
    # Canary analysis.
    canary_steps: list[float] = Field(default_factory=lambda: [0.1, 0.5, 1.0], description=(
        "Traffic shares the canary is stepped through."))
    canary_min_verdicts: int = Field(default=30, description="Canary verdicts needed per step before a decision.")
    # The canary's sequential tests (careloop/retrain/stats.py): a canary worse than stable by these margins is caught.
    canary_overall_margin: float = Field(default=0.10, description=(
        "Overall Metric margin (α·SS + (1−α)·(1−ERR)) by which a worse canary is caught."))
    canary_err_margin: float = Field(default=0.10, description=(
        "ERR above stable's by more than this rolls back (a refusal spike)."))
    canary_alpha: float = Field(default=0.05, description=(
        "Chance of rolling back a canary that is no worse than stable."))
    canary_beta: float = Field(default=0.05, description="Chance of promoting a canary worse by a margin.")
    canary_max_verdicts: int = Field(default=240, description=(
        "The test's last look: a canary not shown no worse by then is rolled back."))
    canary_stable_verdicts: int = Field(default=600, description=(
        "Stable's latest verdicts the canary is compared with."))
    require_approval: bool = Field(default=False, description="A person must approve before a canary is promoted.")
    accelerate_config: str | None = Field(default=None, description="FSDP / DeepSpeed config for multi-GPU jobs.")
    kto_beta: float = Field(default=0.1, description="KTO beta.")
    dpo_beta: float = Field(default=0.1, description="DPO beta.")
    warmup_fraction: float = Field(default=0.1, description="Learning-rate warmup, as a share of one epoch's steps.")
    seed: int = Field(default=0, description="Random seed of training and sampling.")
    torch_threads: int = Field(default=1, description=(
        "CPU threads for training (0: torch's default, all cores); set 0 on a dedicated training node "
        "(docs/recipe.md)."))
    force_cpu: bool = Field(default=False, description="Train on the CPU even when a GPU is visible.")
    dpo_enabled: bool = Field(default=True, description="Run the DPO stage after KTO.")
    seed_harmful: int = Field(default=64, description=(
        "Seed harmful prompts per run (safe reply desirable, own failed reply undesirable)."))
    seed_benign: int = Field(default=32, description="Seed benign questions per run (own helpful answer desirable).")
    seed_borderline: int = Field(default=100, description=(
        "Risky-sounding benign prompts per run (answer desirable, refusal undesirable)."))
    max_completion_words: int = Field(default=40, description=(
        "Completions are cut to whole sentences within this many words."))
    max_completion_tokens: int = Field(default=80, description=(
        "Reply length when generating policy replies and DPO alternatives."))
    max_dpo_candidates: int = Field(default=200, description=(
        "Failed traffic replies sent for a verified alternative per cycle."))
    max_seed_dpo_pairs: int = Field(default=64, description="DPO pairs drawn from the seed set per cycle at most.")
    max_dpo_pairs: int = Field(default=64, description=(
        "DPO pairs per cycle at most (verified traffic alternatives first)."))
    max_degenerate: float = Field(default=0.1, description=(
        "Reject a checkpoint whose validation replies loop more often than this…"))
    max_degenerate_increase: float = Field(default=0.05, description=(
        "…or, where the base already loops more, more than this above the base."))
    heartbeat_s: float = Field(default=15.0, description="How often a run records its heartbeat.")
    canary_max_error_rate: float = Field(default=0.02, description=(
        "Canary 5xx share above stable's by more than this rolls back."))
    canary_early_verdicts: int = Field(default=10, description=(
        "No judgement-based canary decision before this many verdicts."))
    canary_poll_s: float = Field(default=5.0, description="How often the canary analysis re-reads the verdicts.")
    canary_timeout_s: float = Field(default=1800.0, description="No canary decision by then: roll back.")


class DemoSettings(BaseModel):
    """`careloop demo`: how much traffic to replay and how long to let the loop run."""

    traffic: int = Field(default=240, description=(
        "Prompts replayed before the trigger (repeated in rounds until it fires)."))
    canary_traffic: int = Field(default=400, description="Prompts replayed at most while the canary is analysed.")
    concurrency: int = Field(default=8, description="Replay requests in flight.")
    max_tokens: int = Field(default=96, description="Reply length of replayed requests.")
    sample_rate: float = Field(default=1.0, description="Share judged; 1: every exchange, so the window fills fast.")
    min_samples: int = Field(default=60, description="The monitor's min_samples during the demo.")
    cycles: int = Field(default=2, description="Retrain cycles of the demo's run.")
    eval_harmful: int = Field(default=60, description="Held-out harmful prompts evaluated before and after.")
    eval_benign: int = Field(default=60, description="Held-out benign prompts evaluated before and after.")
    eval_xstest_safe: int = Field(default=100, description="Held-out XSTest safe prompts evaluated before and after.")
    timeout_s: float = Field(default=5400.0, description=(
        "Give up after this (the run is measured to fit in an hour; the wall time is reported)."))


# --- Operations (issue 23): failover, client keys and rate limits, retention, tracing. ---


class FailoverSettings(BaseModel):
    """Retrying on another vLLM replica and the per-replica circuit breaker."""

    breaker_failures: int = Field(default=3, ge=1, description=(
        "Consecutive failures (connection refused/reset before a response, or a 503) that open a replica's "
        "circuit breaker; an open replica gets no requests."))
    breaker_open_s: float = Field(default=5.0, gt=0, description=(
        "How long a breaker stays open before one request (or the routes refresh reaching the replica) "
        "probes it half-open; success closes it, failure opens it again."))


class KeySettings(BaseModel):
    """Client API keys on `/v1/*` and their per-key rate limits."""

    require: Literal["auto", "on", "off"] = Field(default="auto", description=(
        "Whether `/v1/*` needs `Authorization: Bearer <client key>`. auto: off only when the gateway is "
        "bound to a loopback address, on otherwise."))
    refresh_s: float = Field(default=5.0, gt=0, description=(
        "How often each gateway re-reads the keys from the store (creation and revocation reach every "
        "replica within this); an unknown key also triggers a re-read, at most once a second."))
    window_s: int = Field(default=60, ge=1, description=(
        "Length of the fixed rate-limit window in seconds; a key's rpm/tpm are scaled to it."))
    claim_fraction: float = Field(default=0.02, gt=0, le=1, description=(
        "Share of a key's per-window quota a gateway claims from the store at a time; with N replicas at "
        "most N claims go unused, so limits hold within N x this share."))


class RetentionSettings(BaseModel):
    """How long the store keeps what (the monitor's purge job)."""

    enabled: bool = Field(default=True, description="Run the scheduled purge in the monitor.")
    raw_text_days: float | None = Field(default=30.0, description=(
        "Days the raw exchange text (redacted request messages, parameters, response text) is kept; after "
        "that it is blanked and the row keeps only its metadata. None: forever."))
    exchange_days: float | None = Field(default=365.0, description=(
        "Days exchange rows and their verdicts are kept (verdicts feed windows and audits). None: forever."))
    audit_days: float | None = Field(default=None, description=(
        "Days trigger events, adapter events and retrain runs are kept. None (default): never purged."))
    keep_labelled: bool = Field(default=True, description=(
        "Keep human-labelled exchanges (and their verdicts) whatever their age: they calibrate the judges."))
    batch_size: int = Field(default=2000, ge=1, description="Rows deleted or blanked per transaction.")
    pause_s: float = Field(default=0.05, ge=0, description="Pause between batches, so inserts are not held up.")
    interval_s: float = Field(default=3600.0, gt=0, description="How often the monitor runs the purge.")


class TelemetrySettings(BaseModel):
    """OpenTelemetry spans (gateway → vLLM, judge verdicts, monitor jobs, retrain runs)."""

    otlp_endpoint: str | None = Field(default=None, description=(
        "OTLP/HTTP endpoint (e.g. http://otel-collector:4318) spans are exported to; None: no spans, and "
        "OpenTelemetry is never imported."))


class Settings(BaseSettings):
    """Everything careloop can be told. `CARELOOP_<FIELD>`; nested as `CARELOOP_MONITOR__ALPHA`."""

    model_config = SettingsConfigDict(
        env_prefix="CARELOOP_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    home: Path = Field(default_factory=lambda: Path("~/.careloop").expanduser(), description=(
        "Where careloop keeps its data: store, models, adapters, runs, reports, secrets."))
    config_file: Path | None = Field(default=None, description="YAML settings file (read from CARELOOP_CONFIG_FILE).")
    upstream: str = Field(default="http://127.0.0.1:8000", description="Base URL of the vLLM server.")
    upstream_replicas: list[str] = Field(default_factory=list, description=(
        "Every vLLM replica the gateway balances over and loads adapters into; empty means [upstream]."))
    upstream_api_key: str | None = Field(default=None, description="Bearer key vLLM expects, if any.")
    database_url: str | None = Field(default=None, description=(
        "The store (SQLAlchemy URL: SQLite or PostgreSQL). None: sqlite:///<home>/careloop.db."))
    admin_token: str | None = Field(default=None, description=(
        "Bearer token of the admin API (trimmed; at least 16 characters). Unset: the admin API is off."))
    user_key_secret_file: Path | None = Field(default=None, description=(
        "The HMAC secret that keys stored user keys (made on first start, 0600). None: <home>/secrets/user-key."))
    wal_key_file: Path | None = Field(default=None, description=(
        "The key that encrypts the write-ahead log (made on first start, 0600; mount a Kubernetes Secret here to "
        "keep it off the data volume). None: <home>/secrets/wal.key."))
    public_model: str = Field(default="assistant", description="The model name clients ask for.")
    base_model: str = Field(default="smollm2-135m", description="The name vLLM serves the base weights under.")
    base_model_path: Path | None = Field(default=None, description=(
        "Where the base weights live (a cluster mounts them from the shared volume). None: the embedded model."))
    sample_rate: float = Field(default=0.1, ge=0.0, le=1.0, description="Share of stable traffic sent to the judges.")
    canary_sample_rate: float = Field(default=0.5, ge=0.0, le=1.0, description=(
        "Share of canary traffic sent to the judges."))
    data_dir: Path = Field(default=REPO_ROOT / "data", description="The vendored data sets and seed set.")
    vllm_port: int = Field(default=8000, description="Port of the vLLM server `careloop up` starts.")
    vllm_kv_cache_gb: int = Field(default=2, description="vLLM's KV cache size on the CPU (GiB).")
    vllm_dtype: Literal["auto", "bfloat16", "float32"] = Field(default="auto", description=(
        "auto: bfloat16 where the CPU multiplies it natively (AVX-512 BF16, AMX, Arm BF16), else float32."))
    vllm_extra_args: list[str] = Field(default_factory=list, description="Extra arguments for `vllm serve`.")
    gateway: GatewaySettings = Field(default_factory=GatewaySettings, description="The serving gateway.")
    monitor: MonitorSettings = Field(default_factory=MonitorSettings, description=(
        "Judging, rolling metrics, divergence and triggers."))
    retrain: RetrainSettings = Field(default_factory=RetrainSettings, description=(
        "KTO→DPO realignment, checkpoint selection, canary analysis."))
    demo: DemoSettings = Field(default_factory=DemoSettings, description="`careloop demo`: traffic and time limits.")
    # Operations (issue 23).
    failover: FailoverSettings = Field(default_factory=FailoverSettings,
                                       description="Retry on another replica; per-replica circuit breaker.")
    keys: KeySettings = Field(default_factory=KeySettings, description="Client API keys and rate limits.")
    retention: RetentionSettings = Field(default_factory=RetentionSettings,
                                         description="How long exchanges, verdicts and audit records are kept.")
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings,
                                         description="OpenTelemetry export (off unless an endpoint is set).")
    # The oversight console (issue 20); its class is at the end of this file.
    console: ConsoleSettings = Field(default_factory=lambda: ConsoleSettings(),
                                     description="The oversight console: people, review, approvals.")

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: str | None) -> str | None:
        return check_admin_token(value)

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        self.home = self.home.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'careloop.db'}"
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = os.environ.get("CARELOOP_CONFIG_FILE")
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    @property
    def upstreams(self) -> list[str]:
        """The vLLM base URLs to serve from (no trailing slash)."""
        return [u.rstrip("/") for u in (self.upstream_replicas or [self.upstream])]

    # Paths inside the data dir.
    @property
    def models_dir(self) -> Path:
        """Where prepared base models live."""
        return self.home / "models"

    @property
    def base_model_dir(self) -> Path:
        """The served base model's directory."""
        return self.base_model_path or self.models_dir / "SmolLM2-135M-Instruct"

    @property
    def adapters_dir(self) -> Path:
        """Where trained LoRA adapters are kept."""
        return self.home / "adapters"

    @property
    def runs_dir(self) -> Path:
        """Where retraining runs keep their logs, checkpoints and reports."""
        return self.home / "runs"

    @property
    def reports_dir(self) -> Path:
        """Where demo and audit reports land."""
        return self.home / "reports"

    @property
    def spool_dir(self) -> Path:
        """Where the gateway spools traffic while the store is down (and keeps its last registry view)."""
        return self.home / "spool"

    @property
    def wal_dir(self) -> Path:
        """The gateway's write-ahead log (one folder per process)."""
        return self.home / "wal"

    @property
    def quarantine_dir(self) -> Path:
        """Exchange rows the store refused and files that could not be replayed."""
        return self.home / "quarantine"

    @property
    def secrets_dir(self) -> Path:
        """Secrets the service makes for itself (0700)."""
        return self.home / "secrets"

    @property
    def judges_dir(self) -> Path:
        """Where distilled-judge artefacts are kept."""
        return self.home / "judges"

    def ensure_dirs(self) -> None:
        """Create the data dir and its subfolders."""
        for path in (self.home, self.models_dir, self.adapters_dir, self.runs_dir, self.reports_dir,
                     self.spool_dir, self.judges_dir):
            path.mkdir(parents=True, exist_ok=True)


MIN_ADMIN_TOKEN = 16


def check_admin_token(value: str | None) -> str | None:
    """The admin token trimmed; None when unset; a clear error when it is too short to be a secret."""
    if value is None:
        return None
    token = value.strip()
    if not token:
        return None
    if len(token) < MIN_ADMIN_TOKEN:
        raise ValueError(f"CARELOOP_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters (got {len(token)}); "
                         "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and YAML file), with explicit overrides on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


# ---------------------------------------------------------------------------------------------------------------
# The oversight console (issue 20).


class ConsoleSettings(BaseModel):
    """The oversight console: where it listens, sessions, login rate limit, the review sample."""

    enabled: bool = Field(default=True, description="`careloop up` also starts the console.")
    host: str = Field(default="127.0.0.1", description="Bind address of `careloop console`.")
    port: int = Field(default=9470, description="Port of `careloop console`.")
    session_ttl_s: float = Field(default=8 * 3600.0, gt=0, description="A sign-in lasts this long (seconds).")
    cookie_secure: bool = Field(default=True, description=(
        "Mark the session cookie Secure (browsers still send it to http://127.0.0.1 and localhost; set false "
        "only behind plain HTTP on another host name)."))
    login_max_failures: int = Field(default=5, ge=1, description=(
        "Failed sign-ins per client address or per name within login_window_s before further tries get 429."))
    login_window_s: float = Field(default=300.0, gt=0, description="The login rate limit's window (seconds).")
    password_min_length: int = Field(default=10, ge=8, description="Shortest password `careloop users` accepts.")
    review_batch: int = Field(default=20, ge=1, description="Exchanges drawn into the review sample at a time.")
    review_random_share: float = Field(default=0.25, ge=0.0, le=1.0, description=(
        "Share of each draw taken at random (an unbiased sample for κ); the rest are judge disagreements, "
        "then the reference judge's least confident verdicts."))
    review_uncertain_below: float = Field(default=0.7, ge=0.0, le=1.0, description=(
        "A verdict whose class probability is under this counts as not confident (judges that state one)."))
    second_review_share: float = Field(default=0.2, ge=0.0, le=1.0, description=(
        "Share of drawn exchanges a second person labels too (agreement between people, κ)."))
    review_scan: int = Field(default=5000, ge=1, description="Newest sampled exchanges the draw looks at.")
    grafana_url: str | None = Field(default=None, description="Link to the Grafana dashboard on the timeline page.")


Settings.model_rebuild()
