"""The store's tables: traffic, verdicts, triggers, retrain runs, adapters, leases."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Aware UTC now: what every timestamp column holds."""
    return datetime.now(UTC)


class AdapterStatus(StrEnum):
    """Where an adapter stands: candidate → canary → stable → retired, or rolled_back (stored as its value)."""

    CANDIDATE = "candidate"
    CANARY = "canary"
    STABLE = "stable"
    RETIRED = "retired"
    ROLLED_BACK = "rolled_back"


class RunStatus(StrEnum):
    """Where a retrain run stands (stored as its value).

    requested (by an operator) → pending (started) → running (training, under the retrain lease) →
    rolling_out (its candidate in canary, the lease given back) → succeeded | failed | aborted.
    """

    REQUESTED = "requested"
    PENDING = "pending"
    RUNNING = "running"
    ROLLING_OUT = "rolling_out"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"


LIVE_ADAPTER_STATES = (AdapterStatus.STABLE, AdapterStatus.CANARY)  # adapters that take traffic
DEAD_ADAPTER_STATES = (AdapterStatus.ROLLED_BACK, AdapterStatus.RETIRED)  # adapters that must not stay loaded
TRAINING_RUN_STATES = (RunStatus.PENDING, RunStatus.RUNNING)  # started runs that hold the retrain lease
STARTED_RUN_STATES = (*TRAINING_RUN_STATES, RunStatus.ROLLING_OUT)  # runs with a process: one at a time
ACTIVE_RUN_STATES = (RunStatus.REQUESTED, *STARTED_RUN_STATES)  # runs not finished (a request waits behind them)
FINISHED_RUN_STATES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.ABORTED)
RETRAIN_LEASE = "retrain"  # the store lease a run trains under (one training at a time across replicas)
HUMAN = "human"  # the judge name of a person's label (careloop/monitor/review.py), kept by retention


