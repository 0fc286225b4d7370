"""What every engine app answers when its own code fails: JSON with a reason id, the cause logged, the app up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from rma.services.apps.common import api_app


@asynccontextmanager
async def nothing(_: FastAPI) -> AsyncIterator[None]:
    yield


def test_an_unexpected_exception_is_a_json_500_with_a_reason_id_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    app = api_app("test-app", nothing, 1024)

    @app.get("/broken")
    def broken() -> None:
        raise RuntimeError("the parser's own bug")

    @app.get("/fine")
    def fine() -> dict[str, str]:
        return {"status": "ok"}

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/broken")
        assert answer.status_code == 500
        message = answer.json()["error"]["message"]
        assert message.startswith("unexpected error (reason ") and "parser" not in message  # no internals leak
        reason = message.split("reason ")[1].split(",")[0]
        assert reason in caplog.text and "the parser's own bug" in caplog.text
        assert client.get("/fine").json() == {"status": "ok"}
