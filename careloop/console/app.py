"""The console's web app (Starlette, pages rendered on the server with Jinja2's autoescaping, a little vanilla
JS for the keyboard): sign-in, review queue, adapters, judges, loop timeline, audit trail.

Every POST needs the session's CSRF token (a form field `csrf` or the `X-CSRF-Token` header) and the role the
action needs; the admin bearer token (`CARELOOP_ADMIN_TOKEN`) stands for an admin, without cookie or CSRF.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from careloop.console import agreement, evidence, sampling, timeline
from careloop.console.auth import (
    COOKIE,
    LoginLimiter,
    Principal,
    create_session,
    csrf_ok,
    end_session,
    session_principal,
)
from careloop.console.users import User, authenticate
from careloop.console.web import Denied, SecurityHeaders, json_refusal, local_path, read_form, wants_json
from careloop.core import audit_trail, registry
from careloop.core.admin_auth import bearer_ok
from careloop.core.audit_trail import Actor
from careloop.core.schema import LIVE_ADAPTER_STATES, AdapterStatus
from careloop.core.settings import Settings
from careloop.monitor.review import ReviewError

HERE = Path(__file__).resolve().parent
LOGIN_COOKIE = "careloop_login"  # double-submit token of the sign-in form (login CSRF)
HARM_LABELS = {0: "harmless", 1: "low", 2: "moderate", 3: "severe"}


class Console:
    """One console: settings, store, templates and the sign-in rate limiter; its methods are the routes."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.cfg = settings.console
        self.engine = engine
        self.limiter = LoginLimiter(self.cfg.login_max_failures, self.cfg.login_window_s)
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True))
        self.env.globals.update(harm_labels=HARM_LABELS, verdict_confidence=sampling.verdict_confidence)

    # ------------------------------------------------------------------------------------------ plumbing
    def principal(self, request: Request) -> Principal | None:
        """Who sent the request: the bearer token, a live session cookie, or nobody."""
        auth = request.headers.get("authorization", "")
        if auth:
            if bearer_ok(auth, self.settings.admin_token):
                return Principal(User(audit_trail.TOKEN_ACTOR, "admin", False), None)
            raise Denied(401, "wrong admin bearer token", "unauthorized")
        token = request.cookies.get(COOKIE)
        return session_principal(self.engine, token) if token else None

    def render(self, template: str, who: Principal | None, status: int = 200, **ctx: Any) -> HTMLResponse:
        """A page from templates/, with the signed-in user and CSRF token in its context."""
        html = self.env.get_template(template).render(who=who, csrf=who.csrf if who else None,
                                                      grafana_url=self.cfg.grafana_url, **ctx)
        return HTMLResponse(html, status_code=status)

    def error(self, request: Request, who: Principal | None, exc: Denied) -> Response:
        """A refusal: JSON (OpenAI-style error body) for the bearer token or JSON callers, else a page."""
        if wants_json(request, who is not None and who.csrf is None):
            return json_refusal(exc)
        return self.render("error.html", who, exc.status, code=exc.status, message=exc.message)

    def allowed(self, request: Request, form: dict[str, str], role: str) -> Principal:
        """The principal of a state change after its checks: signed in (401), CSRF token (403), role (403)."""
        who = self.principal(request)
        if who is None:
            raise Denied(401, "sign in first", "unauthorized")
        if who.csrf is not None and not csrf_ok(who.csrf, form.get("csrf") or request.headers.get("x-csrf-token")):
            raise Denied(403, "missing or wrong CSRF token: reload the page and try again", "csrf")
        if not who.user.can(role):
            raise Denied(403, f"this needs the {role} role (you are {who.user.role})", "forbidden")
        return who

    def audit(self, who: Principal, action: str, target: str, reason: str = "", **details: Any) -> None:
        """Record an action in the audit trail."""
        audit_trail.record(self.engine, Actor(who.name, who.user.role), action, target, reason, details)

    def page(self, role: str, fn: Callable[[Request, Principal], Response]) -> Callable[[Request], Awaitable[Response]]:
        """A GET route for signed-in users holding `role` (others go to the sign-in page)."""

        async def endpoint(request: Request) -> Response:
            def run() -> Response:
                who = None
                try:
                    who = self.principal(request)
                    if who is None:
                        return RedirectResponse("/login?" + urlencode({"next": request.url.path}), 303)
                    if not who.user.can(role):
                        raise Denied(403, f"this page needs the {role} role", "forbidden")
                    return fn(request, who)
                except Denied as exc:
                    return self.error(request, who, exc)

            return await asyncio.to_thread(run)

        return endpoint

    def action(self, role: str, fn: Callable[[Request, Principal, dict[str, str]], Response]
               ) -> Callable[[Request], Awaitable[Response]]:
        """A POST route: form read, then sign-in, CSRF and role checked before `fn` runs."""

        async def endpoint(request: Request) -> Response:
            who = None
            try:
                form = await read_form(request)

                def run() -> Response:
                    nonlocal who
                    who = self.allowed(request, form, role)
                    return fn(request, who, form)

                return await asyncio.to_thread(run)
            except Denied as exc:
                return self.error(request, who, exc)

        return endpoint

    def done(self, who: Principal, location: str, body: dict[str, Any]) -> Response:
        """After a state change: JSON for the bearer token, a redirect (303) for the browser."""
        if who.csrf is None:
            return JSONResponse(body)
        return RedirectResponse(location, 303)

    # ------------------------------------------------------------------------------------------ sign-in
    async def login_page(self, request: Request) -> Response:
        """The sign-in form (sets the double-submit cookie its POST must match)."""
        token = secrets.token_urlsafe(24)
        resp = self.render("login.html", None, login_token=token, next=local_path(request.query_params.get("next")),
                           message=None)
        resp.set_cookie(LOGIN_COOKIE, token, max_age=1800, httponly=True, samesite="strict",
                        secure=self.cfg.cookie_secure, path="/login")
        return resp

    async def login(self, request: Request) -> Response:
        """Check the password (rate-limited per client address and per name) and start a session."""
        try:
            form = await read_form(request)
        except Denied as exc:
            return self.error(request, None, exc)
        expected = request.cookies.get(LOGIN_COOKIE)
        if not csrf_ok(expected, form.get("login_token")):
            return self.error(request, None, Denied(403, "the sign-in form expired: reload it", "csrf"))
        name = form.get("name", "").strip()[:64]
        keys = (f"ip:{request.client.host if request.client else '?'}", f"name:{name.lower()}")
        wait = self.limiter.retry_after(*keys)
        nxt = local_path(form.get("next"))
        if wait > 0:
            resp = self.render("login.html", None, 429, login_token=expected, next=nxt,
                               message=f"too many failed sign-ins: try again in {wait:.0f} s")
            resp.headers["retry-after"] = str(int(wait) + 1)
            return resp
        user = await asyncio.to_thread(authenticate, self.engine, name, form.get("password", ""))
        if user is None:
            self.limiter.failed(*keys)
            return self.render("login.html", None, 401, login_token=expected, next=nxt,
                               message="wrong name or password (or the account is disabled)")
        self.limiter.succeeded(*keys)
        token, _ = await asyncio.to_thread(create_session, self.engine, user, self.cfg.session_ttl_s)
        await asyncio.to_thread(audit_trail.record, self.engine, Actor(user.name, user.role), "login", user.name)
        done = RedirectResponse(nxt, 303)
        done.set_cookie(COOKIE, token, max_age=int(self.cfg.session_ttl_s), httponly=True, samesite="strict",
                        secure=self.cfg.cookie_secure, path="/")
        done.delete_cookie(LOGIN_COOKIE, path="/login")
        return done

    def logout(self, request: Request, who: Principal, form: dict[str, str]) -> Response:
        """End the session."""
        if who.token:
            end_session(self.engine, who.token)
            self.audit(who, "logout", who.name)
        out = RedirectResponse("/login", 303)
        out.delete_cookie(COOKIE, path="/")
        return out

    # ------------------------------------------------------------------------------------------ review
    def review(self, request: Request, who: Principal) -> Response:
        """The next exchange to label, with the judges' verdicts and the keyboard's keys."""
        skip = frozenset(s for s in request.query_params.get("skip", "").split(",") if s)
        if "exchange" in request.query_params:  # one exchange by id (to look again, or correct a label)
            entry = sampling.entry_for(self.engine, request.query_params["exchange"])
            if entry is None:
                raise Denied(404, "no such exchange", "not_found")
        else:
            entry = sampling.next_for(self.engine, self.cfg, self.settings.monitor.reference_judge, who.name, skip)
        return self.render("review.html", who, entry=entry, skip=",".join(sorted(skip)),
                           counts=sampling.sample_counts(self.engine),
                           people=agreement.people_agreement(self.engine), can_label=who.user.can("reviewer"))

    def post_label(self, request: Request, who: Principal, form: dict[str, str]) -> Response:
        """Store a label (the first also as the `human` verdict) and show the next exchange."""
        eid = form.get("exchange_id", "")
        try:
            row = sampling.label(self.engine, who.name, eid, form.get("harm_level"), form.get("response_class"),
                                 form.get("note"))
        except ReviewError as exc:
            raise Denied(404 if str(exc).startswith("no exchange") else 400, str(exc), "invalid_label") from None
        self.audit(who, "label", eid, row.note or "", harm_level=row.harm_level, response_class=row.response_class,
                   kind=row.kind)
        skip = form.get("skip", "")
        return self.done(who, "/review" + (f"?{urlencode({'skip': skip})}" if skip else ""),
                         {"exchange_id": eid, "reviewer": who.name, "harm_level": row.harm_level,
                          "response_class": row.response_class, "kind": row.kind})

    # ------------------------------------------------------------------------------------------ adapters
    def adapters(self, request: Request, who: Principal) -> Response:
        """The registry as a lineage tree, with the live adapters and those waiting for approval."""
        rows = registry.list_adapters(self.engine)
        children: dict[str | None, list[Any]] = {}
        names = {a.name for a in rows}
        for a in sorted(rows, key=lambda a: (a.version, a.created_at)):
            children.setdefault(a.parent if a.parent in names else None, []).append(a)
        waiting = {a.name for a in rows
                   if evidence.awaiting_approval(registry.adapter_events(self.engine, a.name, 20), a.status)}
        live = {a.status: a for a in rows if a.status in LIVE_ADAPTER_STATES}
        return self.render("adapters.html", who, children=children, waiting=waiting, count=len(rows),
                           stable=live.get(AdapterStatus.STABLE), canary=live.get(AdapterStatus.CANARY),
                           base_model=self.settings.base_model)

    def adapter(self, request: Request, who: Principal) -> Response:
        """One adapter's evidence and the actions on it."""
        ev = evidence.evidence(self.engine, request.path_params["name"])
        if ev is None:
            raise Denied(404, f"no adapter named {request.path_params['name']!r}", "adapter_not_found")
        live = {a.status: a for a in registry.list_adapters(self.engine) if a.status in LIVE_ADAPTER_STATES}
        return self.render("adapter.html", who, ev=ev, can_approve=who.user.can("approver"),
                           stable=live.get(AdapterStatus.STABLE), canary=live.get(AdapterStatus.CANARY))

    def _reason(self, form: dict[str, str]) -> str:
        reason = form.get("reason", "").strip()
        if not reason:
            raise Denied(400, "say why (a reason is required)", "missing_reason")
        return reason[:2000]

    def _registry_call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (registry.RegistryError, evidence.ActionError) as exc:
            raise Denied(404 if str(exc).startswith("no adapter named") else 409, str(exc), "conflict") from None

    def approve(self, request: Request, who: Principal, form: dict[str, str]) -> Response:
        """Promote a canary waiting for approval."""
        name, reason = request.path_params["name"], self._reason(form)
        self._registry_call(lambda: evidence.approve(self.engine, name, who.name, reason))
        self.audit(who, "approve", name, reason)
        return self.done(who, f"/adapters/{name}", {"approved": name})

    def reject(self, request: Request, who: Principal, form: dict[str, str]) -> Response:
        """Roll back the canary instead of promoting it."""
        name, reason = request.path_params["name"], self._reason(form)
        self._registry_call(lambda: evidence.reject(self.engine, name, who.name, reason))
        self.audit(who, "reject", name, reason)
        return self.done(who, f"/adapters/{name}", {"rejected": name})

    def promote(self, request: Request, who: Principal, form: dict[str, str]) -> Response:
        """Make an adapter stable (confirmed by typing its name)."""
        name, reason = request.path_params["name"], self._reason(form)
        if form.get("confirm", "").strip() != name:
            raise Denied(400, f"type the adapter's name ({name}) to confirm", "not_confirmed")
        self._registry_call(lambda: registry.promote(self.engine, name, actor=who.name, reason=reason))
        self.audit(who, "promote", name, reason)
        return self.done(who, f"/adapters/{name}", {"promoted": name})

    def rollback(self, request: Request, who: Principal, form: dict[str, str]) -> Response:
        """Roll back the live canary, or with none the stable adapter (confirmed by typing its name)."""
        reason = self._reason(form)
        live = {a.status: a.name for a in registry.list_adapters(self.engine) if a.status in LIVE_ADAPTER_STATES}
        target = live.get(AdapterStatus.CANARY) or live.get(AdapterStatus.STABLE)
        if target is None:
            raise Denied(409, "nothing to roll back: the base model serves", "conflict")
        if form.get("confirm", "").strip() != target:
            raise Denied(400, f"type the name of the adapter to roll back ({target}) to confirm", "not_confirmed")
        name = self._registry_call(lambda: registry.rollback(self.engine, actor=who.name, reason=reason))
        self.audit(who, "rollback", name or target, reason)
        return self.done(who, f"/adapters/{name or target}", {"rolled_back": name})

    # ------------------------------------------------------------------------------------------ judges, timeline, audit
    def judges(self, request: Request, who: Principal) -> Response:
        """κ of every judge against the human labels, confusion matrices, bias; κ between people."""
        kinds = agreement.label_kinds(self.engine)
        reports = [r for j in agreement.judges_with_verdicts(self.engine)
                   if (r := agreement.judge_agreement(self.engine, j, kinds)) is not None]
        from careloop.console import recalibrate

        return self.render("judges.html", who, reports=reports, people=agreement.people_agreement(self.engine),
                           counts=sampling.sample_counts(self.engine),
                           reference=self.settings.monitor.reference_judge,
                           recal=recalibrate.latest(self.settings), can_approve=who.user.can("approver"),
                           max_loss=recalibrate.MAX_XSTEST_LOSS)

    def recalibrate(self, request: Request, who: Principal, form: dict[str, str]) -> Response:
        """Start training a new distilled version with the human labels (a child process)."""
        from careloop.console import recalibrate

        try:
            out = recalibrate.start(self.settings, who.name)
        except recalibrate.RecalibrationError as exc:
            raise Denied(409, str(exc), "conflict") from None
        self.audit(who, "recalibrate", "distilled", form.get("reason", ""), dir=out.name)
        return self.done(who, "/judges#recalibration", {"started": out.name})

    def accept_recalibration(self, request: Request, who: Principal, form: dict[str, str]) -> Response:
        """Make the recalibrated version the reference judge (only if it won)."""
        from careloop.console import recalibrate

        try:
            version = recalibrate.accept(self.settings, who.name)
        except recalibrate.RecalibrationError as exc:
            raise Denied(409, str(exc), "conflict") from None
        self.audit(who, "judge_switch", f"distilled-v{version}", self._reason(form))
        return self.done(who, "/judges#recalibration", {"reference": f"distilled-v{version}"})

    def timeline_page(self, request: Request, who: Principal) -> Response:
        """The loop's events in order and the SS/ERR plot."""
        try:
            hours = min(24 * 90.0, max(1.0, float(request.query_params.get("hours", "72"))))
        except ValueError:
            hours = 72.0
        judge = self.settings.monitor.reference_judge
        series = timeline.metric_series(self.engine, judge, hours=hours, alpha=self.settings.monitor.alpha)
        return self.render("timeline.html", who, events=timeline.timeline(self.engine), plot=timeline.svg_plot(series),
                           judge=judge, hours=hours)

    def audit_page(self, request: Request, who: Principal) -> Response:
        """The audit trail, newest first, filterable by person and action."""
        q = request.query_params
        before = q.get("before")
        rows = audit_trail.entries(self.engine, limit=100, actor=q.get("actor") or None,
                                   action=q.get("action") or None,
                                   before_id=int(before) if before and before.isdigit() else None)
        if who.csrf is None:
            return JSONResponse({"object": "list", "data": [
                {"id": r.id, "created_at": r.created_at.isoformat(), "actor": r.actor, "role": r.role,
                 "action": r.action, "target": r.target, "reason": r.reason, "details": r.details} for r in rows]})
        return self.render("audit.html", who, rows=rows, actions=audit_trail.ACTIONS, actor=q.get("actor", ""),
                           action=q.get("action", ""))

    async def healthz(self, request: Request) -> Response:
        """Liveness: the store answers."""
        from sqlalchemy import text

        def ping() -> None:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            await asyncio.to_thread(ping)
        except Exception:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def home(self, request: Request) -> Response:
        """/ goes to the review queue."""
        return RedirectResponse("/review", 303)


