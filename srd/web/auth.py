"""Passwords, sessions and CSRF tokens of `srd web`.

The password is stored only as an scrypt hash in the config (`hash_password`, ``srd web --hash-password``).
A browser logs in once and gets a random session id in an HttpOnly, SameSite=Strict cookie; scripts send
HTTP Basic credentials instead. Every comparison of a secret is constant-time (`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable

# scrypt cost: ~50 ms and 16 MB per check here, so a guessed password costs an attacker the same.
_N, _R, _P = 2**14, 8, 1
SESSION_TTL_S = 12 * 3600


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The ``scrypt$N$r$p$salt$hash`` string to put in the config's ``web.password_hash``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join(("scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)))


def check_password(password: str, stored: str) -> bool:
    """Whether `password` matches the stored hash (False, never an exception, for a malformed hash)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.urlsafe_b64decode(digest + "==")
        got = hashlib.scrypt(password.encode(), salt=base64.urlsafe_b64decode(salt + "=="), n=int(n), r=int(r),
                             p=int(p), dklen=len(expected), maxmem=64 * 1024 * 1024)
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, expected)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time equality of two secrets; a missing one never matches."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class Sessions:
    """Logged-in browsers: random ids, kept in memory (a restart of `srd web` logs everyone out)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._expiry: dict[str, float] = {}
        self._clock = clock

    def start(self) -> str:
        self._drop_expired()
        session = secrets.token_urlsafe(32)
        self._expiry[session] = self._clock() + SESSION_TTL_S
        return session

    def valid(self, session: str | None) -> bool:
        if not session:
            return False
        # Looked up by equality of a 256-bit random id: a timing difference can't help guess one.
        expiry = self._expiry.get(session)
        return expiry is not None and expiry > self._clock()

    def end(self, session: str | None) -> None:
        if session:
            self._expiry.pop(session, None)

    def _drop_expired(self) -> None:
        now = self._clock()
        for session in [s for s, expiry in self._expiry.items() if expiry <= now]:
            del self._expiry[session]


class Backoff:
    """Wrong passwords per client: from the `FREE_TRIES`-th in a row, that client must wait (1 s, doubling, at
    most `MAX_WAIT_S`) before its next try is even checked, and is answered 429 meanwhile; a right password
    clears it. This slows guessing without locking the owner out, and a held-back try costs no scrypt."""

    FREE_TRIES = 3  # typos cost nothing
    MAX_WAIT_S = 30.0
    _FORGET_S = 900.0  # a client quiet this long starts afresh
    _MAX_CLIENTS = 10_000  # bounded memory against many source addresses

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._failures: dict[str, tuple[int, float]] = {}
        self._clock = clock
        self._lock = threading.Lock()  # checks run in the server's worker threads

    def wait_s(self, client: str) -> float:
        """Seconds `client` must still wait before a password from it is checked (0: check it now)."""
        with self._lock:
            failures, last = self._failures.get(client, (0, 0.0))
        if failures < self.FREE_TRIES:
            return 0.0
        return max(0.0, last + self._delay(failures) - self._clock())

    def failed(self, client: str) -> int:
        """Count a wrong password from `client`; returns its failures in a row."""
        now = self._clock()
        with self._lock:
            failures, last = self._failures.pop(client, (0, now))
            failures = 1 if now - last > self._FORGET_S else failures + 1
            if len(self._failures) >= self._MAX_CLIENTS:
                self._failures.pop(next(iter(self._failures)))  # the least recently failed
            self._failures[client] = (failures, now)
        return failures

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def _delay(self, failures: int) -> float:
        return float(min(self.MAX_WAIT_S, 2.0 ** min(failures - self.FREE_TRIES, 16)))
