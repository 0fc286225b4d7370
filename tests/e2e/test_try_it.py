"""`rma up` as a newcomer runs it, then README's "Try it" calls against it, exactly as written there.

One pool for the module: `rma up` starts with its coordinator port taken (it must move and say
so), every service this machine can run turns healthy, each README block answers with real
output, `rma status` fits 80 columns, a second `rma up` on the same data dir refuses, and
Ctrl-C stops every process it started.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from procs import free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).parents[2]
RMA = Path(sys.executable).parent / "rma"
# What this kind of machine (no GPU; S3 on SeaweedFS, the graph on ArcadeDB) runs under `rma up`.
RUNNABLE_HERE = ("llm-inference", "vision-ocr", "rag-embeddings", "ner-extraction", "document-processing",
                 "notes-coa", "chromadb", "redis", "postgres", "minio", "neo4j", "edge-proxy", "load-balancer")
APPLICATIONS = RUNNABLE_HERE[:6]
READY_TIMEOUT_S = 300
# Each "Try it" block, in README order, and what its output must show: real answers, not just exit 0.
EXPECTED = (
    ("chat.completions", ("embeddings of 384 dimensions",)),
    # "Lowell" is only on the PDF's scanned page; the DOCX's entities come from ner-extraction.
    ("vision-ocr/ocr", ("British Gas", "Lowell", "MONEY £1,250.00", "CREDITOR Lowell", "DATE 2 June 2025")),
    ("notes-coa/convert", ("Dear Sam Taylor,", "£1,250.00", "£840", "What we will do")),
    ("psql", ("42",)),
    ("redis.Redis", ("hello from the pool", "PostgreSQL", "[['rent arrears']]", "Dear Sam Taylor", "['British Gas']")),
)


def try_it_blocks() -> list[tuple[str, str]]:
    """README's "Try it" code blocks as (language, code)."""
    section = (ROOT / "README.md").read_text().split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(bash|python)\n(.*?)```", section, re.S)


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    log: Path
    data: Path
    coordinator: str
    taken_port: int

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def edge(self) -> str:
        found = re.search(r"^edge-proxy +healthy +(http://\S+)$", self.text(), re.M)
        assert found, self.text()
        return found.group(1)


@pytest.fixture(scope="module")
def pool() -> Iterator[Up]:
    # Not pytest's tmp folder: a root `rma up` runs PostgreSQL as the postgres account, which cannot enter 0700.
    tmp = Path(tempfile.mkdtemp(prefix="rma-up-"))
    tmp.chmod(0o711)
    taken = socket.create_server(("127.0.0.1", free_port()))
    taken_port = taken.getsockname()[1]
    log = tmp / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(RMA), "up", "--port", str(taken_port), "--data-dir", str(tmp / "data"),
                                 "--heartbeat-interval", "1"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    try:
        found = wait_until(lambda: re.search(r"^Coordinator: (http://\S+)", log.read_text(), re.M), 60,
                           what="the coordinator's URL")
        yield Up(proc, log, tmp / "data", found.group(1), taken_port)
    finally:
        taken.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_taken_port_is_replaced_and_said_so(pool: Up) -> None:
    assert f"Port {pool.taken_port} is taken" in pool.text()
    assert not pool.coordinator.endswith(f":{pool.taken_port}")
    assert "RMA pool" in httpx.get(f"{pool.coordinator}/", timeout=5).text  # the dashboard


def test_every_service_this_machine_can_run_is_healthy_when_ready(pool: Up) -> None:
    ready = wait_until(lambda: re.search(r"^Ready: (\d+)/14 services healthy in (\d+) s(.*)$", pool.text(), re.M),
                       READY_TIMEOUT_S, 0.5, what=f"the ready line:\n{pool.text()}")
    gaps = {g["service"]: g for g in httpx.get(f"{pool.coordinator}/api/admin/gaps", timeout=5).json()["gaps"]}
    assert [s for s in RUNNABLE_HERE if gaps[s]["healthy_replicas"] < 1] == []
    assert int(ready.group(1)) == sum(1 for g in gaps.values() if g["healthy_replicas"] > 0)
    # Each uncovered service is named with its reason.
    for name, gap in gaps.items():
        if gap["healthy_replicas"] == 0:
            assert re.search(rf"{name} \([^)]+\)", ready.group(3)), ready.group(0)
    text, edge = pool.text(), pool.edge()
    for name in APPLICATIONS:
        assert re.search(rf"^{name} +healthy +{re.escape(edge)}/service/{name}/$", text, re.M), text
    assert "Detected CPU" in text and "Detected workers to run here" in text
    workers = httpx.get(f"{pool.coordinator}/api/admin/workers", timeout=5).json()["workers"]
    assert sorted(w["worker_type"] for w in workers) == ["cpu", "edge", "storage"]
    assert all(w["healthy"] for w in workers)


@pytest.mark.parametrize(("index", "marker", "shows"), [(i, *e) for i, e in enumerate(EXPECTED)],
                         ids=[e[0] for e in EXPECTED])
def test_readme_try_it_block_answers(pool: Up, index: int, marker: str, shows: tuple[str, ...]) -> None:
    wait_until(lambda: "Ready:" in pool.text(), READY_TIMEOUT_S, 0.5, what="the pool ready")
    wait_until(lambda: all_healthy(pool), 60, 0.5, what="every service healthy (a replica restarted?)")
    blocks = try_it_blocks()
    assert len(blocks) == len(EXPECTED), "a Try-it block was added or removed: update EXPECTED"
    language, code = blocks[index]
    assert marker in code
    code = (code.replace("http://127.0.0.1:8787", pool.edge()).replace("http://127.0.0.1:8080", pool.coordinator)
            .replace(".venv/bin/rma", str(RMA)))
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COORDINATOR_URL": pool.coordinator})
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    for expected in shows:
        assert expected in done.stdout, done.stdout


def all_healthy(pool: Up) -> bool:
    gaps = httpx.get(f"{pool.coordinator}/api/admin/gaps", timeout=5).json()["gaps"]
    return all(g["healthy_replicas"] > 0 for g in gaps if g["service"] in RUNNABLE_HERE)


def test_status_fits_an_80_column_terminal(pool: Up) -> None:
    wait_until(lambda: "Ready:" in pool.text(), READY_TIMEOUT_S, 0.5, what="the pool ready")
    done = subprocess.run([str(RMA), "status", "--coordinator", pool.coordinator], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(map(len, lines)) <= 80, done.stdout
    for name in RUNNABLE_HERE:
        assert re.search(rf"\b{name}\b", done.stdout), done.stdout


def test_a_second_up_on_the_same_data_dir_refuses(pool: Up) -> None:
    done = subprocess.run([str(RMA), "up", "--port", str(free_port()), "--data-dir", str(pool.data)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert f"another `rma up` (pid {pool.proc.pid}) is running on {pool.data}" in done.stderr


def test_ctrl_c_stops_every_process_it_started(pool: Up) -> None:
    """Last in the module: it ends the pool."""
    wait_until(lambda: "Ready:" in pool.text(), READY_TIMEOUT_S, 0.5, what="the pool ready")
    children = psutil.Process(pool.proc.pid).children(recursive=True)
    names = {c.name() for c in children}
    assert {"redis-server", "postgres", "weed", "java"} <= names, names
    os.killpg(pool.proc.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole group
    pool.proc.wait(60)
    assert pool.proc.returncode == 0, pool.text()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE
                                              for c in children):
        time.sleep(0.2)
    assert [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []
    # The next `rma up` brings the same workers back.
    assert sorted(p.parent.name for p in (pool.data / "workers").glob("*/worker.json")) == ["cpu", "edge", "storage"]
