"""The gateway's settings: limits, failover across replicas, client keys."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


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
    row_processes: int = Field(default=1, ge=0, le=64, description=(
        "Child processes that build the traffic log's rows (parse, redact), so that redaction does not hold the "
        "event loop's GIL; each takes a share of every batch. 0 builds them in the writer thread."))
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


class FailoverSettings(BaseModel):
    """Retrying on another vLLM replica and the per-replica circuit breaker."""

    breaker_failures: int = Field(default=3, ge=1, description=(
        "Consecutive failures (connection reset before a response, or a 503) that open a replica's circuit "
        "breaker; a refused connection opens it at once; an open replica gets no requests."))
    breaker_open_s: float = Field(default=5.0, gt=0, description=(
        "How long a breaker stays open before one request (or the routes refresh reaching the replica) "
        "probes it half-open; success closes it, failure opens it again."))
    health_interval_s: float = Field(default=0.25, ge=0, description=(
        "With two or more replicas: how often the gateway asks each one whose breaker is closed for `/health` "
        "(0: never). One that refuses, or does not answer within `health_timeout_s`, has its breaker opened at "
        "once, so a replica that dies is left before requests find it dead."))
    health_timeout_s: float = Field(default=0.5, gt=0, description=(
        "How long a replica may take to answer a health probe (the periodic one, or the one after a dropped "
        "connection) before it counts as gone."))


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
