"""Tier-1 services end to end on CPU: a real coordinator assigns them to `rma worker` (WORKER_TYPE=cpu),
the worker starts the real engines, and the official `openai` client and an OCR upload reach them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from e2e.test_worker_e2e import discover, workers
from procs import RmaProcess, start_coordinator, start_worker, wait_until
from services.test_tier1_embeddings import cosine
from services.test_tier1_ocr import letter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def healthy_replica(url: str, service: str) -> dict[str, Any] | None:
    found = discover(url, service)
    return found["workers"][0] if found and found["workers"] else None


def test_cpu_worker_serves_embeddings_and_ocr(processes: list[RmaProcess], tmp_path: Path) -> None:
    coordinator, url = start_coordinator(tmp_path, interval=1.0)
    processes.append(coordinator)
    worker = start_worker(processes, tmp_path, url, "cpu", "w-cpu")
    engines = wait_until(lambda: workers(url).get("w-cpu", {}).get("capabilities", {}).get("engines"), 30,
                         what="the cpu worker's engines")
    assert {"sentence-transformers", "tesseract"} <= set(engines) and "vllm-vision" not in engines
    embeddings = wait_until(lambda: healthy_replica(url, "rag-embeddings"), 150, 0.5,
                            what=f"rag-embeddings healthy:\n{worker.log()}")
    client = openai.OpenAI(base_url=f"{embeddings['url']}/v1", api_key="unused")
    pair = client.embeddings.create(model="all-MiniLM-L6-v2",
                                    input=["my landlord wants the rent", "the landlord asks for rent owed",
                                           "photosynthesis in green plants"]).data
    rent, paraphrase, unrelated = (item.embedding for item in pair)
    assert cosine(rent, paraphrase) > cosine(rent, unrelated) + 0.3

    ocr = wait_until(lambda: healthy_replica(url, "vision-ocr"), 60, 0.5, what="vision-ocr healthy")
    answer = httpx.post(f"{ocr['url']}/ocr", files={"file": ("letter.png", letter())}, timeout=60)
    assert answer.status_code == 200 and "412.50" in answer.json()["text"]
