"""Reference agents of the auth and security group: AuthenticationAgent, AgentTrustScorer.

Clocks: expiry, lockouts and decay run on the request's `now` when it gives one (a logical clock the
caller drives: deterministic, and what the tests use), else on the host's monotonic clock, which every
process on the host shares and no wall-clock step can move. A token's times are on the clock of the
login that issued it; a caller mixing the two clocks gets answers on whichever it passes.
"""
from __future__ import annotations

import base64
import json
import os
import re
import time
from collections import deque
from typing import Any

from sunsetd.agent import AgentError, BadRequest, RemoteError

from agents.infrastructure import DAEMON, field
from agents.pc2_core import EdgeAgent

UTILS = "UnifiedUtilsAgent"
_USER = re.compile(r"^[a-z0-9_.-]{3,32}$")


def _clock(body: Any) -> float:
    now = field(body, "now", float, None) if isinstance(body, dict) else None
    return time.monotonic() if now is None else float(now)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _crypto():
    """hashlib and hmac, imported where they are used: they load OpenSSL (about 4 MB of RSS), which
    AgentTrustScorer, in this module too, does not need."""
    import hashlib
    import hmac

    return hashlib, hmac


def hash_password(password: str, salt: bytes, iterations: int) -> str:
    hashlib, _ = _crypto()
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    _, hmac = _crypto()
    return hmac.compare_digest(hash_password(password, _unb64(salt), int(iterations)).split("$")[3], digest)