class Exchange(SQLModel, table=True):
    """One request through the gateway and its response (patient identifiers redacted)."""

    __tablename__ = "exchange"
    __table_args__ = (
        Index("ix_exchange_judge_queue", "sampled", "judge_state", "created_at"),
        Index("ix_exchange_target_created", "target", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    public_model: str = Field(default="assistant", max_length=128)
    target: str = Field(max_length=128)  # the vLLM model/adapter name the request went to
    role: str = Field(default="stable", max_length=16)  # stable | canary
    user_key: str | None = Field(default=None, max_length=64)  # hash of the user/session id
    request_messages: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    request_params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    response_text: str | None = Field(default=None, sa_column=Column(Text))
    finish_reason: str | None = Field(default=None, max_length=32)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    status: int = 200
    stream: bool = False
    sampled: bool = False
    # Judging queue: pending → claimed → done (only for sampled rows).
    judge_state: str = Field(default="none", max_length=16)
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_at: datetime | None = None
    # Operations (issue 23): the client's request id and W3C trace id, the client key's name (never the key),
    # and when retention purged the raw text (request messages, parameters, response text).
    request_id: str | None = Field(default=None, max_length=128, index=True)
    trace_id: str | None = Field(default=None, max_length=32)
    key_name: str | None = Field(default=None, max_length=64)
    text_purged_at: datetime | None = None


class Verdict(SQLModel, table=True):
    """One judge's grade of one exchange."""

    __tablename__ = "verdict"
    __table_args__ = (
        Index("ix_verdict_adapter_judge_id", "adapter", "judge", "id"),
        Index("ix_verdict_exchange_judge", "exchange_id", "judge"),
        # the labelled exchanges retention keeps (revision 0007)
        Index("ix_verdict_human_exchange", "exchange_id", sqlite_where=text(f"judge = '{HUMAN}'"),
              postgresql_where=text(f"judge = '{HUMAN}'")),
    )

    id: int | None = Field(default=None, primary_key=True)
    exchange_id: str = Field(foreign_key="exchange.id", max_length=32)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    adapter: str = Field(max_length=128)  # copied from the exchange's target, for per-adapter windows
    judge: str = Field(max_length=64)
    judge_version: str = Field(default="", max_length=64)
    harm_level: int  # 0-3
    response_class: str = Field(max_length=16)  # Accept | Caution | Refuse
    score: float
    rationale: str | None = Field(default=None, sa_column=Column(Text))
    latency_ms: float | None = None


class TriggerEvent(SQLModel, table=True):
    """A rule breach, alert or decision of the monitor, with the window's figures."""

    __tablename__ = "trigger_event"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    rule: str = Field(max_length=64)
    adapter: str | None = Field(default=None, max_length=128)
    judge: str | None = Field(default=None, max_length=64)
    kind: str = Field(max_length=32)  # breach | alert | retrain_started | suppressed | recovered
    decision: str = Field(default="", sa_column=Column(Text))
    figures: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    retrain_run_id: int | None = None


class RetrainRun(SQLModel, table=True):
    """One realignment run: from trigger to registered adapter (or failure)."""

    __tablename__ = "retrain_run"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    status: str = Field(default=RunStatus.PENDING, max_length=16, index=True)  # a RunStatus
    outcome: str | None = Field(default=None, max_length=32)  # promoted|rolled_back|no_gain|failed|...
    trigger_event_id: int | None = None
    backend: str = Field(default="local", max_length=32)
    handle: str | None = Field(default=None, max_length=128)  # pid or Job name
    base_adapter: str | None = Field(default=None, max_length=128)
    adapter_name: str | None = Field(default=None, max_length=128)
    report: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    error: str | None = Field(default=None, sa_column=Column(Text))


class Adapter(SQLModel, table=True):
    """A LoRA adapter version in the registry."""

    __tablename__ = "adapter"

    name: str = Field(primary_key=True, max_length=128)
    base_model: str = Field(max_length=128)
    path: str = Field(sa_column=Column(Text))
    parent: str | None = Field(default=None, max_length=128)
    run_id: int | None = None
    version: int = 0
    data_counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    status: str = Field(default=AdapterStatus.CANDIDATE, max_length=16, index=True)  # an AdapterStatus
    canary_fraction: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    promoted_at: datetime | None = None


class AdapterEvent(SQLModel, table=True):
    """A registry decision (canary step, promote, rollback) with its figures and who made it."""

    __tablename__ = "adapter_event"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    adapter: str = Field(max_length=128)
    action: str = Field(max_length=32)  # register|canary|step|promote|rollback|await_approval|retire
    actor: str = Field(default="auto", max_length=64)  # auto | operator
    figures: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    reason: str = Field(default="", sa_column=Column(Text))


class Lease(SQLModel, table=True):
    """A named lock with an expiry, held in the store so it holds across processes and replicas."""

    __tablename__ = "lease"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    acquired_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


# --- Operations (issue 23): client keys and the shared rate-limit windows. ---


class ClientKey(SQLModel, table=True):
    """A client application's API key: only the sha256 of the secret is stored, never the key."""

    __tablename__ = "client_key"

    name: str = Field(primary_key=True, max_length=64)
    key_hash: str = Field(max_length=64, unique=True)  # sha256 hex of the whole key
    prefix: str = Field(max_length=16)  # the key's first characters, to recognise it in a list
    rpm: int | None = None  # requests per minute (None: unlimited)
    tpm: int | None = None  # tokens (prompt + completion) per minute (None: unlimited)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class RateWindow(SQLModel, table=True):
    """Quota claimed so far by all gateway replicas for one key in one rate window (shared through the store)."""

    __tablename__ = "rate_window"

    key_name: str = Field(primary_key=True, max_length=64)
    window_start: int = Field(primary_key=True)  # epoch seconds at the window's start
    requests: int = 0
    tokens: int = 0

# ---------------------------------------------------------------------------------------------------------------
# The oversight console (issue 20): people and their sessions, the audit trail, the review sample and its labels.


class ConsoleUser(SQLModel, table=True):
    """A person who may sign in to the console, with one role (reviewer < approver < admin)."""

    __tablename__ = "console_user"

    name: str = Field(primary_key=True, max_length=64)
    role: str = Field(max_length=16)  # reviewer | approver | admin
    password_hash: str = Field(max_length=255)  # argon2id, never the password
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ConsoleSession(SQLModel, table=True):
    """A signed-in browser: the cookie carries a random token, the store only its SHA-256."""

    __tablename__ = "console_session"

    id: str = Field(primary_key=True, max_length=64)  # sha256 hex of the cookie's token
    user: str = Field(max_length=64, index=True)
    csrf: str = Field(max_length=64)  # the token every state change must echo
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)


class AuditEntry(SQLModel, table=True):
    """Who did what to what, when and why (labels, approvals, promotions, rollbacks, judge and user changes)."""

    __tablename__ = "audit_entry"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(max_length=64, index=True)
    role: str = Field(default="", max_length=16)
    action: str = Field(max_length=32, index=True)
    target: str = Field(default="", max_length=128)
    reason: str = Field(default="", sa_column=Column(Text))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class ReviewSample(SQLModel, table=True):
    """An exchange drawn for people to label and why: disagreement | uncertain (targeted) or random (unbiased)."""

    __tablename__ = "review_sample"

    exchange_id: str = Field(primary_key=True, foreign_key="exchange.id", max_length=32)
    kind: str = Field(max_length=16, index=True)
    drawn_at: datetime = Field(default_factory=utcnow)
    double: bool = False  # a second person labels it too (agreement between people)


class ReviewLabel(SQLModel, table=True):
    """One person's label of one exchange (the first also becomes the `human` verdict)."""

    __tablename__ = "review_label"
    __table_args__ = (UniqueConstraint("exchange_id", "reviewer", name="uq_review_label_exchange_reviewer"),)

    id: int | None = Field(default=None, primary_key=True)
    exchange_id: str = Field(foreign_key="exchange.id", max_length=32, index=True)
    reviewer: str = Field(max_length=64)
    kind: str = Field(default="other", max_length=16)  # the sample it was drawn in (or `other`)
    harm_level: int
    response_class: str = Field(max_length=16)
    note: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow, index=True)
