"""The oversight console's settings."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
