"""``guarded-ws serve --demo``: a page that walks the browser path, in plain JavaScript.

It logs in (``POST /demo/login`` hands out a short token for any name: a stand-in for
the site's own login, which is why the demo runs on loopback only), calls the preauth
endpoint with that token, opens the WebSocket with the CSRF token, and echoes.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable
from http import HTTPStatus

from .preauth import PreauthRequest, response

PAGE_PATH = "/demo"
LOGIN_PATH = "/demo/login"
TOKEN_TTL = 300.0
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>guarded-ws: browser auth demo</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 46rem; color: #1d2433; }
  h1 { font-size: 1.5rem; margin-bottom: .25rem; }
  p.lead { color: #5a6478; margin-top: 0; }
  form { display: flex; gap: .5rem; margin: 1rem 0; }
  input { font: inherit; padding: .35rem .5rem; border: 1px solid #b8c0d0; border-radius: 4px; }
  button { font: inherit; padding: .35rem .9rem; border: 0; border-radius: 4px; background: #2456c9; color: #fff; }
  button:disabled { background: #9aa7c2; }
  ol { padding-left: 1.4rem; }
  li { margin: .3rem 0; }
  li.ok::marker { color: #1a7f37; }
  li.fail { color: #b42318; }
  code { background: #eef1f6; padding: 0 .25rem; border-radius: 3px; }
  #state { font-weight: 600; }
</style>
</head>
<body data-state="idle">
<h1>guarded-ws: browser auth demo</h1>
<p class="lead">Log in, get a ticket cookie and a CSRF token from <code>POST __PREAUTH__</code>,
then open <code>__WS__?csrf=&hellip;</code>: the server checks the cookie, the token and the
<code>Origin</code> before it upgrades.</p>
<form id="login">
  <input id="name" value="alice" aria-label="name" size="12">
  <button id="connect">Log in and connect</button>
</form>
<form id="chat">
  <input id="message" value="hello" aria-label="message" size="24" disabled>
  <button id="send" disabled>Send</button>
</form>
<p>State: <span id="state">idle</span></p>
<ol id="log"></ol>
<script>
"use strict";
const PREAUTH = __PREAUTH_JSON__, WS_PATH = __WS_JSON__;
const $ = (id) => document.getElementById(id);
let ws = null;

function log(text, ok = true) {
  const item = document.createElement("li");
  item.textContent = text;
  item.className = ok ? "ok" : "fail";
  $("log").append(item);
}

function state(name) {
  document.body.dataset.state = name;
  $("state").textContent = name;
}

async function post(path, options) {
  const reply = await fetch(path, { method: "POST", credentials: "same-origin", ...options });
  if (!reply.ok) throw new Error(`${path}: HTTP ${reply.status}`);
  return reply.json();
}

async function connect(event) {
  event.preventDefault();
  $("connect").disabled = true;
  try {
    const { token } = await post("__LOGIN__", { body: $("name").value });
    log("Logged in: the site's own auth gave the page a token");
    const { csrf, expires_in } = await post(PREAUTH, { headers: { Authorization: `Bearer ${token}` } });
    log(`Preauth: CSRF token received, ticket cookie set for ${expires_in} s`);
    log(`The cookie is HttpOnly: document.cookie shows ${JSON.stringify(document.cookie)}`);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${scheme}://${location.host}${WS_PATH}?csrf=${encodeURIComponent(csrf)}`);
    state("connecting");
    let authenticated = false;
    ws.onmessage = (message) => {
      if (!authenticated) {
        const reply = JSON.parse(message.data);
        authenticated = reply.type === "authenticated";
        log(`Upgraded and authenticated as ${reply.subject}: no first message needed`);
        state("authenticated");
        $("message").disabled = $("send").disabled = false;
        ws.send("hello");
        return;
      }
      log(`Echo: ${message.data}`);
      state("echoed");
    };
    ws.onclose = (close) => {
      log(`Closed (${close.code})`, authenticated);
      if (!authenticated) state("refused");
      $("message").disabled = $("send").disabled = true;
    };
  } catch (error) {
    log(String(error.message), false);
    state("refused");
  }
}

$("login").addEventListener("submit", connect);
$("chat").addEventListener("submit", (event) => {
  event.preventDefault();
  ws.send($("message").value);
});
</script>
</body>
</html>
"""


def page(preauth_path: str, ws_path: str) -> bytes:
    html = (
        _PAGE.replace("__PREAUTH_JSON__", json.dumps(preauth_path))
        .replace("__WS_JSON__", json.dumps(ws_path))
        .replace("__PREAUTH__", preauth_path)
        .replace("__WS__", ws_path)
        .replace("__LOGIN__", LOGIN_PATH)
    )
    return response(
        HTTPStatus.OK,
        html.encode(),
        "text/html; charset=utf-8",
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
    )


def login(issue_token: Callable[[str, float, float, str], str]) -> Callable[[PreauthRequest, float], bytes]:
    """``POST /demo/login`` with a name as the body: a short token for that name (single-use ready)."""

    def handle(request: PreauthRequest, now: float) -> bytes:
        name = request.body.decode("ascii", "replace")
        if _NAME.fullmatch(name) is None:
            body = b"a name: 1 to 32 of A-Z a-z 0-9 _ . -\n"
            return response(HTTPStatus.BAD_REQUEST, body, "text/plain; charset=utf-8")
        token = issue_token(name, now, TOKEN_TTL, secrets.token_urlsafe(16))
        return response(HTTPStatus.OK, json.dumps({"token": token}).encode(), "application/json")

    return handle


def own_origins(addresses: Iterable[tuple[str, int]], host: str, scheme: str = "http") -> set[str]:
    """The origins of the demo page itself: what a browser sends as Origin from it."""
    origins = {
        f"{scheme}://[{address}]:{port}" if ":" in address else f"{scheme}://{address}:{port}"
        for address, port in addresses
    }
    if host == "localhost":
        origins |= {f"{scheme}://localhost:{port}" for _, port in addresses}
    return origins
