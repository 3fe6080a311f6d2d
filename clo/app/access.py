"""Who may change the server's state, decided on the server for every call.

    access = Access(demo_mode=True, password=os.environ.get("CLO_ADMIN_PASSWORD"), allowed_users=("alice",))
    access.unlock(request, "the password")   # True: this session may administer from now on
    access.require(request)                  # raises CLOError for any other session

Outside demo mode (a laptop, a lab machine) every caller may. In demo mode (the default on a Space) only a
session that gave the admin password or logged in with Hugging Face as an allowed user may: the job supervisor
(clo.app.jobs) and the serving line-up check it themselves, under every caller (the page, gradio_client, raw HTTP),
so hiding a tab or an endpoint is never the only lock. A caller is a `gr.Request` or a session id.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque

from clo import CLOError


def session_of(caller) -> str | None:
    """The session id of a `gr.Request` (or the string itself)."""
    return caller if isinstance(caller, str) else getattr(caller, "session_hash", None)


class Access:
    def __init__(self, demo_mode: bool, password: str | None = None, allowed_users: tuple[str, ...] = ()):
        self.demo_mode, self.password, self.allowed_users = demo_mode, password or None, tuple(allowed_users)
        self.admins: set[str] = set()
        self.lock = threading.Lock()

    def allows(self, caller) -> bool:
        if not self.demo_mode:
            return True
        with self.lock:
            return session_of(caller) in self.admins

    def require(self, caller) -> None:
        if not self.allows(caller):
            raise CLOError("this needs the admin password: the app runs in demo mode")

    def unlock(self, caller, given: str | None) -> bool:
        """Grant the session when `given` is the admin password (compared in constant time, as UTF-8 bytes: any
        text, "비밀번호" or a stray surrogate from a client alike, is compared, never an error)."""
        if not self.password or not isinstance(given, str):
            return False
        ok = hmac.compare_digest(_utf8(given), _utf8(self.password))
        return ok and self._grant(caller)

    def login(self, caller, username: str | None) -> bool:
        """Grant the session when Hugging Face says it belongs to an allowed user."""
        return bool(username) and username in self.allowed_users and self._grant(caller)

    def _grant(self, caller) -> bool:
        session = session_of(caller)
        if not session:
            return False
        with self.lock:
            self.admins.add(session)
        return True


def _utf8(text: str) -> bytes:
    """`text` as bytes for a comparison: UTF-8, with lone surrogates (from a client's JSON, or an environment
    variable that was not UTF-8) kept as bytes instead of raising."""
    return text.encode("utf-8", "surrogatepass")


class RateLimit:
    """At most `limit` events per `window_s` seconds for each key (a sliding window kept in memory).

        generations = RateLimit(window_s=60)
        generations.hit([("this session", session_key, 20), ("this network address", address_key, 400)], "requests")
    """

    def __init__(self, window_s: float = 60.0):
        self.window_s = window_s
        self.events: dict[str, deque] = {}
        self.lock = threading.Lock()
        self.swept = time.monotonic()

    def hit(self, counters: list[tuple[str, str, int]], what: str = "requests") -> None:
        """Count one event against every (label, key, limit), or against none when a key is at its limit: then
        a CLOError names the label and says when to retry."""
        now = time.monotonic()
        with self.lock:
            queues = []
            for label, key, limit in counters:
                q = self.events.setdefault(key, deque())
                while q and q[0] <= now - self.window_s:
                    q.popleft()
                if len(q) >= limit:
                    wait = q[0] + self.window_s - now
                    raise CLOError(f"too many {what} from {label}: at most {limit} per {self.window_s:.0f} s; "
                                   f"try again in {max(1, int(wait) + 1)} s")
                queues.append(q)
            for q in queues:
                q.append(now)
            if now - self.swept > self.window_s:  # forget keys that went quiet, so memory follows the live visitors
                self.events = {k: q for k, q in self.events.items() if q and q[-1] > now - self.window_s}
                self.swept = now


def visitor_of(request) -> tuple[str, str]:
    """(session, client address) of a `gr.Request`. The address is the direct peer, or the client that a trusted
    proxy names in X-Forwarded-For: uvicorn resolves that before any handler runs, trusting only the peers in
    FORWARDED_ALLOW_IPS (app.py sets it from --trusted-proxies), so a header from any other peer is ignored."""
    session = getattr(request, "session_hash", None) or "anonymous"
    client = getattr(request, "client", None)
    return session, (getattr(client, "host", None) or "unknown")
