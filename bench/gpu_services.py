"""llm-inference and vision-ocr on their vLLM engines, on a machine with an NVIDIA GPU.

Starts each service through its driver with its GPU engine (`vllm`, then `vllm-vision`: one at a
time, as each vLLM takes GPU_MEMORY_UTILIZATION of the GPU), waits for /health and prints the
seconds that took, then:

* llm-inference: streamed chat tokens per second (vLLM's own count) and first-token latency;
* vision-ocr: seconds per page through `POST /ocr` for a short letter and a dense A4 page, with the
  words that came back, and one OpenAI chat with the letter as image content through its /v1.

Needs an NVIDIA GPU, the `vllm` program on PATH (the GPU image's /opt/vllm/bin) and both models on
disk (MODEL_NAME, VISION_MODEL_NAME; nothing is downloaded: fill the Hugging Face cache first with
`hf download <id>`). Exits 1 saying which is missing.

    python bench/gpu_services.py [--rounds 3] [--only llm|ocr] [--start-timeout 900]
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import openai
from PIL import Image, ImageDraw, ImageFont

from rma.services import DRIVERS
from rma.services.apps.vlm_ocr import png_data_url
from rma.services.base import Context, find_binary
from rma.worker.engines import engines_by_service
from rma.worker.probe import Probe
from rma.worker.process import free_port
from rma.worker.supervisor import Policy
from tier1 import page as dense_page

ENGINES = {"llm": ("llm-inference", "vllm"), "ocr": ("vision-ocr", "vllm-vision")}
LETTER = ("Dear Ms Patel", "Your council tax balance is 412.50 GBP", "Please pay by 14 March 2025")
LETTER_WORDS = ("Patel", "412.50", "14 March 2025")
DENSE_WORDS = tuple(f"{row * 13}.50" for row in range(40))  # the amounts on tier1's A4 page


def unavailable(service: str, engine: str) -> str | None:
    """Why this machine cannot run `engine`, as the worker would judge it; None when it can."""
    if find_binary("vllm") is None:
        return "no `vllm` program on PATH (the GPU image has /opt/vllm/bin/vllm)"
    if engine in engines_by_service(Probe.system(), DRIVERS, os.environ).get(service, ()):
        return None
    return DRIVERS[service].missing(engine, os.environ) or f"the worker does not offer {engine}"


@contextmanager
def started(service: str, engine: str, folder: Path, timeout: float) -> Iterator[str]:
    """The service from its driver with the worker's environment; its whole process group ends afterwards."""
    ctx = Context("127.0.0.1", free_port("127.0.0.1"), folder / service, env=dict(os.environ), engine=engine)
    driver = DRIVERS[service]
    driver.prepare(ctx)
    launch = driver.launch(ctx)
    log_path = folder / f"{service}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(launch.argv, env={**os.environ, **launch.env}, stdout=log, stderr=log,
                                cwd=launch.cwd, start_new_session=True)
    url, began, health = f"http://127.0.0.1:{ctx.port}", time.monotonic(), "no answer"
    try:
        while proc.poll() is None and time.monotonic() - began < timeout:
            with suppress(httpx.TransportError):
                answer = httpx.get(f"{url}/health", timeout=5)
                health = answer.text
                if answer.status_code == 200:
                    break
            time.sleep(1)
        else:
            raise SystemExit(f"{service} ({engine}) not healthy after {time.monotonic() - began:.0f} s "
                             f"(last /health: {health}):\n{log_path.read_text()[-3000:]}")
        waited = time.monotonic() - began
        limit = Policy().start_timeout_s
        print(f"{service} ({engine}) healthy after {waited:.0f} s"
              + (f": over the worker's {limit:g} s start timeout, so a worker would restart it" if waited > limit
                 else ""))
        yield url
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever vLLM left: the next engine needs the GPU memory
        proc.wait()


def llm(url: str, rounds: int) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    model = client.models.list().data[0].id
    rates, firsts = [], []
    for _ in range(rounds + 1):  # the first round warms up
        began, first, pieces, tokens = time.perf_counter(), 0.0, 0, 0
        stream = client.chat.completions.create(
            model=model, max_tokens=256, temperature=0, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Explain what a debt relief order is, in a few paragraphs."}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces += 1
                first = first or time.perf_counter() - began
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        tokens = tokens or pieces  # a server without usage in streams: one token a piece
        rates.append((tokens - 1) / (time.perf_counter() - began - first))
        firsts.append(first)
    print(f"LLM {model}: {sum(rates[1:]) / rounds:.1f} tokens/s streamed (256 max); "
          f"first token after {sum(firsts[1:]) / rounds * 1000:.0f} ms")


def letter() -> bytes:
    """A short letter at about 200 dpi, as the OCR tests draw it."""
    image = Image.new("RGB", (1400, 500), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=36)
    for row, line in enumerate(LETTER):
        draw.text((80, 80 + row * 110), line, fill="black", font=font)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def read(url: str, data: bytes) -> str:
    answer = httpx.post(f"{url}/ocr", files={"file": ("page.png", data)}, timeout=600)
    answer.raise_for_status()
    text: str = answer.json()["text"]
    return text


def ocr(url: str, rounds: int) -> None:
    for name, data, words in (("letter, 3 lines", letter(), LETTER_WORDS), ("A4, 40 lines", dense_page(), DENSE_WORDS)):
        text = read(url, data)  # warm-up
        began = time.perf_counter()
        for _ in range(rounds):
            text = read(url, data)
        found = [word for word in words if word in text]
        print(f"OCR ({name}): {(time.perf_counter() - began) / rounds:.2f} s/page; "
              f"{len(found)}/{len(words)} expected words back; text starts: {text[:120]!r}")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    image = {"type": "image_url", "image_url": {"url": png_data_url(Image.open(io.BytesIO(letter())))}}
    answer = client.chat.completions.create(
        model=client.models.list().data[0].id, max_tokens=64, temperature=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": "How much does this letter ask for?"},
                                               image]}])
    print(f"OpenAI chat with the letter as image content, through vision-ocr's /v1: "
          f"{answer.choices[0].message.content!r}")


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=positive, default=3, help="measured rounds after one warm-up")
    parser.add_argument("--only", choices=sorted(ENGINES), help="one service only")
    parser.add_argument("--start-timeout", type=float, default=900, help="seconds a model may take to load")
    args = parser.parse_args()
    probe = Probe.system()
    gpus = probe.nvml() or probe.nvidia_smi()
    if not gpus:
        print("no NVIDIA GPU found (neither NVML nor nvidia-smi): this benchmark needs one")
        return 1
    print("GPUs: " + "; ".join(f"{gpu.name}, {gpu.memory_mb} MB" for gpu in gpus))
    chosen = [ENGINES[args.only]] if args.only else list(ENGINES.values())
    for service, engine in chosen:
        reason = unavailable(service, engine)
        if reason:
            print(f"{service} cannot run on {engine} here: {reason}")
            return 1
    with tempfile.TemporaryDirectory() as tmp:
        for service, engine in chosen:
            with started(service, engine, Path(tmp), args.start_timeout) as url:
                (llm if service == "llm-inference" else ocr)(url, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
