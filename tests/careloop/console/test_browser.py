"""The console in a real headless browser (Debian's chromium + chromedriver, Selenium) against a real
`careloop console` process: sign in, label 50 exchanges with the keyboard only (key presses counted), an XSS
reply shown as text, a state change without CSRF token refused, a reviewer unable to approve, an approver
approving a candidate and rolling it back. One browser and one server for the whole module.

Screenshots of every page land in $CARELOOP_CONSOLE_SCREENSHOTS (docs/console/ when refreshing the docs) or a
temporary folder.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from careloop.console import sampling
from careloop.console.users import add_user
from careloop.core import registry
from careloop.core.audit_trail import entries
from careloop.core.migrations import upgrade
from careloop.core.schema import Exchange, ReviewSample, TriggerEvent, Verdict, utcnow
from careloop.core.store import make_engine, session_scope
from careloop.monitor.scoring import safety_score
from careloop.stack import wait_http
from tests.careloop.console.conftest import PASSWORD, XSS_REPLY, seed_registry, seed_traffic
from tests.conftest import free_port

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (scripts/setup.sh --dev)")

from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ITEMS = 50


def seed_history(engine: Engine, adapters: tuple[str, ...]) -> None:
    """Three days of judged (not sampled) traffic per adapter, so the timeline's plot has lines to draw."""
    now = utcnow()
    with session_scope(engine) as s:
        s.add(TriggerEvent(rule="safety_floor", kind="breach", adapter=adapters[0], retrain_run_id=1,
                           decision="Safety Score 0.61 < floor 0.70 over 500 verdicts", created_at=now -
                           timedelta(hours=30)))
        for a_i, adapter in enumerate(adapters):
            for h in range(0, 72, 3):
                for k in range(6):
                    eid = f"h{a_i}{h:02d}{k}"
                    at = now - timedelta(hours=72 - h, minutes=k)
                    harm = k % 3
                    cls = "Refuse" if (k + h // 3 + a_i) % 4 == 0 or (harm and a_i) else "Accept"
                    s.add(Exchange(id=eid, target=adapter, created_at=at, sampled=False,
                                   request_messages=[{"role": "user", "content": "q"}], response_text="r"))
                    s.add(Verdict(exchange_id=eid, adapter=adapter, judge="distilled", harm_level=harm,
                                  response_class=cls, score=safety_score(harm, cls), created_at=at))


@dataclass
class Console:
    """The running console, its store and where screenshots go."""

    url: str
    engine: Engine
    shots: Path
    adapters: tuple[str, str]
    keys: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """A real `careloop console` process on a seeded SQLite store."""
    home = tmp_path_factory.mktemp("console-home")
    url_db = f"sqlite:///{home / 'careloop.db'}"
    upgrade(url_db)
    engine = make_engine(url_db)
    seed_traffic(engine, 70)
    for name, role in {"rita": "reviewer", "rob": "reviewer", "anna": "approver"}.items():
        add_user(engine, name, role, PASSWORD)
    adapters = seed_registry(engine)
    seed_history(engine, ("smollm2-135m", adapters[0]))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")}
    env.update(CARELOOP_HOME=str(home), CARELOOP_DATABASE_URL=url_db, CARELOOP_CONSOLE__PORT=str(port),
               CARELOOP_CONSOLE__SECOND_REVIEW_SHARE="0.3", CARELOOP_CONSOLE__GRAFANA_URL="http://127.0.0.1:3000/d/careloop")
    log = (home / "console.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "careloop.cli", "console"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    shots = Path(os.environ.get("CARELOOP_CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", None, 60)
        yield Console(url, engine, shots, adapters)
    finally:
        proc.terminate()
        proc.wait(20)
        engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the module."""
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def press(console: Console, browser: WebDriver, *keys: str) -> None:
    """Press keys on the page (not into any element), counting each."""
    for key in keys:
        ActionChains(browser).send_keys(key).perform()
        console.keys["total"] = console.keys.get("total", 0) + 1


def wait(browser: WebDriver, condition: object, timeout: float = 10) -> object:
    """Wait for a Selenium expected condition."""
    return WebDriverWait(browser, timeout).until(condition)  # type: ignore[arg-type]


def replaced(element: object) -> object:
    """A condition: the element has left the page. Like `staleness_of`, but Chromium 156's driver sometimes
    says so with "Node with given id does not belong to the document" instead of a stale-element error."""
    def check(_: WebDriver) -> bool:
        try:
            element.is_enabled()  # type: ignore[attr-defined]
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" not in str(exc):
                raise
            return True
        return False
    return check


def shot(console: Console, browser: WebDriver, name: str) -> None:
    """Save a screenshot of the whole page (through the DevTools protocol: beyond the window's height)."""
    width, height = browser.execute_script("return [document.documentElement.scrollWidth, "
                                           "document.documentElement.scrollHeight]")
    data = browser.execute_cdp_cmd("Page.captureScreenshot", {  # type: ignore[attr-defined]
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": min(height, 2400), "scale": 1}})
    (console.shots / f"{name}.png").write_bytes(base64.b64decode(data["data"]))


def sign_in(console: Console, browser: WebDriver, name: str) -> None:
    """Sign in with the keyboard: name, Tab, password, Enter."""
    browser.delete_all_cookies()
    browser.get(console.url + "/login")
    field_ = wait(browser, ec.presence_of_element_located((By.ID, "name")))
    field_.send_keys(name, Keys.TAB)  # type: ignore[attr-defined]
    browser.switch_to.active_element.send_keys(PASSWORD, Keys.ENTER)
    wait(browser, ec.url_contains("/review"))


def test_sign_in_with_a_hardened_cookie(console: Console, browser: WebDriver) -> None:
    browser.get(console.url + "/review")
    wait(browser, ec.url_contains("/login"))
    shot(console, browser, "login")
    sign_in(console, browser, "rita")
    cookie = browser.get_cookie("careloop_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie").find("careloop_session") < 0  # not readable by JS


def test_xss_reply_renders_as_text(console: Console, browser: WebDriver) -> None:
    browser.get(console.url + "/review?exchange=x0001")
    reply = wait(browser, ec.presence_of_element_located((By.ID, "reply")))
    assert reply.text == XSS_REPLY  # type: ignore[attr-defined]
    assert not reply.find_elements(By.TAG_NAME, "img") and not reply.find_elements(By.TAG_NAME, "b")  # type: ignore[attr-defined]
    assert browser.title != "pwned" and "pwned" not in browser.title
    assert browser.find_elements(By.CSS_SELECTOR, "#item script") == []


def test_label_fifty_items_with_the_keyboard_only(console: Console, browser: WebDriver) -> None:
    browser.get(console.url + "/review")
    shot(console, browser, "review")
    classes = {"a": "Accept", "c": "Caution", "r": "Refuse"}
    labelled: dict[str, tuple[int, str]] = {}
    console.keys["total"] = 0
    t0 = time.monotonic()
    for n in range(ITEMS):
        item = wait(browser, ec.presence_of_element_located((By.ID, "item")))
        eid = item.get_attribute("data-exchange")  # type: ignore[attr-defined]
        level, key = n % 4, "acr"[n % 3]
        press(console, browser, str(level), key, Keys.ENTER)
        wait(browser, replaced(item))
        labelled[eid] = (level, classes[key])
    seconds = time.monotonic() - t0
    per_item = console.keys["total"] / ITEMS
    # The figure (target: under 5 minutes) is printed and recorded in docs/console.md, not asserted on.
    print(f"\nlabelled {ITEMS} items in {seconds:.1f} s with {per_item:.1f} key presses each")
    assert per_item == 3
    assert len(labelled) == ITEMS
    with Session(console.engine) as s:
        human = {v.exchange_id: (v.harm_level, v.response_class, v.judge_version)
                 for v in s.exec(select(Verdict).where(Verdict.judge == "human")).all()}
        kinds = {r.exchange_id: r.kind for r in s.exec(select(ReviewSample)).all()}
    assert all(human[e] == (lv, c, "rita") for e, (lv, c) in labelled.items())
    seen = [kinds[e] for e in labelled]
    assert "disagreement" in seen and "random" in seen
    assert len([e for e in entries(console.engine, actor="rita", action="label", limit=500)]) == ITEMS


def test_a_missing_csrf_token_is_refused(console: Console, browser: WebDriver) -> None:
    browser.get(console.url + "/review")
    item = wait(browser, ec.presence_of_element_located((By.ID, "item")))
    eid = item.get_attribute("data-exchange")  # type: ignore[attr-defined]
    status = browser.execute_script(
        "const body = new URLSearchParams({exchange_id: arguments[0], harm_level: '0', response_class: 'Accept'});"
        "return fetch('/review/label', {method: 'POST', body, redirect: 'manual'}).then(r => r.status);", eid)
    assert status == 403
    # The form itself without its token: the browser gets the 403 page, nothing is stored.
    browser.execute_script("document.querySelector('#label-form input[name=csrf]').remove()")
    press(console, browser, "1", "c", Keys.ENTER)
    message = wait(browser, ec.presence_of_element_located((By.ID, "error-message")))
    assert "CSRF" in message.text  # type: ignore[attr-defined]
    with Session(console.engine) as s:
        assert s.exec(select(Verdict).where(Verdict.exchange_id == eid, Verdict.judge == "human")).first() is None


def test_a_reviewer_cannot_approve(console: Console, browser: WebDriver) -> None:
    v2 = console.adapters[1]
    browser.get(console.url + f"/adapters/{v2}")
    wait(browser, ec.presence_of_element_located((By.ID, "no-approve")))
    assert not browser.find_elements(By.ID, "approve")
    csrf = browser.execute_script("return document.querySelector('input[name=csrf]').value")
    status = browser.execute_script(
        "return fetch(arguments[0], {method: 'POST', redirect: 'manual', headers: {'X-CSRF-Token': arguments[1]},"
        " body: new URLSearchParams({reason: 'me too'})}).then(r => r.status);", f"/adapters/{v2}/approve", csrf)
    assert status == 403
    assert registry.get_adapter(console.engine, v2).status == "canary"  # type: ignore[union-attr]


def test_an_approver_approves_then_rolls_back(console: Console, browser: WebDriver) -> None:
    v1, v2 = console.adapters
    sign_in(console, browser, "anna")
    press(console, browser, "g", "a")
    wait(browser, ec.url_contains("/adapters"))
    shot(console, browser, "adapters")
    browser.get(console.url + f"/adapters/{v2}")
    wait(browser, ec.presence_of_element_located((By.ID, "approve")))
    shot(console, browser, "adapter-approval")
    press(console, browser, "y")  # focuses the approval's reason
    browser.switch_to.active_element.send_keys("canary clean over 70 verdicts; evidence read", Keys.ENTER)
    wait(browser, ec.text_to_be_present_in_element((By.ID, "adapter-status"), "stable"))
    assert registry.get_adapter(console.engine, v2).status == "stable"  # type: ignore[union-attr]
    press(console, browser, "b")  # roll back: reason, Tab, the adapter's name to confirm, Enter
    browser.switch_to.active_element.send_keys("clinicians report curt refusals", Keys.TAB)
    browser.switch_to.active_element.send_keys(v2, Keys.ENTER)
    wait(browser, ec.text_to_be_present_in_element((By.ID, "adapter-status"), "rolled_back"))
    assert registry.get_adapter(console.engine, v1).status == "stable"  # type: ignore[union-attr]
    trail = [(e.actor, e.action, e.target) for e in entries(console.engine, actor="anna")]
    assert trail[:2] == [("anna", "rollback", v2), ("anna", "approve", v2)]
    press(console, browser, "g", "l")
    wait(browser, ec.url_contains("/audit"))
    assert "clinicians report curt refusals" in browser.find_element(By.ID, "audit").text
    shot(console, browser, "audit")


def test_judges_and_timeline_pages(console: Console, browser: WebDriver) -> None:
    # A second reviewer labels the items drawn for two people (through the same code the console uses).
    with Session(console.engine) as s:
        double = [r.exchange_id for r in s.exec(select(ReviewSample).where(ReviewSample.double)).all()]
        human = {v.exchange_id: v for v in s.exec(select(Verdict).where(Verdict.judge == "human")).all()}
    for i, eid in enumerate(e for e in double if e in human):
        v = human[eid]
        sampling.label(console.engine, "rob", eid, v.harm_level, v.response_class if i % 4 else "Caution")
    press(console, browser, "g", "j")
    wait(browser, ec.url_contains("/judges"))
    assert browser.find_element(By.ID, "judge-distilled") and browser.find_element(By.ID, "judge-self")
    shot(console, browser, "judges")
    press(console, browser, "g", "t")
    wait(browser, ec.url_contains("/timeline"))
    assert browser.find_elements(By.CSS_SELECTOR, "#plot svg polyline")
    assert browser.find_element(By.ID, "grafana").get_attribute("href") == "http://127.0.0.1:3000/d/careloop"
    shot(console, browser, "timeline")
    press(console, browser, "?")
    assert browser.find_element(By.ID, "help").is_displayed()
