"""vision-ocr's vllm-vision engine as the worker starts it, over real sockets, with a stand-in `vllm` on PATH.

The stand-in speaks the part of `vllm serve`'s OpenAI API the app uses and reads what it is sent:
it answers a chat with the pixel size of the image it decoded, the prompt's first words and the
temperature, so an answer proves the page and the prompt got through. vLLM itself needs a GPU;
bench/gpu_services.py runs the same path on the real program.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from PIL import Image

from procs import wait_until
from rma.services import DRIVERS
from rma.services.apps.common import LOAD_FAILED_EXIT
from rma.services.apps.vlm_ocr import PROMPT, png_data_url
from rma.services.base import Context
from rma.worker.process import free_port
from services.test_tier1_ocr import letter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]
MODEL = "org/vision-model"
STAND_IN = '''#!{python}
"""A stand-in for `vllm serve MODEL --host H --port P ...`: /health, /v1/models, /v1/chat/completions."""
import base64, io, json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from PIL import Image

args = sys.argv[1:]
with open(os.environ["STAND_IN_RECORD"], "w") as record:
    json.dump({{"argv": args, "pid": os.getpid(), "offline": os.environ.get("HF_HUB_OFFLINE")}}, record)
if os.environ.get("STAND_IN_FAIL"):
    sys.exit(print(os.environ["STAND_IN_FAIL"], file=sys.stderr, flush=True) or 1)
model, ready_at = args[1], time.monotonic() + float(os.environ.get("STAND_IN_LOAD_S", "0"))
release, HOLD_S = os.path.join(os.path.dirname(os.environ["STAND_IN_RECORD"]), "release"), 10


def read(body):
    content = body["messages"][-1]["content"]
    prompt = " ".join(part["text"] for part in content if part["type"] == "text")
    url = next(part["image_url"]["url"] for part in content if part["type"] == "image_url")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    return [f"{{image.width}}x{{image.height}} {{image.format}}", " ".join(prompt.split()[:3]),
            f"temperature {{body.get('temperature')}}"]


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200 if time.monotonic() >= ready_at else 503, {{}})
        elif self.path == "/v1/models":
            self.reply(200, {{"object": "list", "data": [{{"id": model, "object": "model", "owned_by": "vllm"}}]}})
        else:
            self.reply(404, {{"error": {{"message": "not found"}}}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self.reply(404, {{"error": {{"message": "not found"}}}})
        lines, began = read(body), time.monotonic()
        head = {{"id": "chat-1", "created": 0, "model": body["model"]}}
        if not body.get("stream"):
            message = {{"role": "assistant", "content": "\\n".join(lines)}}
            return self.reply(200, {{**head, "object": "chat.completion", "usage": {{
                "prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}},
                "choices": [{{"index": 0, "message": message, "finish_reason": "stop"}}]}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for number, line in enumerate(lines):
            delta = {{"index": 0, "delta": {{"content": line + "\\n"}}, "finish_reason": None}}
            chunk = {{**head, "object": "chat.completion.chunk", "choices": [delta]}}
            self.wfile.write(f"data: {{json.dumps(chunk)}}\\n\\n".encode())
            while number == 0 and not os.path.exists(release) and time.monotonic() < began + HOLD_S:
                time.sleep(0.05)  # the rest only once the client has the first piece (or after HOLD_S)
        self.wfile.write(b"data: [DONE]\\n\\n")


ThreadingHTTPServer((args[args.index("--host") + 1], int(args[args.index("--port") + 1])), Handler).serve_forever()
'''


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose `vllm` is the stand-in, for the front of PATH."""
    folder = tmp_path_factory.mktemp("bin")
    program = folder / "vllm"
    program.write_text(STAND_IN.format(python=sys.executable))
    program.chmod(0o755)
    return folder


class Adapter:
    """The vllm-vision engine launched from its driver, as the worker launches it."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, folder: Path) -> None:
        self.proc, self.url, self.folder = proc, url, folder

    def record(self) -> dict[str, object]:
        """What the stand-in `vllm` was started with."""
        return wait_until(lambda: json.loads((self.folder / "vllm.json").read_text()), 10, what="the stand-in's start")

    def health(self) -> httpx.Response:
        return wait_until(lambda: httpx.get(f"{self.url}/health", timeout=5), 10, 0.05, "the app to answer")

    def health_until(self, status: str) -> httpx.Response:
        """The first /health answer whose JSON says `status` (ok, loading, failed)."""
        def answered() -> httpx.Response | None:
            answer = self.health()
            return answer if answer.json()["status"] == status else None

        answer: httpx.Response = wait_until(answered, 15, 0.05, f"/health {status}; log:\n{self.log()}")
        return answer

    def log(self) -> str:
        return (self.folder / "service.log").read_text()


@contextmanager
def adapter(stand_in: Path, folder: Path, **stand_in_env: str) -> Iterator[Adapter]:
    ctx = Context("127.0.0.1", free_port("127.0.0.1"), folder, env={"VISION_MODEL_NAME": MODEL}, engine="vllm-vision")
    launch = DRIVERS["vision-ocr"].launch(ctx)
    env = {**os.environ, **launch.env, "PATH": f"{stand_in}{os.pathsep}{os.environ['PATH']}",
           "STAND_IN_RECORD": str(folder / "vllm.json"), **stand_in_env}
    with open(folder / "service.log", "wb") as log:
        proc = subprocess.Popen(launch.argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=launch.cwd)
    try:
        yield Adapter(proc, f"http://127.0.0.1:{ctx.port}", folder)
    finally:
        proc.terminate()
        proc.wait(15)


Service = tuple[Adapter, dict[str, httpx.Response]]


@pytest.fixture(scope="module")
def service(stand_in: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The app on a stand-in that takes 1.5 s to load, with what it answered while loading."""
    with adapter(stand_in, tmp_path_factory.mktemp("vlm"), STAND_IN_LOAD_S="1.5") as app:
        early = {"health": app.health(), "ocr": httpx.post(f"{app.url}/ocr", files={"file": letter()}, timeout=10),
                 "models": httpx.get(f"{app.url}/v1/models", timeout=10)}
        app.health_until("ok")
        yield app, early


