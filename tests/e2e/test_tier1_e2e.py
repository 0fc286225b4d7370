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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def healthy_replica(url: str, service: str) -> dict[str, Any] | None:
    found = discover(url, service)
    return found["workers"][0] if found and found["workers"] else None


def test_cpu_worker_serves_tier1_through_the_edge_proxy(processes: list[RmaProcess], tmp_path: Path) -> None:
    coordinator, url = start_coordinator(tmp_path, interval=1.0)
    processes.append(coordinator)
    worker = start_worker(processes, tmp_path, url, "cpu", "w-cpu")
    start_worker(processes, tmp_path, url, "edge", "w-edge")
    engines = wait_until(lambda: workers(url).get("w-cpu", {}).get("capabilities", {}).get("engines"), 30,
                         what="the cpu worker's engines")
    assert {"sentence-transformers", "tesseract", "llama-cpp"} <= set(engines)
    assert "vllm-vision" not in engines  # no `vllm` program here: the GPU engine is not offered
    for service in ("rag-embeddings", "vision-ocr", "llm-inference"):
        wait_until(lambda s=service: healthy_replica(url, s), 150, 0.5, what=f"{service} healthy:\n{worker.log()}")
    edge = wait_until(lambda: healthy_replica(url, "edge-proxy"), 60, 0.5, what="the edge proxy healthy")["url"]

    # The seed's short names, through the public gateway, with the official openai client.
    embeddings = openai.OpenAI(base_url=f"{edge}/service/rag/v1", api_key="unused", max_retries=0)

    def embed() -> list[Any] | None:
        """None until the edge proxy's table (refreshed every second) lists the replica."""
        try:
            return embeddings.embeddings.create(model="all-MiniLM-L6-v2", input=[
                "my landlord wants the rent", "the landlord asks for rent owed", "photosynthesis in green plants"]).data
        except openai.APIStatusError as error:
            assert error.status_code == 503, error
            return None

    pair = wait_until(embed, 20, 0.5, what="embeddings through the edge proxy")
    rent, paraphrase, unrelated = (item.embedding for item in pair)
    assert cosine(rent, paraphrase) > cosine(rent, unrelated) + 0.3

    answer = httpx.post(f"{edge}/service/ocr/ocr", files={"file": ("letter.png", letter())}, timeout=60)
    assert answer.status_code == 200 and "412.50" in answer.json()["text"]

    llm = openai.OpenAI(base_url=f"{edge}/service/llm/v1", api_key="unused")
    pieces = [chunk.choices[0].delta.content for chunk in llm.chat.completions.create(
        model="any", max_tokens=24, temperature=0, stream=True,
        messages=[{"role": "user", "content": "Name one kind of household debt."}])
        if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) >= 3  # streamed through the proxy chunk by chunk, not one buffered answer
