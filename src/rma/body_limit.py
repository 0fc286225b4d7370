"""A request body cap for ASGI apps, counted as the body arrives: a chunked body is capped as a declared one is.

A Content-Length over the cap is refused before the app runs; a body without one (chunked) is counted
as it streams and refused the moment it passes the cap: the app then reads a disconnect, whatever it
answers is dropped, and the cap answers. Both answers are 413 in the app's own error shape
(`error_body`), and what the app never read is never read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DISCONNECT: Message = {"type": "http.disconnect"}


class BodyLimit:
    """`Middleware(BodyLimit, limit=..., error_body=...)`: bodies over `limit` bytes get 413 with
    `error_body(message)` (JSON bytes); paths under `skip_prefix` pass untouched (a router whose own
    gateway caps what it streams on)."""

    def __init__(self, app: ASGIApp, limit: int, error_body: Callable[[str], bytes],
                 skip_prefix: str | None = None) -> None:
        self.app, self.limit, self.error_body, self.skip_prefix = app, limit, error_body, skip_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.skip_prefix and scope["path"].startswith(self.skip_prefix)):
            await self.app(scope, receive, send)
            return
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)  # declared too large: refused before the app, whatever the route
            return
        seen, refused, started = 0, False, False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return DISCONNECT
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                refused = True
                return DISCONNECT
            return message

        async def unless_refused(message: Message) -> None:
            nonlocal started
            if refused and not started:
                return  # the app's answer to a body it never got: the 413 goes instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not refused:
                raise  # the app's own failure; a refused body's read may fail in the app any way it likes
        if refused and not started:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = self.error_body(f"request body larger than {self.limit} bytes")
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": body})