def test_nothing_is_served_before_vllm_is_ready(service: Service) -> None:
    app, early = service
    assert early["health"].status_code == 503 and early["health"].json()["status"] == "loading"
    assert f"vllm serve {MODEL} loading" in early["health"].json()["reason"]
    for answer in (early["ocr"], early["models"]):
        assert answer.status_code == 503 and "still loading" in answer.json()["error"]["message"]
    assert app.health().json() == {"status": "ok", "model": MODEL}


def test_vllm_is_started_on_a_loopback_port_with_the_drivers_settings(
        service: Service) -> None:
    record = service[0].record()
    argv = record["argv"]
    assert isinstance(argv, list) and argv[:8] == ["serve", MODEL, "--gpu-memory-utilization", "0.90",
                                                   "--max-model-len", "4096", "--limit-mm-per-prompt", '{"image": 1}']
    assert argv[8:11] == ["--host", "127.0.0.1", "--port"] and int(argv[11]) > 0
    assert record["offline"] == "1"  # never a download at run time


def test_each_page_goes_to_the_model_and_comes_back_as_tesseract_answers(
        service: Service) -> None:
    read = f"{' '.join(PROMPT.split()[:3])}\ntemperature 0"
    answer = httpx.post(f"{service[0].url}/ocr", files={"file": ("letter.png", letter())}, timeout=30)
    assert answer.status_code == 200, answer.text
    (page,) = answer.json()["pages"]
    assert page == {"page": 1, "text": f"1400x500 PNG\n{read}",
                    "lines": [{"text": text, "box": None, "confidence": None}
                              for text in ("1400x500 PNG", *read.splitlines())]}
    answer = httpx.post(f"{service[0].url}/ocr", files={"file": ("letter.pdf", letter("PDF", pages=2))}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [p["page"] for p in body["pages"]] == [1, 2]
    assert body["text"] == f"1400x500 PNG\n{read}\n\n1400x500 PNG\n{read}"  # PDF pages rendered at 200 dpi


@pytest.mark.parametrize(("data", "status", "says"), [
    (b"", 400, "empty"),
    (b"hello, not an image", 415, "not an image"),
    (b"%PDF-1.7 truncated garbage", 400, "corrupt"),
    (b"x" * (21 * 2**20), 413, "larger than"),
])
def test_bad_uploads_get_a_4xx_json_error(service: Service, data: bytes,
                                          status: int, says: str) -> None:
    answer = httpx.post(f"{service[0].url}/ocr", files={"file": ("x.png", data)}, timeout=30)
    assert answer.status_code == status and says in answer.json()["error"]["message"], answer.text
    missing = httpx.post(f"{service[0].url}/ocr", data={"other": "x"}, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    assert service[0].health().status_code == 200


def test_openai_chat_with_an_image_passes_through_streamed_or_not(
        service: Service) -> None:
    client = openai.OpenAI(base_url=f"{service[0].url}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == [MODEL]
    image = {"type": "image_url", "image_url": {"url": png_data_url(Image.new("RGB", (64, 32), "white"))}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "Read this letter please"}, image]}]
    expected = "64x32 PNG\nRead this letter\ntemperature 0.5"
    answer = client.chat.completions.create(model=MODEL, messages=messages, temperature=0.5)
    assert answer.choices[0].message.content == expected
    began, pieces = time.monotonic(), []
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, temperature=0.5, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            if len(pieces) == 1:
                first = time.monotonic() - began
                (service[0].folder / "release").touch()  # the stand-in holds the rest until now
    assert "".join(pieces) == expected + "\n" and len(pieces) == 3
    assert first < 5  # the first piece came through alone: a buffering proxy would have waited out the hold


def test_a_model_that_fails_to_load_fails_health_with_the_reason(stand_in: Path, tmp_path: Path) -> None:
    with adapter(stand_in, tmp_path, STAND_IN_FAIL="CUDA out of memory (stand-in)") as app:
        health = app.health_until("failed")
        assert health.status_code == 503
        assert health.json()["reason"] == f"vllm serve {MODEL} exited with code 1 before it was ready"
        assert app.proc.wait(10) == LOAD_FAILED_EXIT  # the worker restarts it, then places it elsewhere
        assert "CUDA out of memory (stand-in)" in app.log()  # vLLM's own output is in the service log


def test_vllm_dying_after_ready_fails_health_and_ends_the_app(stand_in: Path, tmp_path: Path) -> None:
    with adapter(stand_in, tmp_path) as app:
        app.health_until("ok")
        os.kill(int(str(app.record()["pid"])), signal.SIGKILL)
        health = app.health_until("failed")
        assert health.status_code == 503 and health.json()["reason"] == f"vllm serve {MODEL} exited with code -9"
        assert app.proc.wait(10) not in (0, None)


def test_a_hung_vllm_reads_unhealthy_and_stopping_the_app_stops_vllm(stand_in: Path, tmp_path: Path) -> None:
    with adapter(stand_in, tmp_path) as app:
        app.health_until("ok")
        pid = int(str(app.record()["pid"]))
        os.kill(pid, signal.SIGSTOP)
        try:
            hung = app.health()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert hung.status_code == 503 and hung.json()["status"] == "unhealthy"
        assert app.health().status_code == 200
        app.proc.terminate()
        app.proc.wait(15)
    assert not psutil.pid_exists(pid)
