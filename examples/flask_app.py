"""A Flask app that issues guarded-ws tickets itself, from its own login session.

The page calls ``POST /ws-ticket`` (same origin, with the site's session cookie) and
opens ``wss://<ws host>/ws?csrf=<csrf>``; guarded-ws checks the ticket cookie this
endpoint set, the CSRF token and the Origin. The secret is guarded-ws's
(``GUARDED_WS_SECRET``); ``secure``, ``ttl`` and ``domain`` must match its ``[cookie]``
section. Run: ``GUARDED_WS_SECRET=... flask --app examples/flask_app.py run``.
"""

from __future__ import annotations

import os

from flask import Flask, abort, jsonify, request, session

from guarded_ws.tickets import issue

TICKET_TTL = 30


def create_app(secret: str, *, secure: bool = True, domain: str | None = None) -> Flask:
    app = Flask(__name__)
    app.secret_key = os.urandom(32)  # the site's own session signing key, unrelated to guarded-ws's

    @app.post("/login")
    def login():  # stands in for the site's real login
        session["user"] = request.form["user"]
        return jsonify(ok=True)

    @app.post("/ws-ticket")
    def ws_ticket():
        user = session.get("user")
        if user is None:
            abort(401)
        csrf, set_cookie = issue(user, secret=secret, secure=secure, ttl=TICKET_TTL, domain=domain)
        response = jsonify(csrf=csrf, expires_in=TICKET_TTL)
        response.headers.add("Set-Cookie", set_cookie)
        response.headers["Cache-Control"] = "no-store"
        return response

    return app


if os.environ.get("GUARDED_WS_SECRET"):
    app = create_app(os.environ["GUARDED_WS_SECRET"])
