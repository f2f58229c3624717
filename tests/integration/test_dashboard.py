"""The dashboard in a real browser (Playwright driving Debian's chromium) on a real fleet.

One fleet of 8 agents under the standard approval policy serves every test
here, in order: the fleet page, self-approval refused, a viewer refused, a
forged request refused, a drifted tile appearing live, and last the kill
switch, which halts the fleet for good.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from knightwatch.client import ApiClient, ServerTarget
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import wait_until
from tests.integration.conftest import SETTLE_S, Releases, add_user, approvals_fleet

playwright = pytest.importorskip("playwright.sync_api")
Browser = playwright.Browser
Page = playwright.Page
expect = playwright.expect

NODES = 8
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = os.environ.get("KNIGHTWATCH_SCREENSHOTS")
"""A directory to keep the screenshots in (the README's come from here); else the test's own."""
WAIT_MS = 30_000  # generous: the machine is shared; the timings are printed, not asserted


class People:
    """The fleet's users and their tokens: admin, olivia (operator), alan and amira
    (approvers), vera (viewer)."""

    def __init__(self, fleet: LocalFleet) -> None:
        self.fleet = fleet
        self.token = {
            "admin": fleet.token,
            "olivia": add_user(fleet, "olivia", "operator"),
            "alan": add_user(fleet, "alan", "approver"),
            "amira": add_user(fleet, "amira", "approver"),
            "vera": add_user(fleet, "vera", "viewer"),
        }

        self._clients: dict[str, ApiClient] = {}

    def api(self, who: str) -> ApiClient:
        """An API client acting as ``who``."""
        if who not in self._clients:
            ca = str(self.fleet.ca) if self.fleet.ca else None
            target = ServerTarget(self.fleet.url, self.token[who], ca)
            self._clients[who] = ApiClient(target, timeout=120.0)
        return self._clients[who]

    def close(self) -> None:
        """Close every client."""
        for client in self._clients.values():
            client.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[LocalFleet]:
    """Eight nodes under the standard approval policy."""
    with approvals_fleet(tmp_path_factory.mktemp("dashboard"), releases, nodes=NODES) as local:
        yield local


@pytest.fixture(scope="module")
def people(fleet: LocalFleet, releases: Releases) -> Iterator[People]:
    """The users, with the fleet converged on v1 through an approved change."""
    crew = People(fleet)
    try:
        carry_out(crew, propose_deploy(crew, "olivia", releases.v1.release_id))
        fleet.wait_state("CONVERGED", timeout=SETTLE_S)
        yield crew
    finally:
        crew.close()


def propose_deploy(crew: People, who: str, release: str) -> dict[str, Any]:
    """A deploy of ``release`` proposed by ``who`` (pending: the policy wants approvals)."""
    answer = crew.api(who).post("/deployments", {"release": release})
    assert answer.get("pending") is True, answer
    return dict(answer["change"])


def carry_out(crew: People, change: dict[str, Any]) -> None:
    """Approve (alan, amira), tick (olivia) and execute ``change``; wait for its deployment."""
    number = change["id"]
    for approver in ("alan", "amira")[: change["approvals_needed"]]:
        crew.api(approver).post(f"/changes/{number}/approve", {})
    for item in change["checklist"]:
        crew.api("olivia").post(f"/changes/{number}/tick", {"item": item["item"]})
    done = crew.api("olivia").post(f"/changes/{number}/execute", {})
    deployment = done.get("deployment_id") or done.get("id")
    if deployment is not None and isinstance(deployment, int):
        crew.fleet.wait_deployment(deployment, timeout=180)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright."""
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where this test's screenshots go."""
    directory = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def signed_in(browser: Any, fleet: LocalFleet, token: str, path: str = "/ui/fleet") -> Any:
    """A new browser context signed in with ``token``, on ``path``."""
    context = browser.new_context(
        base_url=fleet.url, ignore_https_errors=True, viewport={"width": 1400, "height": 1000}
    )
    page = context.new_page()
    page.goto(f"/ui/login?next={path}")
    page.get_by_label("User token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}")
    return page


def post_from_page(page: Any, url: str, body: dict[str, Any], csrf: str | None) -> dict[str, Any]:
    """A request made by script in the page, as a forged or hostile one would be."""
    headers = {"Content-Type": "application/json"}
    if csrf is not None:
        headers["X-CSRF-Token"] = csrf
    result: dict[str, Any] = page.evaluate(
        """async ([url, body, headers]) => {
            const r = await fetch(url, {method: "POST", headers, body: JSON.stringify(body),
                                        credentials: "same-origin"});
            return {status: r.status, body: await r.json()};
        }""",
        [url, body, headers],
    )
    return result


# -- tests, in order ------------------------------------------------------------------------


def test_without_a_session_every_page_asks_for_a_sign_in_and_a_wrong_token_is_refused(
    browser: Any, fleet: LocalFleet, people: People
) -> None:
    """No cookie, no page; a wrong token gets a clear message and no session."""
    context = browser.new_context(base_url=fleet.url, ignore_https_errors=True)
    page = context.new_page()
    page.goto("/ui/alerts")
    assert "/ui/login" in page.url
    page.get_by_label("User token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("token")
    assert not [c for c in context.cookies() if c["name"] == "kw_session"]
    context.close()


def test_the_fleet_page_shows_every_node_on_one_release(
    browser: Any, fleet: LocalFleet, people: People, releases: Releases, shots: Path
) -> None:
    """8 tiles, each on v1, the banner CONVERGED; the session cookie is HttpOnly and Strict."""
    page = signed_in(browser, fleet, people.token["olivia"])
    tiles = page.locator("#live .tile")
    expect(tiles).to_have_count(NODES, timeout=WAIT_MS)
    expect(page.locator(".fleet-state")).to_contain_text("CONVERGED")
    for i in range(NODES):
        expect(tiles.nth(i)).to_contain_text(releases.v1.release_id)
        expect(tiles.nth(i)).to_have_attribute("data-tile", "ok")
    cookie = next(c for c in page.context.cookies() if c["name"] == "kw_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["secure"] == fleet.url.startswith("https://")
    expect(page.get_by_role("button", name="HALT FLEET")).to_be_visible()
    page.screenshot(path=str(shots / "dashboard-fleet.png"), full_page=True)
    page.context.close()


def test_the_approval_page_refuses_self_approval(
    browser: Any, fleet: LocalFleet, people: People, releases: Releases
) -> None:
    """alan proposes; his own Approve is refused with the API's reason; amira rejects it."""
    change = propose_deploy(people, "alan", releases.v2.release_id)
    number = change["id"]
    page = signed_in(browser, fleet, people.token["alan"], "/ui/changes")
    page.get_by_role("button", name=f"Approve #{number}").click()
    expect(page.locator("#notice")).to_contain_text("approve", timeout=WAIT_MS)
    expect(page.locator("#notice")).to_have_class("notice error")
    assert people.api("admin").get(f"/changes/{number}")["state"] == "PROPOSED"
    assert people.api("admin").get(f"/changes/{number}")["approvals"] == []
    page.context.close()

    ticker = signed_in(browser, fleet, people.token["olivia"], "/ui/changes")
    article = ticker.locator(f'[data-change="{number}"]')
    first_item = change["checklist"][0]["item"]
    article.get_by_role("button", name="Tick").first.click()
    expect(article).to_contain_text(f"{first_item} — ticked by olivia", timeout=WAIT_MS)
    ticker.context.close()

    other = signed_in(browser, fleet, people.token["amira"], "/ui/changes")
    other.on("dialog", lambda dialog: dialog.accept("not today: this is a test"))
    other.get_by_role("button", name=f"Reject #{number}").click()
    expect(other.locator("#notice")).to_contain_text("rejected", timeout=WAIT_MS)
    article = other.locator(f'[data-change="{number}"]')
    expect(article).to_contain_text("REJECTED", timeout=WAIT_MS)  # live, without a reload
    other.context.close()


def test_a_viewer_has_no_buttons_and_the_server_refuses_their_requests(
    browser: Any, fleet: LocalFleet, people: People
) -> None:
    """No kill switch, no approve or acknowledge; a forged POST from the session is 403."""
    page = signed_in(browser, fleet, people.token["vera"])
    expect(page.locator("#live .tile")).to_have_count(NODES, timeout=WAIT_MS)
    assert page.get_by_role("button", name="HALT FLEET").count() == 0
    page.goto("/ui/changes")
    assert page.locator("button[data-action]").count() == 0
    csrf = page.locator('meta[name="kw-csrf"]').get_attribute("content")
    forged = post_from_page(page, "/api/v1/halts", {"reason": "a viewer tries"}, csrf)
    assert forged["status"] == 403, forged
    assert "viewer" in forged["body"]["error"]
    assert people.api("admin").get("/halts") == []
    page.context.close()


def test_a_request_without_the_csrf_token_is_refused(
    browser: Any, fleet: LocalFleet, people: People
) -> None:
    """An operator's session, but no (or a wrong) CSRF token: 403, and nothing halts."""
    page = signed_in(browser, fleet, people.token["olivia"])
    for csrf in (None, "wrong-token"):
        forged = post_from_page(page, "/api/v1/halts", {"reason": "forged"}, csrf)
        assert forged["status"] == 403, forged
        assert "CSRF" in forged["body"]["error"]
    assert people.api("admin").get("/halts") == []
    page.context.close()


def http_client(fleet: LocalFleet) -> httpx.Client:
    """A plain HTTP client for the fleet's server (no browser: requests as a script sends them)."""
    trust = ssl.create_default_context(cafile=str(fleet.ca)) if fleet.ca else True
    return httpx.Client(base_url=fleet.url, verify=trust, timeout=60)


def http_sign_in(client: httpx.Client, token: str, next_page: str = "/ui/fleet") -> httpx.Response:
    """Sign in as the form does: its nonce from the page and the cookie, then the token."""
    form = client.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce is not None, form.text
    return client.post(
        "/ui/login", data={"nonce": nonce.group(1), "token": token, "next": next_page}
    )


def csrf_of(client: httpx.Client, page: str = "/ui/fleet") -> str:
    """The CSRF token a signed-in page carries."""
    found = re.search(r'name="kw-csrf" content="([^"]+)"', client.get(page).text)
    assert found is not None
    return found.group(1)


def test_a_login_without_the_forms_nonce_is_refused_and_next_never_leaves_the_dashboard(
    fleet: LocalFleet, people: People
) -> None:
    """Login CSRF: no nonce cookie, no session. An open redirect: ``next`` stays on /ui/."""
    with http_client(fleet) as client:
        forged = client.post("/ui/login", data={"nonce": "x", "token": people.token["olivia"]})
        assert forged.status_code == 400 and "kw_session" not in forged.cookies
        for target in ("https://evil.example/", "//evil.example/ui/", "/api/v1/halts"):
            answer = http_sign_in(client, people.token["olivia"], target)
            assert answer.status_code == 303
            assert answer.headers["location"] == "/ui/fleet", target


def test_pages_load_nothing_from_elsewhere_and_cannot_be_framed(
    fleet: LocalFleet, people: People
) -> None:
    """Every page: a strict CSP, no frames, no external URL in its markup, no store of it."""
    with http_client(fleet) as client:
        http_sign_in(client, people.token["vera"])
        for name in ("fleet", "deployments", "changes", "flags", "alerts", "audit", "halts"):
            page = client.get(f"/ui/{name}")
            assert page.status_code == 200, name
            policy = page.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
            assert page.headers["x-frame-options"] == "DENY"
            assert page.headers["cache-control"] == "no-store"
            assert not re.search(r'(src|href)="(https?:)?//', page.text), name
        missing = client.get("/ui/no-such-page")
        assert missing.status_code == 404 and "/ui/fleet" in missing.text


def test_the_live_stream_sends_the_page_and_signing_out_ends_the_session_everywhere(
    fleet: LocalFleet, people: People
) -> None:
    """The SSE stream opens with the fragment; after sign-out the cookie opens nothing."""
    with http_client(fleet) as client:
        http_sign_in(client, people.token["olivia"])
        assert client.get("/api/v1/status").status_code == 200  # the cookie works on the API
        with client.stream("GET", "/ui/fleet/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            text = ""
            for chunk in stream.iter_text():
                text += chunk
                if "data-node=" in text:
                    break
            assert "event: fragment" in text
        csrf = csrf_of(client)
        client.post("/ui/logout", data={"csrf": csrf})
        assert client.get("/api/v1/status").status_code == 401
        assert client.get("/ui/fleet/events").status_code == 401
        assert "/ui/login" in client.get("/ui/fleet").headers["location"]


def test_a_revoked_user_is_signed_out_at_once(fleet: LocalFleet, people: People) -> None:
    """Revoking a user closes their dashboard sessions: the cookie they hold is worthless."""
    token = add_user(fleet, "tessa", "operator")
    with http_client(fleet) as client:
        http_sign_in(client, token)
        assert client.get("/api/v1/status").status_code == 200
        people.api("admin").post("/users/tessa/revoke", {})
        assert client.get("/api/v1/status").status_code == 401
        assert client.get("/ui/fleet").status_code == 303


def test_a_changed_file_turns_its_tile_drifted_without_a_reload(
    browser: Any, fleet: LocalFleet, people: People, releases: Releases
) -> None:
    """A byte changed on node3: its tile says DRIFTED on the open page, which never reloads."""
    page = signed_in(browser, fleet, people.token["olivia"])
    tile = page.locator('#live .tile[data-node="node3"]')
    expect(tile).to_have_attribute("data-tile", "ok", timeout=WAIT_MS)
    page.evaluate("window.__sameDocument = true")
    target = fleet.root("node3") / "releases" / releases.v1.digest / "config" / "routing.toml"
    target.parent.chmod(0o755)
    target.chmod(0o644)
    started = time.monotonic()
    target.write_text(target.read_text() + "\n# edited by hand\n")
    expect(tile).to_have_attribute("data-tile", "drifted", timeout=WAIT_MS)
    seen_after = time.monotonic() - started
    expect(tile).to_contain_text("DRIFTED")  # said in words, not only in colour
    assert page.evaluate("window.__sameDocument") is True
    print(json.dumps({"drifted_tile_after_s": round(seen_after, 3)}))


def test_the_flags_page_lists_every_reason_a_change_would_be_refused_with_its_nodes(
    browser: Any, fleet: LocalFleet, people: People, shots: Path
) -> None:
    """node3 drifted (the test before): a change of rlp.enabled would be refused, node3 named."""
    page = signed_in(browser, fleet, people.token["vera"], "/ui/flags")
    flag = page.get_by_role("article", name="Flag rlp.enabled")
    expect(flag).to_contain_text("would be refused now", timeout=WAIT_MS)
    refusals = flag.locator(".refusals li")
    assert refusals.count() >= 1
    assert "node3" in flag.locator(".refusals").inner_text()
    checked = people.api("vera").post(
        "/check/flag-set", {"flag": "rlp.enabled", "scope": "fleet", "value": True}
    )
    assert refusals.count() == len(checked["refusals"])  # every reason the policy gives
    page.screenshot(path=str(shots / "dashboard-flags.png"), full_page=True)
    page.context.close()


def test_an_operator_acknowledges_the_drift_alert_and_the_row_changes_live(
    browser: Any, fleet: LocalFleet, people: People
) -> None:
    """The drift alert for node3 is firing; Acknowledge turns it ACKNOWLEDGED on the same page."""

    def drift_alert() -> dict[str, Any] | None:
        firing = people.api("admin").get("/alerts?state=firing")
        return next((a for a in firing if a["rule"] == "node-drift" and a["node"] == "node3"), None)

    alert = wait_until(drift_alert, timeout=SETTLE_S, what="node3's drift alert")
    page = signed_in(browser, fleet, people.token["olivia"], "/ui/alerts")
    row = page.locator(f'tr[data-alert="{alert["id"]}"]')
    expect(row).to_contain_text("FIRING", timeout=WAIT_MS)
    page.get_by_role("button", name=f"Acknowledge #{alert['id']}").click()
    expect(row).to_contain_text("ACKNOWLEDGED", timeout=WAIT_MS)
    expect(row).to_contain_text("acknowledged by olivia")
    assert people.api("admin").get(f"/alerts/{alert['id']}")["acknowledged_by"] == "olivia"
    page.context.close()


def test_the_deployments_page_shows_each_nodes_phases_as_a_timeline(
    browser: Any, fleet: LocalFleet, people: People, releases: Releases
) -> None:
    """The deploy that converged the fleet: 8 rows, each ACTIVE, each with its recorded steps."""
    page = signed_in(browser, fleet, people.token["vera"], "/ui/deployments")
    timeline = page.locator("table.timeline tbody tr")
    expect(timeline).to_have_count(NODES, timeout=WAIT_MS)
    for i in range(NODES):
        expect(timeline.nth(i).locator("ol.steps li").first).to_contain_text("+")
    expect(page.locator("table.timeline")).to_contain_text("ACTIVE")
    expect(page.get_by_role("region", name="Recent deployments")).to_contain_text(
        releases.v1.release_id
    )
    page.context.close()


CONTRAST_JS = """
(selectors) => {
  const rgb = (text) => text.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const c = [r, g, b].map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const parts = rgb(getComputedStyle(el).backgroundColor);
      if (parts.length < 4 || parts[3] > 0) return parts.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const out = {};
  for (const selector of selectors) {
    const el = document.querySelector(selector);
    if (!el) { out[selector] = null; continue; }
    const a = lum(rgb(getComputedStyle(el).color).slice(0, 3)), b = lum(background(el));
    out[selector] = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  }
  return out;
}
"""
UNLABELLED_JS = """
() => [...document.querySelectorAll("button, input:not([type=hidden]), select, textarea")]
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label")
                  && !(el.tagName === "BUTTON" && el.textContent.trim()))
  .map((el) => el.outerHTML.slice(0, 120))
"""


def test_the_pages_are_keyboard_usable_labelled_and_readable(
    browser: Any, fleet: LocalFleet, people: People
) -> None:
    """Tab reaches the kill switch and Enter opens it (Escape closes it); every control has
    a name; text meets WCAG AA contrast (4.5:1) on its own background."""
    page = signed_in(browser, fleet, people.token["olivia"])
    expect(page.locator("#live .tile")).to_have_count(NODES, timeout=WAIT_MS)
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "kill":
            break
    assert page.evaluate("document.activeElement.id") == "kill"
    page.keyboard.press("Enter")
    expect(page.locator("#kill-dialog")).to_have_attribute("open", "")
    assert page.evaluate("document.activeElement.id") == "kill-reason"
    page.keyboard.press("Escape")
    expect(page.locator("#kill-dialog")).not_to_have_attribute("open", "")
    assert people.api("admin").get("/halts") == []
    for name in ("fleet", "changes", "flags", "alerts", "audit"):
        page.goto(f"/ui/{name}")
        assert page.evaluate(UNLABELLED_JS) == [], name
    page.goto("/ui/fleet")
    selectors = [
        "body",
        ".muted",
        ".tile .name",
        ".tile dd",
        ".badge",
        "button.kill",
        ".top nav a",
        ".live-state",
        ".fleet-state",
        ".count",
    ]
    ratios = page.evaluate(CONTRAST_JS, selectors)
    low = {k: round(v, 2) for k, v in ratios.items() if v is not None and v < 4.5}
    assert not low, low
    page.context.close()


def test_the_kill_switch_halts_every_agent_and_the_page_shows_each_acknowledgement(
    browser: Any, fleet: LocalFleet, people: People, shots: Path
) -> None:
    """Two steps and a reason; node8's agent is paused, so its row stands out until it acks."""
    page = signed_in(browser, fleet, people.token["olivia"], "/ui/alerts")
    paused = fleet.agent_pid("node8")
    page.get_by_role("button", name="HALT FLEET").click()
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#kill-error")).to_contain_text("reason")  # a reason is required
    page.get_by_label("Reason (recorded in the audit log)").fill("browser test: halt everything")
    page.get_by_role("button", name="Continue").click()
    os.kill(paused, signal.SIGSTOP)
    try:
        started = time.monotonic()
        page.get_by_role("button", name="Yes, halt the fleet").click()
        page.wait_for_url("**/ui/halts?id=*")
        waiting = page.locator('tr[data-node="node8"]')
        expect(waiting).to_have_attribute("data-acked", "no", timeout=WAIT_MS)
        expect(waiting).to_contain_text("NOT ACKNOWLEDGED")
        expect(waiting).to_have_class("waiting")
        others = page.locator('tr[data-acked="yes"]')
        expect(others).to_have_count(NODES - 1, timeout=WAIT_MS)
        seven = time.monotonic() - started
        page.screenshot(path=str(shots / "dashboard-halt-waiting.png"), full_page=True)
    finally:
        os.kill(paused, signal.SIGCONT)
    expect(page.locator('tr[data-acked="yes"]')).to_have_count(NODES, timeout=WAIT_MS)
    expect(page.locator(".fleet-state")).to_contain_text("every node acknowledged")
    page.screenshot(path=str(shots / "dashboard-halt.png"), full_page=True)

    def halted() -> bool:
        nodes = fleet.status()["nodes"]
        return len(nodes) == NODES and all(n["halted"] for n in nodes)

    wait_until(halted, timeout=SETTLE_S, what="every node to report itself halted")
    print(json.dumps({"seven_acks_on_page_after_s": round(seven, 3)}))
    page.context.close()
