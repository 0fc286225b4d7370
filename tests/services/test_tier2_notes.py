"""notes-coa as the worker starts it: its bad-input answers, and the 503 that says llm-inference
is missing from the pool (a real coordinator with no worker). The letter itself, written by the
CPU LLM, is tested end to end in tests/e2e/test_notes_e2e.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from procs import start_coordinator
from services.driven import driven_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("notes")
    coordinator, url = start_coordinator(folder)
    (folder / "notes").mkdir()
    try:
        with driven_service("notes-coa", folder / "notes", "/health", 30, dict(os.environ),
                            coordinator_urls=(url,)) as service_url:
            yield service_url
    finally:
        coordinator.stop()


def test_without_llm_inference_it_answers_503_saying_why(service: str) -> None:
    answer = httpx.post(f"{service}/convert", json={"notes": "Client owes £40 to EDF.", "client_name": "Sam"})
    assert answer.status_code == 503
    assert "llm-inference is not running anywhere in the pool" in answer.json()["error"]["message"]


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"client_name": "Sam"}, 400, "notes"),
    ({"notes": "", "client_name": "Sam"}, 400, "notes"),
    ({"notes": "Client owes £40.", "client_name": ""}, 400, "client_name"),
    ({"notes": "x" * 20_001, "client_name": "Sam"}, 400, "notes"),
    ({"notes": ["a list"], "client_name": "Sam"}, 400, "notes"),
    ({"notes": " \n - \n", "client_name": "Sam"}, 400, "no text"),
    ({"notes": "\n".join(f"Item {i}." for i in range(41)), "client_name": "Sam"}, 400, "at most 40"),
    ({"notes": "Client owes " + "x" * 1_000, "client_name": "Sam"}, 400, "item 1 is 1,012 characters, at most 1,000"),
    ({"notes": "\n".join("y" * 990 for _ in range(20)), "client_name": "Sam"}, 413, "10,700 tokens, at most 8,000"),
])
def test_bad_input_is_a_400_that_says_what_is_wrong(service: str, body: dict[str, object], status: int,
                                                     says: str) -> None:
    answer = httpx.post(f"{service}/convert", json=body)
    assert answer.status_code == status and says in answer.json()["error"]["message"]


def test_a_body_that_is_not_json_or_too_big_is_refused(service: str) -> None:
    broken = httpx.post(f"{service}/convert", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 400
    huge = httpx.post(f"{service}/convert", content=b"x" * (300 << 10), headers={"content-type": "application/json"})
    assert huge.status_code == 413
    assert httpx.get(f"{service}/health").json()["status"] == "ok"  # still up
