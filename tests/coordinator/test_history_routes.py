"""The history's two routes through the ASGI app: a router's report in, the series out; admin only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from rma.coordinator.app import create_app
from rma.coordinator.state import CoordinatorSettings
from rma.traffic_report import BUCKETS

LOOPBACK = ("127.0.0.1", 50000)
REMOTE = ("203.0.113.7", 50000)  # a documentation address: the ASGI scope only, no traffic is sent


def client(tmp_path: Path, peer: tuple[str, int] = LOOPBACK, **settings: Any) -> TestClient:
    return TestClient(create_app(CoordinatorSettings(data_dir=tmp_path, **settings)), client=peer)


def report(**services: list[int]) -> dict[str, Any]:
    return {"interval_s": 5.0, "services": {name.replace("_", "-"): {"latency": latency, "errors": 1}
                                            for name, latency in services.items()}}


LATENCY = [0, 0, 3, 5, *[0] * (BUCKETS - 4)]


def test_a_report_lands_in_the_history(tmp_path: Path) -> None:
    with client(tmp_path) as api:
        answer = api.post("/api/admin/router-report", json=report(ner_extraction=LATENCY))
        assert answer.status_code == 200, answer.text
        state = api.app.state.coordinator  # type: ignore[attr-defined]
        later = state.registry.clock() + 30  # once the steps it covers have settled
        ner = state.history.view(later)["services"]["ner-extraction"]
        assert sum(ner["rps"]) * 10 == pytest.approx(8)
        assert sum(ner["errors"]) * 10 == pytest.approx(1)
        shape = api.get("/api/admin/history").json()
        assert shape["step_s"] == 10 and shape["window_s"] == 3600
        assert set(shape["services"]["redis"]) == {"t", "rps", "errors", "p50_ms", "p95_ms", "healthy"}


@pytest.mark.parametrize(("body", "complaint"), [
    (b"{not json", "invalid request body"),
    ({"services": {}}, "interval_s"),
    ({"interval_s": -1, "services": {}}, "interval_s"),
    ({"interval_s": 1e9, "services": {}}, "interval_s"),
    (report(ner_extraction=[1, 2]), "latency"),
    (report(ner_extraction=[-1, *[0] * (BUCKETS - 1)]), "latency"),
    (report(ner_extraction=[0] * BUCKETS), "more errors than requests"),
    (report(nonsense=LATENCY), "not in the catalogue: nonsense"),
    ({"interval_s": 5, "services": {}, "extra": 1}, "extra"),
])
def test_a_bad_report_is_a_clear_422(tmp_path: Path, body: Any, complaint: str) -> None:
    with client(tmp_path) as api:
        if isinstance(body, bytes):
            answer = api.post("/api/admin/router-report", content=body)
        else:
            answer = api.post("/api/admin/router-report", json=body)
        assert answer.status_code == 422
        assert complaint in answer.json()["error"]


def test_reports_and_history_are_for_admins(tmp_path: Path) -> None:
    with client(tmp_path / "open", peer=REMOTE) as remote:  # no admin token: loopback only
        assert remote.post("/api/admin/router-report", json=report()).status_code == 403
        assert remote.get("/api/admin/history").status_code == 403
    with client(tmp_path / "token", peer=REMOTE, admin_token="adm1n") as remote:
        assert remote.post("/api/admin/router-report", json=report()).status_code == 401
        assert remote.get("/api/admin/history").status_code == 401
        admin = {"Authorization": "Bearer adm1n"}
        assert remote.post("/api/admin/router-report", json=report(), headers=admin).status_code == 200
        assert remote.get("/api/admin/history", headers=admin).status_code == 200
