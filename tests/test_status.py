"""`rma status` in an 80-column terminal: whole names, short reasons; `--wide` and `--json` for the rest."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from procs import RmaProcess, start_coordinator
from rma.catalog import SERVICES, Kind
from rma.gap_reasons import short_reason
from rma.placement import Pool, WorkerState, gap_report
from rma.placement.feasible import check
from rma.status import show_status

NAMES = [s.name for s in SERVICES]
TOKEN = "adm-status-test"


def worker(worker_id: str, kind: str, statuses: dict[str, Any], *, healthy: bool = True, age: float = 2.4,
           host: str = "192.168.10.23", mesh: dict[str, Any] | None = None) -> dict[str, Any]:
    """One entry of GET /api/admin/workers, as coordinator/routes.py writes it."""
    return {
        "worker_id": worker_id, "worker_type": kind, "host": host, "tunnel_url": None,
        "healthy": healthy, "is_healthy": healthy, "status": "healthy" if healthy else "down",
        "assigned_services": list(statuses), "services_status": statuses,
        "capabilities": {"worker_type": kind}, "current_load": 0.37, "metrics": {}, "holds_data": [],
        "registered_at": 1_760_000_000.0, "last_heartbeat": 1_760_000_100.0, "age_seconds": age, "mesh": mesh,
    }


def state(name: str, restarts: int = 0) -> dict[str, Any]:
    return {"state": name, "port": None, "restarts": restarts, "message": ""}


WORKERS = [
    worker("cpu-laptop-ana", "cpu", {"vision-ocr": state("healthy"), "document-processing": state("starting"),
                                     "ner-extraction": state("healthy"), "notes-coa": state("crashed", 3)}),
    worker("gpu-gtx1650-bilal", "gpu", {"rag-embeddings": state("starting")}),
    worker("storage-redis-cho", "storage", {"redis": state("healthy")}, host="198.19.0.7",
           mesh={"address": "198.19.0.7/16", "groups": ["storage"], "expires": time.time() + 20 * 3600 + 60,
                 "tunnels": {"direct": 2, "relayed": 1, "lighthouse_rtt_ms": 0.42}}),
    # The seed's own agent reports bare state strings; a generated id is "worker-" and 12 hex digits.
    worker("worker-3f9a1c07be42", "cpu", {"ner-extraction": "running"}, age=0.4),
    # The longest id the protocol accepts, on a worker that was handed every service and is now down.
    worker("w" * 64, "gpu", {name: state("stopped") for name in NAMES}, healthy=False, age=7300.0),
]

# GET /api/admin/gaps for that pool; the reasons are the texts placement/gaps.py writes.
CPU_LLM = ("1 of 4 healthy workers: vllm needs a GPU worker; engine llama-cpp not available; "
           "1 of 4 healthy workers: vllm needs 8192 MB of GPU memory, worker has 4096 MB; "
           "llama-cpp runs tier-1 services on CPU workers only; 2 of 4 healthy workers: needs a worker of kind gpu")


def gap(service: str, status: str, reason: str = "", assigned: int = 0, healthy: int = 0) -> dict[str, Any]:
    s = next(s for s in SERVICES if s.name == service)
    return {"service": service, "required_type": s.kind.value, "priority": s.priority, "port": s.port,
            "current_workers": assigned, "healthy_replicas": healthy, "status": status, "reason": reason}


def stores_reason(engine: str) -> str:
    return (f"3 of 4 healthy workers: needs a worker of kind storage; "
            f"1 of 4 healthy workers: engine {engine} not available")


EDGE = "4 of 4 healthy workers: needs a worker of kind edge"
GAP_LIST = [
    gap("chromadb", "critical", stores_reason("chroma")),
    gap("coordinator", "critical", EDGE),
    gap("edge-proxy", "critical", EDGE),
    gap("llm-inference", "critical", CPU_LLM),
    gap("document-processing", "critical", "assigned to 1 worker(s), none healthy yet", assigned=1),
    gap("load-balancer", "critical", EDGE),
    gap("rag-embeddings", "critical", "assigned to 1 worker(s), none healthy yet", assigned=1),
    gap("notes-coa", "critical", "assigned to 1 worker(s), none healthy yet", assigned=1),
    gap("postgres", "critical", stores_reason("postgres")),
    gap("minio", "critical", stores_reason("minio")),
    gap("neo4j", "critical", stores_reason("neo4j")),
    gap("vision-ocr", "warning", assigned=1, healthy=1),
    gap("ner-extraction", "ok", assigned=2, healthy=2),
    gap("redis", "ok", assigned=1, healthy=1),
]
WORKERS_ANSWER = {"workers": WORKERS, "total": len(WORKERS), "healthy": 4}
GAPS_ANSWER = {
    "gaps": GAP_LIST, "critical_gaps": [g for g in GAP_LIST if g["status"] == "critical"],
    "warnings": [g for g in GAP_LIST if g["status"] == "warning"],
    "summary": {"total_services": 14, "covered": 3, "needs_attention": 12},
}


def coordinator(request: httpx.Request) -> httpx.Response:
    """The two admin routes, behind the admin token."""
    if request.headers.get("authorization") != f"Bearer {TOKEN}":
        return httpx.Response(401, json={"error": "admin token required"})
    answers = {"/api/admin/workers": WORKERS_ANSWER, "/api/admin/gaps": GAPS_ANSWER}
    if request.url.path not in answers:
        return httpx.Response(404, json={"error": "not found"})
    return httpx.Response(200, json=answers[request.url.path])


def shown(**flags: Any) -> tuple[int, str]:
    console = Console(width=80, record=True, color_system=None)
    code = show_status("http://coordinator.test", TOKEN, console, transport=httpx.MockTransport(coordinator), **flags)
    return code, console.export_text()


def first_cells(text: str, header: str) -> list[str]:
    """The first column of the table whose header row starts with `header`, line by line, as drawn."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"┃ {header}\s", line))
    cells = []
    for line in lines[start + 2:]:
        if not line.startswith("│"):
            break
        cells.append(line.split("│")[1].strip())
    return cells


