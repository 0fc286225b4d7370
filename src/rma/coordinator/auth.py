"""Who may call what: join token to register, a per-worker token after that, admin token for /api/admin.

With no join or admin token configured, those doors open to loopback callers only.
Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.requests import Request

from rma.protocol import Forbidden, Unauthorized


def bearer(request: Request) -> str | None:
    return bearer_value(request.headers.get("authorization", ""))


def bearer_value(header: str) -> str | None:
    """The token of an 'Authorization: Bearer <token>' header value; None for anything else."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_secret(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def require_secret(request: Request, secret: str | None, what: str, env: str) -> None:
    """Check a shared secret sent as a bearer token; without one configured, allow loopback only."""
    if secret:
        if not same_secret(bearer(request), secret):
            raise Unauthorized(f"{what} needs a valid bearer token ({env})")
    elif not is_loopback(request):
        raise Forbidden(f"{what} is open to loopback callers only while {env} is unset")


def is_admin(request: Request, admin_token: str | None) -> bool:
    """The caller holds the admin token (or, with none configured, calls from loopback)."""
    if admin_token:
        return same_secret(bearer(request), admin_token)
    return is_loopback(request)


def has_api_key(request: Request, keys: tuple[str, ...]) -> bool:
    """The caller sends one of the configured client API keys as X-API-Key."""
    presented = request.headers.get("x-api-key")
    return any(same_secret(presented, key) for key in keys)