# ---- AuthenticationAgent ---------------------------------------------------------------------------------
class AuthenticationAgent(EdgeAgent):
    """Users, sessions and signed tokens.

    Real: users with PBKDF2-SHA256 password hashes (random salts), login with a lockout after
    `max_failures` failed attempts within `window_s`, sessions whose ids come from UnifiedUtilsAgent
    (`new_id`), tokens `payload.signature` (base64url JSON {sub, sid, iat, exp} signed with HMAC-SHA256,
    compared in constant time) that expire after `token_ttl_s` and die with their session at `logout`;
    `refresh` issues a new token for a live session. The clock is the request's `now` or the monotonic
    one. The signing key is `config.secret` or random per process (then a restart invalidates every
    token); users and sessions live in this process (`config.users` may seed hashed users). Stands in:
    nothing.
    """

    CAPABILITIES = ("auth.sessions", "auth.tokens")

    def setup(self) -> None:
        secret = self.config.get("secret")
        self.key = secret.encode() if isinstance(secret, str) else os.urandom(32)
        self.iterations = int(self.config.get("iterations", 200_000))
        self.token_ttl = float(self.config.get("token_ttl_s", 900))
        self.session_ttl = float(self.config.get("session_ttl_s", 86_400))
        self.max_failures = int(self.config.get("max_failures", 5))
        self.window_s = float(self.config.get("window_s", 300))
        self.lockout_s = float(self.config.get("lockout_s", 300))
        self.users: dict[str, dict] = {u: {"hash": h, "failures": deque(), "locked_until": None}
                                       for u, h in (self.config.get("users") or {}).items()}
        self.sessions: dict[str, dict] = {}
        super().setup()

    # ---- tokens
    def _mac(self, body: str) -> str:
        hashlib, hmac = _crypto()
        return _b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest())

    def _sign(self, payload: dict) -> str:
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._mac(body)}"

    def _verify(self, token: str, now: float) -> tuple[dict | None, str]:
        try:
            body, sig = token.split(".")
            if not _crypto()[1].compare_digest(sig.encode(), self._mac(body).encode()):
                return None, "bad signature"
            payload = json.loads(_unb64(body))
        except (ValueError, TypeError):
            return None, "malformed token"
        if now >= payload["exp"]:
            return None, "expired"
        session = self.sessions.get(payload["sid"])
        if session is None or session["user"] != payload["sub"]:
            return None, "session ended"
        if now >= session["expires"]:
            return None, "session expired"
        return payload, "ok"

    def _token(self, user: str, sid: str, now: float) -> dict:
        exp = round(now + self.token_ttl, 3)
        return {"token": self._sign({"sub": user, "sid": sid, "iat": round(now, 3), "exp": exp}), "expires": exp}

    # ---- ops
    def handle_register(self, body: Any) -> dict:
        """{user, password}: a new user (names: 3..32 of a-z 0-9 _ . -; passwords: at least 8 characters)."""
        user, password = field(body, "user", str), field(body, "password", str)
        if not _USER.match(user):
            raise BadRequest("user must be 3..32 characters of a-z, 0-9, _ . -")
        if len(password) < 8:
            raise BadRequest("password must have at least 8 characters")
        if user in self.users:
            raise AgentError(f"user {user!r} exists", code="bad_request")
        self.users[user] = {"hash": hash_password(password, os.urandom(16), self.iterations), "failures": deque(),
                            "locked_until": None}
        self.counters["users"] += 1
        return {"user": user, "registered": True}

    def handle_login(self, body: Any) -> dict:
        """{user, password, now?} -> {session, token, expires}; a wrong password counts towards a lockout."""
        user, password, now = field(body, "user", str), field(body, "password", str), _clock(body)
        u = self.users.get(user)
        if u is not None and u["locked_until"] is not None and now < u["locked_until"]:
            self.counters["locked_out"] += 1
            raise AgentError(f"{user} is locked out until {u['locked_until']:g}", code="unavailable")
        if u is None or not check_password(password, u["hash"]):
            self.counters["login_failures"] += 1
            if u is not None:
                u["failures"].append(now)
                while u["failures"] and u["failures"][0] <= now - self.window_s:
                    u["failures"].popleft()
                if len(u["failures"]) >= self.max_failures:
                    u["locked_until"], u["failures"] = now + self.lockout_s, deque()
                    self.event(f"{user} locked out after {self.max_failures} failed logins", "warning")
            raise AgentError("wrong user or password", code="bad_request")
        u["failures"].clear()
        u["locked_until"] = None
        sid = self.call(UTILS, "new_id", {"prefix": "sess"}, timeout=2.0)["id"]
        self.sessions[sid] = {"user": user, "created": now, "expires": now + self.session_ttl}
        self.counters["logins"] += 1
        return {"user": user, "session": sid, **self._token(user, sid, now)}

    def handle_verify(self, body: Any) -> dict:
        """{token, now?} -> {valid, user, session, expires} or {valid: false, reason}."""
        payload, reason = self._verify(field(body, "token", str), _clock(body))
        self.counters["verified" if payload else "rejected"] += 1
        if payload is None:
            return {"valid": False, "reason": reason}
        return {"valid": True, "user": payload["sub"], "session": payload["sid"], "expires": payload["exp"]}

    def handle_refresh(self, body: Any) -> dict:
        """{token, now?}: a new token for the same live session (the old one may be expired, not forged)."""
        token, now = field(body, "token", str), _clock(body)
        payload, reason = self._verify(token, now)
        if payload is None and reason == "expired":
            payload = json.loads(_unb64(token.split(".")[0]))  # signature checked; only the time ran out
            session = self.sessions.get(payload["sid"])
            if session is None or now >= session["expires"]:
                payload = None
                reason = "session ended"
        if payload is None:
            raise AgentError(f"cannot refresh: {reason}", code="bad_request")
        return {"user": payload["sub"], "session": payload["sid"], **self._token(payload["sub"], payload["sid"], now)}

    def handle_logout(self, body: Any) -> dict:
        """{session}: end it; its tokens stop verifying."""
        sid = field(body, "session", str)
        return {"session": sid, "ended": self.sessions.pop(sid, None) is not None}

    def handle_sessions(self, body: Any) -> dict:
        """{user?, now?} -> live sessions (ended and expired ones are dropped)."""
        now, user = _clock(body), field(body, "user", str, None) if isinstance(body, dict) else None
        for sid in [s for s, v in self.sessions.items() if now >= v["expires"]]:
            del self.sessions[sid]
        return {"sessions": sorted(s for s, v in self.sessions.items() if user is None or v["user"] == user)}