def why_cells(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line.startswith("│ ")]
    return {cells[1].strip(): cells[-2].strip() for line in lines if len(cells := line.split("│")) == 6
            and cells[1].strip() in NAMES}


def test_the_default_view_fits_80_columns_and_keeps_every_name_whole() -> None:
    code, text = shown()
    assert code == 0
    too_long = [line for line in text.splitlines() if len(line) > 80]
    assert not too_long, "\n".join(too_long)
    assert first_cells(text, "service") == [g["service"] for g in GAP_LIST]  # all 14, one line each, uncut
    assert sorted(first_cells(text, "service")) == sorted(NAMES)
    assert "…" not in text
    # The workers' services: each whole name followed by its state's mark, the seed's bare state too.
    for mark in ("vision-ocr✓", "document-processing~", "notes-coa✗", "rag-embeddings~", "redis✓",
                 "ner-extraction✓", "load-balancer✗"):
        assert mark in text
    assert "worker-3f9a1c07be42" in text and "storage-redis-cho" in text


def test_the_default_view_says_why_in_a_few_words() -> None:
    _, text = shown()
    why = why_cells(text)
    assert why["coordinator"] == why["edge-proxy"] == why["load-balancer"] == "needs edge worker"
    assert why["minio"] == "engine minio missing" and why["chromadb"] == "engine chroma missing"
    assert why["llm-inference"] == "engine llama-cpp missing"  # the nearest miss, not the wrong kinds
    assert why["document-processing"] == why["rag-embeddings"] == "assigned, starting"
    assert why["notes-coa"] == "assigned, crashed"  # from the worker's report, more than "none healthy yet"
    assert why["redis"] == ""
    assert "healthy workers:" not in text and "192.168.10.23" not in text


def test_wide_shows_every_column_and_the_full_reasons() -> None:
    code, text = shown(wide=True)
    assert code == 0
    assert sorted(first_cells(text, "service")) == sorted(NAMES)
    for header in ("host", "mesh", "load", "last beat", "priority", "port", "assigned", "healthy"):
        assert f" {header} " in text
    flat = " ".join(text.split())  # a worker on the mesh: its group, its certificate, its tunnels
    assert "storage, 20h left, 2 direct, 1 relayed, lighthouse 0.4 ms" in flat.replace("│", "").replace("  ", " ")
    assert "redis (healthy)" in text and "notes-coa (crashed)" in text and "ner-extraction (running)" in text
    assert "192.168.10.23" in text and "w" * 64 in text
    flat = " ".join(text.split())
    for g in GAP_LIST:
        for group in re.split(r"; (?=\d+ of \d+ healthy workers: )", g["reason"]):
            assert " ".join(group.split()) in flat, group


def test_json_prints_both_answers_as_they_came() -> None:
    code, text = shown(as_json=True)
    assert code == 0
    assert json.loads(text) == {"workers": WORKERS_ANSWER, "gaps": GAPS_ANSWER}


def test_a_refused_or_unreachable_coordinator_is_exit_code_1() -> None:
    console = Console(width=80, record=True, color_system=None)
    assert show_status("http://coordinator.test", "wrong", console, transport=httpx.MockTransport(coordinator)) == 1
    assert "HTTP 401: admin token required" in " ".join(console.export_text().split())

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    console = Console(width=80, record=True, color_system=None)
    assert show_status("http://coordinator.test", TOKEN, console, transport=httpx.MockTransport(unreachable)) == 1
    assert "cannot read the coordinator at http://coordinator.test" in console.export_text()


