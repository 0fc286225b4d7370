"""rag-embeddings on a GPU: does the worker offer the CUDA engine, does the service run on it, how fast.

Starts the service through its driver with the `sentence-transformers-cuda` engine (the model
from MODEL_NAME, a local sentence-transformers folder), waits for /health, checks that a
paraphrase ranks closer than an unrelated sentence, and prints embeddings per second at
batch 32 and 256. Exits 1 when the engine is not offered or the service does not answer.

    MODEL_NAME=/path/to/model python bench/gpu_embeddings.py
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from rma.services import DRIVERS
from rma.services.base import Context
from rma.worker.engines import engines_by_service
from rma.worker.probe import Probe
from rma.worker.process import free_port

ENGINE = "sentence-transformers-cuda"
ROUNDS = 20


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def embed(url: str, texts: list[str]) -> list[list[float]]:
    answer = httpx.post(f"{url}/v1/embeddings", json={"model": "m", "input": texts}, timeout=60)
    answer.raise_for_status()
    return [item["embedding"] for item in answer.json()["data"]]


def main() -> int:
    offered = engines_by_service(Probe.system(), DRIVERS, os.environ).get("rag-embeddings", ())
    print(f"engines this worker offers for rag-embeddings: {', '.join(offered) or 'none'}")
    if ENGINE not in offered:
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context("127.0.0.1", free_port("127.0.0.1"), Path(tmp), env=dict(os.environ), engine=ENGINE)
        driver = DRIVERS["rag-embeddings"]
        driver.prepare(ctx)
        launch = driver.launch(ctx)
        log_path = Path(tmp) / "service.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(launch.argv, env={**os.environ, **launch.env}, stdout=log,
                                    stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{ctx.port}"
        try:
            started = time.monotonic()
            health: dict[str, object] = {}
            while time.monotonic() - started < 180 and proc.poll() is None:
                try:
                    answer = httpx.get(f"{url}/health", timeout=2)
                    health = answer.json()
                    if answer.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            print(f"health after {time.monotonic() - started:.1f} s: {health}")
            if proc.poll() is not None or not health:
                print(log_path.read_text()[-2000:])
                return 1
            a, b, c = embed(url, ["How do I pay my council tax arrears?",
                                  "What is the way to settle overdue council tax?",
                                  "The cat sat on the warm windowsill."])
            print(f"paraphrase {cosine(a, b):.3f} vs unrelated {cosine(a, c):.3f}")
            for batch in (32, 256):
                texts = [f"Client {i} owes £{i * 13} to a creditor for council tax and energy." for i in range(batch)]
                embed(url, texts)
                timer = time.perf_counter()
                for _ in range(ROUNDS):
                    embed(url, texts)
                rate = batch * ROUNDS / (time.perf_counter() - timer)
                print(f"embeddings/s on the GPU engine, batch {batch}: {rate:.0f}")
        finally:
            proc.terminate()
            proc.wait(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
