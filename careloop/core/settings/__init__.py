"""The one settings object: environment variables `CARELOOP_*`, an optional YAML file, CLI overrides.

Each part's settings live in a module of their own (gateway, monitor, retrain, operations, console); `Settings`
gathers them, and `careloop config show` prints every field with its default, variable and description.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from careloop.core.settings.console import ConsoleSettings
from careloop.core.settings.gateway import FailoverSettings, GatewaySettings, KeySettings
from careloop.core.settings.monitor import JudgeEndpoint, MonitorSettings
from careloop.core.settings.operations import RetentionSettings, TelemetrySettings
from careloop.core.settings.retrain import DemoSettings, RetrainSettings

__all__ = [
    "REPO_ROOT", "ConsoleSettings", "DemoSettings", "FailoverSettings", "GatewaySettings", "JudgeEndpoint",
    "KeySettings", "MonitorSettings", "RetentionSettings", "RetrainSettings", "Settings", "TelemetrySettings",
    "check_admin_token", "load_settings",
]

REPO_ROOT = Path(__file__).resolve().parents[3]


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
    vllm_managed: bool = Field(default=True, description=(
        "`careloop up` / `demo` start vLLM themselves on vllm_port; false: they use the vLLM already serving at "
        "`upstream` (a GPU node, a server shared by tests) and start the rest."))
    vllm_kv_cache_gb: int = Field(default=2, description="vLLM's KV cache size on the CPU (GiB).")
    vllm_dtype: Literal["auto", "bfloat16", "float32"] = Field(default="auto", description=(
        "auto: bfloat16 where the CPU multiplies it natively (AVX-512 BF16, AMX, Arm BF16), else float32."))
    vllm_cpu_bind: str = Field(default="auto", description=(
        "Cores vLLM's CPU engine computes on (its VLLM_CPU_OMP_THREADS_BIND, which wins when set). auto: every core "
        "this process may use on a machine of up to 4 (vLLM's own rule reserves one core for its API server, half "
        "of a 2-core machine), vLLM's own rule above that; all: every core; vllm: vLLM's own rule; nobind; or a "
        "list such as 0-3."))
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
    console: ConsoleSettings = Field(default_factory=ConsoleSettings,
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