@pytest.mark.parametrize(("reason", "states", "short"), [
    ("", [], ""),
    ("no healthy workers", [], "no healthy workers"),
    ("1 of 1 healthy workers: needs a worker of kind edge", [], "needs edge worker"),
    ("assigned to 2 worker(s), none healthy yet", ["starting", "failed"], "assigned, failed"),
    ("assigned to 1 worker(s), none healthy yet", [], "assigned, starting"),
    ("2 of 3 healthy workers: needs a worker of kind gpu; 1 of 3 healthy workers: can run it: placed at its "
     "next heartbeat", [], "placed at next heartbeat"),
    ("1 of 2 healthy workers: worker claims gpu but reports no GPU; 1 of 2 healthy workers: "
     "vllm needs 8192 MB of GPU memory, 2048 MB free", [], "no GPU detected"),
    ("1 of 1 healthy workers: llama-cpp needs 4096 MB RAM, worker has 2048 MB", [], "needs 4096 MB RAM"),
    ("1 of 1 healthy workers: worker reports no engine list, so only cpu services", [], "no engine list"),
    ("1 of 1 healthy workers: a future verdict", [], "a future verdict"),  # unknown text: shown whole
    ("needs a shared store: this coordinator keeps the pool in its own SQLite file", [], "needs a shared store"),
])
def test_short_reasons(reason: str, states: list[str], short: str) -> None:
    assert short_reason(reason, states) == short


def every_verdict() -> set[str]:
    """Each "no" placement can give, from the gap report and `check` over a varied pool."""
    pool_workers = [
        WorkerState("cpu", Kind.CPU, ram_mb=1024, engines=frozenset({"spacy"})),
        WorkerState("gpu-small", Kind.GPU, has_gpu=True, gpu_memory_mb=2048, ram_mb=65536,
                    engines=frozenset({"vllm", "sentence-transformers-cuda", "spacy"})),
        WorkerState("gpu-none", Kind.GPU, has_gpu=False, engines=frozenset({"vllm"})),
        WorkerState("seed", Kind.STORAGE),
        WorkerState("crashy", Kind.CPU, engines=frozenset({"spacy"}), failed=frozenset({"ner-extraction"})),
    ]
    pool = Pool.of(pool_workers)
    verdicts = set()
    for g in gap_report(pool_workers, pool):
        for group in re.split(r"\d+ of \d+ healthy workers: ", g.reason):
            verdicts |= {v for v in group.strip().removesuffix(";").split("; ") if v}
    full = WorkerState("full", Kind.GPU, has_gpu=True, gpu_memory_mb=10_000, ram_mb=3000,
                       engines=frozenset({"vllm", "vllm-vision", "sentence-transformers-cuda", "spacy"}))
    busy = WorkerState("busy", Kind.GPU, has_gpu=True, gpu_memory_mb=10_000, ram_mb=12_000,
                       engines=frozenset({"vllm", "vllm-vision", "sentence-transformers-cuda", "spacy"}))
    for service in SERVICES:
        for machine in (full, busy):
            verdicts |= set(check(service, machine, pool, [s.name for s in SERVICES]).reason.split("; "))
        verdicts.add(check(service, WorkerState("down", Kind.CPU, healthy=False), pool, []).reason)
    return verdicts - {""}


def test_every_verdict_placement_gives_has_a_short_form() -> None:
    verdicts = every_verdict()
    assert len(verdicts) >= 10, verdicts  # the pool above reaches most of feasible.py's reasons
    for verdict in verdicts:
        short = short_reason(f"1 of 1 healthy workers: {verdict}")
        # Known (an unknown verdict is shown whole), and short: only the longest engine names pass 35 columns.
        assert short != verdict and len(short) <= 42, (verdict, short)


@pytest.mark.slow
def test_rma_status_against_a_real_coordinator(tmp_path: Path, processes: list[RmaProcess]) -> None:
    coordinator_process, url = start_coordinator(tmp_path, interval=30)  # store-7 stays healthy throughout
    processes.append(coordinator_process)
    answer = httpx.post(f"{url}/api/worker/register", timeout=5, json={
        "worker_id": "store-7", "advertise_host": "127.0.0.1",
        "capabilities": {"worker_type": "storage", "engines": ["redis-server"]}}).json()
    httpx.post(f"{url}/api/worker/heartbeat", timeout=5, headers={"Authorization": f"Bearer {answer['worker_token']}"},
               json={"worker_id": "store-7", "services_status": {"redis": {"state": "healthy"}}})

    def rma_status(*flags: str) -> str:
        done = subprocess.run([sys.executable, "-m", "rma", "status", "--coordinator", url, *flags],
                              capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "80"})
        assert done.returncode == 0, done.stderr
        return done.stdout

    text = rma_status()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert sorted(first_cells(text, "service")) == sorted(NAMES)
    assert "store-7" in text and "redis✓" in text
    assert why_cells(text)["chromadb"] == "engine chroma missing"
    wide = rma_status("--wide")
    assert "redis (healthy)" in wide and "engine chroma not available" in wide
    answers = json.loads(rma_status("--json"))
    assert [w["worker_id"] for w in answers["workers"]["workers"]] == ["store-7"]
    assert {g["service"] for g in answers["gaps"]["gaps"]} == set(NAMES)
