"""What the embedded front decides from a connection's address and a request's head, before any body.

Per peer: at most MAX_CONNECTIONS_PER_PEER open connections from one client address (0: no cap); the
next one is answered 503 SERVER_BUSY and closed. Behind a reverse proxy every connection comes from the
proxy's address: set 0 there and let the proxy cap its clients (nginx `limit_conn`).

API key: when API_KEY (or CLIENTS) is set, a request that announces a body (a Content-Length above 0, chunked, or
`Expect: 100-continue`) is judged by the web tier's own rule (web/auth.py: every route but liveness,
readiness and the page's files) from its head alone; a refused one is answered 401 UNAUTHORIZED before
`100 Continue` and before a byte of its body is read, and the connection is closed. A request without a
body goes on to the app, which applies the same rule itself (as it does behind gunicorn).
"""
from __future__ import annotations

from image_gateway.clients import ClientRegistry
from image_gateway.front.http11 import Head
from image_gateway.settings import Settings
from image_gateway.web import auth


def clients_of(app) -> ClientRegistry | None:
    """The app's clients (API_KEY and the CLIENTS file, hot-reloaded), when it is the gateway's app."""
    return getattr(getattr(app, "extensions", {}).get("gateway"), "clients", None)


def key_refused(head: Head, config: Settings, registry: ClientRegistry | None = None) -> bool:
    """Whether the API key rule refuses this request before its body: only with API_KEY (or CLIENTS) set and
    a body announced; a key not in force refuses. Several X-API-Key (or Authorization) headers are joined
    with ",", as the WSGI environ joins them, so the front and the app see the same value."""
    required = registry.required if registry is not None else bool(config.api_key)
    if not required or not (head.length or head.chunked or head.expect_continue):
        return False
    headers = {name: ",".join(head.values(name.lower())) for name in ("X-API-Key", "Authorization")}
    return not auth.allowed(config, head.path, {name: value for name, value in headers.items() if value}, registry)


class PeerLimit:
    """Open connections per client address; `cap` 0 counts nothing and refuses nothing.
    Used from the event loop's thread only."""

    def __init__(self, cap: int):
        self.cap = cap
        self.open: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        """Count one more connection from `address`, or False (not counted) when it already holds `cap`."""
        if not self.cap:
            return True
        count = self.open.get(address, 0)
        if count >= self.cap:
            return False
        self.open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        """An admitted connection from `address` closed."""
        count = self.open.get(address, 0) - 1
        if count > 0:
            self.open[address] = count
        else:
            self.open.pop(address, None)
