"""The browser path in a real browser: Debian's Chromium, headless, driven by Playwright.

The demo page (``serve --demo``) is the legitimate site; a page served from another
loopback address and port is the hostile one. Neither the browser nor the test
downloads anything: ``make test`` installs ``chromium`` with apt and Playwright with pip.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "demo.png"
LAUNCH_ARGS = [
    "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces we may not have
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 860, "height": 560})
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def demo(serve):
    return serve(cookie__enabled=True, cookie__demo=True)


def _log_in_and_echo(context, port: int):
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{port}/demo")
    page.click("#connect")
    page.wait_for_selector("body[data-state=echoed]")
    return page


def test_the_demo_page_logs_in_gets_a_ticket_connects_and_echoes(context, demo):
    page = _log_in_and_echo(context, demo.port)
    assert page.locator("#log li").all_inner_texts() == [
        "Logged in: the site's own auth gave the page a token",
        "Preauth: CSRF token received, ticket cookie set for 30 s",
        'The cookie is HttpOnly: document.cookie shows ""',
        "Upgraded and authenticated as alice: no first message needed",
        "Echo: hello",
    ]
    assert demo.metric("guarded_ws_auth_attempts_total", method="preauth", result="ok") == 1
    assert demo.metric("guarded_ws_auth_attempts_total", method="cookie", result="ok") == 1
    assert demo.metric("guarded_ws_auth_attempts_total", method="token", result="ok") == 0  # no first message
    page.fill("#message", "typed by hand")
    page.click("#send")
    page.wait_for_selector("#log li:has-text('Echo: typed by hand')")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.activeElement.blur()")  # no focus ring or hover: the same picture every run
    page.mouse.move(0, 0)
    page.screenshot(path=str(SCREENSHOT), animations="disabled")
    assert SCREENSHOT.stat().st_size > 10_000


def test_the_browser_stores_the_cookie_httponly_samesite_strict_path_root(context, demo):
    started = time.time()
    _log_in_and_echo(context, demo.port)
    (cookie,) = context.cookies()
    assert cookie["name"] == "guarded_ws_ticket"
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/")
    assert cookie["domain"] == "127.0.0.1"
    assert started + 25 < cookie["expires"] < time.time() + 35  # short-lived: Max-Age, not a session cookie


HOSTILE_PAGE = """<!doctype html><html><body><script>
const target = "ws://127.0.0.1:%(port)d";
const results = {};
function attempt(name, url) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.onopen = () => { results[name] = "open"; };
    ws.onmessage = (event) => { results[name] = "message: " + event.data; };
    ws.onclose = (event) => { results[name] = results[name] || "closed " + event.code; resolve(); };
  });
}
(async () => {
  try {
    const preauth = target.replace("ws:", "http:") + "/ws/preauth";
    const reply = await fetch(preauth, { method: "POST", credentials: "include" });
    results.preauth = "read " + reply.status;
  } catch (error) {
    results.preauth = "blocked";
  }
  await attempt("plain", target + "/ws");
  await attempt("with_csrf", target + "/ws?csrf=stolen-or-guessed");
  document.body.dataset.done = JSON.stringify(results);
})();
</script></body></html>
"""


@pytest.fixture
def hostile_site(demo) -> Iterator[str]:
    """Another origin: 127.0.0.2 on a port of its own, serving a page that goes after the victim's socket."""
    page = (HOSTILE_PAGE % {"port": demo.port}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    site = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.2:{site.server_address[1]}/"
    site.shutdown()
    site.server_close()
    thread.join(5)


def test_a_hostile_page_cannot_ride_the_victims_cookie(context, demo, hostile_site):
    _log_in_and_echo(context, demo.port)  # the victim is logged in: the ticket cookie is in the jar
    assert len(context.cookies()) == 1
    before = demo.metric("guarded_ws_connections_rejected_total", reason="origin")
    attacker = context.new_page()
    attacker.goto(hostile_site)
    attacker.wait_for_selector("body[data-done]", state="attached")
    results = json.loads(attacker.locator("body").get_attribute("data-done"))
    # Refused before the upgrade: the socket never opens, so the page never sees a message.
    assert results == {"preauth": "blocked", "plain": "closed 1006", "with_csrf": "closed 1006"}
    assert demo.metric("guarded_ws_connections_rejected_total", reason="origin") == before + 3
    assert demo.metric("guarded_ws_auth_attempts_total", method="cookie", result="ok") == 1  # the victim's own
    assert demo.call(lambda: len(demo.server.authenticated)) <= 1