# ---- AgentTrustScorer ------------------------------------------------------------------------------------
def trust_of(s: dict, target_ms: float) -> dict:
    """Trust 0..1: reliability (Beta(1, 1) posterior mean of decayed successes and failures) times a latency
    factor (1 up to the target, target/latency above it, floor 0.1)."""
    reliability = (s["ok"] + 1.0) / (s["ok"] + s["fail"] + 2.0)
    latency = s["latency_ms"]
    factor = 1.0 if latency is None or latency <= target_ms else max(0.1, target_ms / latency)
    return {"trust": round(reliability * factor, 4), "reliability": round(reliability, 4),
            "latency_factor": round(factor, 4), "latency_ms": None if latency is None else round(latency, 2),
            "observations": s["n"]}


class AgentTrustScorer(EdgeAgent):
    """Trust score per agent from its successes, failures and latency.

    Real: `record` folds each observed call (ok, latency) into per-agent figures: exponentially decayed
    success and failure counts (`decay` per observation) and an exponentially weighted latency (`alpha`);
    trust is the reliability (Beta posterior mean) times a latency factor against `target_ms`; `refresh`
    reads sunsetd's status and counts each new restart of an agent as a failure, and an agent whose
    circuit is open (failed) as one more; `rank` orders agents by trust. Stands in: nothing.
    """

    CAPABILITIES = ("security.trust",)

    def setup(self) -> None:
        self.decay = float(self.config.get("decay", 0.98))
        self.alpha = float(self.config.get("alpha", 0.2))
        self.target_ms = float(self.config.get("target_ms", 100))
        self.stats: dict[str, dict] = {}
        self.restarts_seen: dict[str, int] = {}
        super().setup()

    def _observe(self, agent: str, ok: bool, latency_ms: float | None) -> dict:
        s = self.stats.setdefault(agent, {"ok": 0.0, "fail": 0.0, "latency_ms": None, "n": 0})
        s["ok"] = s["ok"] * self.decay + (1.0 if ok else 0.0)
        s["fail"] = s["fail"] * self.decay + (0.0 if ok else 1.0)
        if latency_ms is not None:
            s["latency_ms"] = latency_ms if s["latency_ms"] is None else \
                (1 - self.alpha) * s["latency_ms"] + self.alpha * latency_ms
        s["n"] += 1
        return s

    def handle_record(self, body: Any) -> dict:
        """{agent, ok, latency_ms?} -> the agent's trust after this observation."""
        agent, ok = field(body, "agent", str), field(body, "ok", bool)
        latency = field(body, "latency_ms", float, None)
        if latency is not None and latency < 0:
            raise BadRequest("latency_ms must not be negative")
        s = self._observe(agent, ok, latency)
        self.counters["observations"] += 1
        return {"agent": agent, **trust_of(s, self.target_ms)}

    def handle_score(self, body: Any) -> dict:
        agent = field(body, "agent", str)
        s = self.stats.get(agent)
        if s is None:
            return {"agent": agent, "trust": None, "observations": 0}
        return {"agent": agent, **trust_of(s, self.target_ms)}

    def handle_rank(self, body: Any) -> dict:
        """{k?} -> agents by trust, highest first (ties by name)."""
        k = field(body, "k", int, 100) if isinstance(body, dict) else 100
        ranked = sorted(((a, trust_of(s, self.target_ms)) for a, s in self.stats.items()),
                        key=lambda x: (-x[1]["trust"], x[0]))[:k]
        scores = [{"agent": a, **t} for a, t in ranked]
        if scores:
            self.report({"lowest_trust": scores[-1]["trust"], "agents_scored": len(self.stats)})
        return {"ranking": scores}

    def handle_refresh(self, body: Any) -> dict:
        """Fold sunsetd's status in: each restart since the last refresh, and an open circuit, count as failures."""
        try:
            status = self.call(DAEMON, "status", timeout=2.0)
        except RemoteError as exc:
            raise AgentError(f"cannot read sunsetd's status: {exc}") from None
        penalised: dict[str, int] = {}
        for a in status["agents"]:
            name, restarts = a["name"], int(a.get("restarts") or 0)
            new = max(0, restarts - self.restarts_seen.get(name, 0))
            self.restarts_seen[name] = restarts
            failures = new + (1 if a.get("state") == "failed" else 0)
            for _ in range(failures):
                self._observe(name, False, None)
            if failures:
                penalised[name] = failures
        self.counters["refreshes"] += 1
        return {"agents": len(status["agents"]), "penalised": penalised}
