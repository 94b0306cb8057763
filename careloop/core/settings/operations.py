"""Operations settings: retention of stored data and OpenTelemetry export."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