def create_app(settings: Settings, engine: Engine) -> ASGIApp:
    """The console's ASGI app on the store behind `engine`."""
    c = Console(settings, engine)
    routes = [
        Route("/", c.home), Route("/healthz", c.healthz),
        Route("/login", c.login_page, methods=["GET"]), Route("/login", c.login, methods=["POST"]),
        Route("/logout", c.action("reviewer", c.logout), methods=["POST"]),
        Route("/review", c.page("reviewer", c.review)),
        Route("/review/label", c.action("reviewer", c.post_label), methods=["POST"]),
        Route("/adapters", c.page("reviewer", c.adapters)),
        Route("/adapters/{name}", c.page("reviewer", c.adapter)),
        Route("/adapters/{name}/approve", c.action("approver", c.approve), methods=["POST"]),
        Route("/adapters/{name}/reject", c.action("approver", c.reject), methods=["POST"]),
        Route("/adapters/{name}/promote", c.action("approver", c.promote), methods=["POST"]),
        Route("/rollback", c.action("approver", c.rollback), methods=["POST"]),
        Route("/judges", c.page("reviewer", c.judges)),
        Route("/judges/recalibrate", c.action("approver", c.recalibrate), methods=["POST"]),
        Route("/judges/recalibrate/accept", c.action("approver", c.accept_recalibration), methods=["POST"]),
        Route("/timeline", c.page("reviewer", c.timeline_page)),
        Route("/audit", c.page("reviewer", c.audit_page)),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return SecurityHeaders(Starlette(routes=routes))
