"""What each hostile document costs document-processing or vision-ocr: its answer, the time, the peak memory.

Starts the app (`python -m rma.services.apps.documents` or `.ocr`, 2 threads) on a free loopback port,
sends each file of tests/services/hostile_files.py for that service once, and prints per file: the
status, seconds to the answer (at most --timeout), the peak resident memory of the app and its children
(sampled every 50 ms) over its memory at start, and the app's memory once the answer is in. To compare
with an older version, point --src at that version's src folder (e.g. from `git worktree add /tmp/old
<commit>`):

    .venv/bin/python bench/hostile_documents.py [--service vision-ocr] [--src /tmp/old/src] [--timeout 60]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from services import hostile_files as hostile  # noqa: E402  (the tests' corpus, one definition of it)

Corpus = dict[str, Callable[[], bytes]]
SERVICES: dict[str, tuple[str, str, Corpus]] = {  # service: its app's module, its route, its corpus
    "document-processing": ("documents", "/parse", {
        "docx, 190 MB of empty paragraphs": hostile.empty_paragraph_bomb,
        "docx, 190 MB of text paragraphs": hostile.text_paragraph_bomb,
        "pdf, a page inflating to 512 MB": hostile.flate_bomb_pdf,
        "docx, 50,000 honest paragraphs": hostile.long_docx,
        "small text letter": lambda: hostile.SMALL_TEXT,
    }),
    "vision-ocr": ("ocr", "/ocr", {
        "png, declares 50,000 x 50,000": lambda: hostile.png_declaring(50_000, 50_000),
        "png, declares 9,000 x 9,000": lambda: hostile.png_declaring(9_000, 9_000),
        "tiff, 150,000 frames": hostile.tiff_of_frames,
        "pdf, a 200-inch page": lambda: hostile.drawing_pdf(hostile.TOTAL_LINE, (14_400, 14_400)),
        "pdf, 300 MB of paths": hostile.content_bomb,
        "pdf, 10^8 lines in nested forms": hostile.forms_bomb,
        "pdf, 200,000 page fills": hostile.fills_bomb,
        "small pdf letter": lambda: hostile.drawing_pdf(hostile.TOTAL_LINE),
    }),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_rss(pid: int) -> int:
    try:
        main = psutil.Process(pid)
        return sum(p.memory_info().rss for p in (main, *main.children(recursive=True)))
    except psutil.NoSuchProcess:
        return 0


def send(url: str, name: str, data: bytes, timeout: float, pid: int) -> tuple[str, float, int]:
    """Upload `data`; the answer's status (or why none came), the seconds it took, and the peak memory of `pid`'s
    process tree meanwhile."""
    peak, done = tree_rss(pid), threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, tree_rss(pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    began = time.monotonic()
    try:
        status = str(httpx.post(url, files={"file": (name, data)}, timeout=timeout).status_code)
    except httpx.TimeoutException:
        status = "none"
    except httpx.HTTPError as exc:
        status = type(exc).__name__[:8]
    seconds = time.monotonic() - began
    done.set()
    watcher.join()
    return status, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--service", choices=sorted(SERVICES), default="document-processing")
    parser.add_argument("--src", default=str(ROOT / "src"), help="the rma source folder to run")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer")
    args = parser.parse_args()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": args.src}
    module, route, corpus = SERVICES[args.service]
    app = subprocess.Popen([sys.executable, "-m", f"rma.services.apps.{module}", "--port", str(port),
                            "--threads", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        start = tree_rss(app.pid)
        print(f"{args.service} from {args.src}: {start / 2**20:.0f} MB at start")
        print(f"{'file':<36}{'bytes':>11}{'answer':>8}{'seconds':>9}{'peak MB':>9}{'after MB':>10}")
        for name, make in corpus.items():
            data = make()
            status, seconds, peak = send(url + route, name, data, args.timeout, app.pid)
            print(f"{name:<36}{len(data):>11,}{status:>8}{seconds:>9.1f}{(peak - start) / 2**20:>9.0f}"
                  f"{tree_rss(app.pid) / 2**20:>10.0f}")
            if app.poll() is not None:
                print(f"the app exited ({app.returncode})")
                break
    finally:
        app.kill()
        app.wait()


if __name__ == "__main__":
    main()
