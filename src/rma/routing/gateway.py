"""The public gateway's concerns, in front of the router: keys, CORS, body cap, rate limit.

It guards every public way to a service: the edge proxy and the coordinator's own `/service`.
The load balancer serves internal traffic and skips all of this.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rma.routing.proxy import BodyTooLarge
from rma.routing.router import CLOSE, answer

API_KEY_HEADER = b"x-api-key"
MIB = 1 << 20
DEFAULT_MAX_BODY = 256 * MIB  # scanned case files run to tens of MB; 256 MiB leaves room
MAX_CLIENTS = 10_000  # rate-limit buckets kept; full (idle) buckets are dropped past this
CORS_MAX_AGE = b"600"


@dataclass(frozen=True)
class GatewaySettings:
    api_keys: tuple[str, ...] = ()  # empty: no key needed; else X-API-Key must be one of these
    cors_origins: tuple[str, ...] = ()  # "*" for any origin
    max_body_bytes: int = DEFAULT_MAX_BODY
    rate_per_s: float = 100.0  # per API key, per client address without one; 0: off
    rate_burst: float = 200.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewaySettings:
        """The settings from the variables `rma edge-proxy` reads (RMA_API_KEYS, RMA_CORS_ORIGINS,
        RMA_MAX_BODY_MB, RMA_RATE_LIMIT, RMA_RATE_BURST), for a gateway started without those flags."""
        default = cls()
        return cls(comma_list(env.get("RMA_API_KEYS")), comma_list(env.get("RMA_CORS_ORIGINS")),
                   int(_number(env, "RMA_MAX_BODY_MB", default.max_body_bytes / MIB, 0) * MIB),
                   _number(env, "RMA_RATE_LIMIT", default.rate_per_s, 0),
                   _number(env, "RMA_RATE_BURST", default.rate_burst, 1))


def comma_list(value: str | None) -> tuple[str, ...]:
    """The items of a comma-separated setting, stripped, empty ones dropped."""
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def _number(env: Mapping[str, str], name: str, default: float, least: float) -> float:
    """`env[name]` as a number of at least `least`; ValueError, naming the variable, for anything else."""
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = math.nan
    if not least <= value < math.inf:  # also refuses NaN
        raise ValueError(f"{name} must be a number of at least {least:g}, got {raw!r}")
    return value


@dataclass
class RateLimiter:
    """Token buckets per client, refilled by elapsed time; `now` is passed in."""

    rate_per_s: float
    burst: float
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # client → (tokens, at)

    def wait(self, client: str, now: float) -> float:
        """0 when the request may pass (a token is taken), else the seconds until one is free."""
        tokens, at = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
        if tokens >= 1.0:
            if client not in self.buckets and len(self.buckets) >= MAX_CLIENTS:
                self._prune(now)
            self.buckets[client] = (tokens - 1.0, now)
            return 0.0
        self.buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate_per_s

    def _prune(self, now: float) -> None:
        full = [c for c, (t, at) in self.buckets.items() if t + (now - at) * self.rate_per_s >= self.burst]
        for client in full or list(self.buckets)[: len(self.buckets) // 2]:
            del self.buckets[client]


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])


def _has_body(scope: Scope) -> bool:
    return any(k == b"content-length" or k == b"transfer-encoding" for k, _ in scope["headers"])


class Gateway:
    """ASGI middleware: CORS preflight → rate limit → API key → body cap → the router (with CORS headers)."""

    def __init__(self, app: ASGIApp, settings: GatewaySettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.settings = settings
        self.clock = clock
        self.keys = tuple(k.encode() for k in settings.api_keys if k)
        self.origins = frozenset(o.encode() for o in settings.cors_origins if o)
        self.limiter = RateLimiter(settings.rate_per_s, settings.rate_burst) if settings.rate_per_s > 0 else None
        self.checks_headers = bool(self.keys or self.origins or self.limiter)  # else only a body needs a look

    def allowed_origin(self, origin: bytes | None) -> bytes | None:
        if origin is None or not self.origins:
            return None
        return origin if origin in self.origins or b"*" in self.origins else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (self.checks_headers or _has_body(scope)):
            await self.app(scope, receive, send)  # nothing configured applies: no per-request cost
            return
        headers = _headers(scope)
        origin = self.allowed_origin(headers.get(b"origin"))
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers and b"origin" in headers:
            await self.preflight(send, origin, headers)
            return
        if origin is not None:
            send = _with_cors(send, origin)
        key = self.key_of(headers.get(API_KEY_HEADER))
        if self.limiter is not None:
            wait = self.limiter.wait(_bucket(scope, key), self.clock())
            if wait > 0:
                await answer(send, 429, {"error": f"rate limit: {self.settings.rate_per_s:g} requests/s per API key "
                                                  "(per client address without one)"},
                             [(b"retry-after", str(math.ceil(wait)).encode())])
                return
        if self.keys and key is None:
            await answer(send, 401, {"error": "a valid API key is required in the X-API-Key header"},
                         [(b"www-authenticate", b"ApiKey")])
            return
        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            status, error = (413, f"request body larger than {limit} bytes") if declared.isdigit() else (
                400, "invalid Content-Length")
            await answer(send, status, {"error": error}, [CLOSE])  # the body is not read: the connection closes
            return
        await self.app(scope, _capped(receive, limit), send)

    def admits(self, scope: Scope) -> bool:
        """True when a bodiless request passes every check with nothing to add (no CORS, no refusal);
        it then takes its rate-limit token. False leaves the request to `__call__`, which answers it."""
        if not self.checks_headers:
            return True
        headers = _headers(scope)
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            return False  # a CORS preflight: the gateway answers it itself
        if self.origins and b"origin" in headers:
            return False
        key = self.key_of(headers.get(API_KEY_HEADER))
        if self.keys and key is None:
            return False
        if self.limiter is not None:
            return self.limiter.wait(_bucket(scope, key), self.clock()) == 0
        return True

    def key_of(self, presented: bytes | None) -> int | None:
        """Which configured API key the client presented (its index), None for none or a wrong one."""
        if presented is None:
            return None
        found = None
        for index, key in enumerate(self.keys):
            if hmac.compare_digest(presented, key):
                found = index  # every key compared, so the time does not tell which matched
        return found

    async def preflight(self, send: Send, origin: bytes | None, headers: dict[bytes, bytes]) -> None:
        if origin is None:
            await answer(send, 403, {"error": "origin not allowed by this gateway's CORS settings"})
            return
        allow = [
            (b"access-control-allow-origin", origin), (b"vary", b"Origin"),
            (b"access-control-allow-methods", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            (b"access-control-allow-headers", headers.get(b"access-control-request-headers", b"*")),
            (b"access-control-max-age", CORS_MAX_AGE), (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": allow})
        await send({"type": "http.response.body", "body": b""})


def _bucket(scope: Scope, key: int | None) -> str:
    """Whose rate limit a request counts against: its API key's, when it sent a valid one (a backend calling
    for many users shares one address), else its client address's (wrong keys included)."""
    if key is not None:
        return f"key {key}"
    return scope["client"][0] if scope.get("client") else ""


def _with_cors(send: Send, origin: bytes) -> Send:
    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if not k.startswith(b"access-control-allow-o")]
            headers += [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
            message = {**message, "headers": headers}
        await send(message)

    return cors_send


def _capped(receive: Receive, limit: int) -> Receive:
    """Count body bytes as they stream; past `limit` the forwarding attempt fails with 413."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise BodyTooLarge(f"request body larger than {limit} bytes")
        return message

    return counted
