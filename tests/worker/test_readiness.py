"""What `rma up` prints, from snapshots of its workers: each line once, applications with their edge URL."""

from __future__ import annotations

from rma.catalog import Kind
from rma.protocol import ServiceStatus
from rma.worker.readiness import PROGRESS_EVERY_S, Progress, WorkerSnapshot, summary


def st(state: str, port: int, message: str = "") -> ServiceStatus:
    return ServiceStatus(state=state, port=port, message=message)


CPU_STARTING = WorkerSnapshot(Kind.CPU, ("ner-extraction", "llm-inference"),
                              {"ner-extraction": st("healthy", 8108), "llm-inference": st("starting", 8105)})
EDGE_STARTING = WorkerSnapshot(Kind.EDGE, ("edge-proxy",), {"edge-proxy": st("starting", 8787)})
EDGE_UP = WorkerSnapshot(Kind.EDGE, ("edge-proxy",), {"edge-proxy": st("healthy", 8787)})
STORES = WorkerSnapshot(Kind.STORAGE, ("redis",), {"redis": st("healthy", 6380)})


def test_applications_wait_for_the_edge_proxy_then_show_their_url_through_it() -> None:
    progress = Progress("127.0.0.1")
    first = progress.lines([CPU_STARTING, EDGE_STARTING, STORES], 1.0)
    assert first == ["redis                healthy   127.0.0.1:6380  (credentials: rma discover redis)"]
    second = progress.lines([CPU_STARTING, EDGE_UP, STORES], 2.0)
    assert second == ["edge-proxy           healthy   http://127.0.0.1:8787",
                      "ner-extraction       healthy   http://127.0.0.1:8787/service/ner-extraction/"]
    assert progress.lines([CPU_STARTING, EDGE_UP, STORES], 3.0) == []  # each line once


def test_without_an_edge_proxy_coming_applications_show_their_own_address() -> None:
    progress = Progress("127.0.0.1")
    failed_edge = WorkerSnapshot(Kind.EDGE, ("edge-proxy",), {"edge-proxy": st("failed", 8787, "crash loop")})
    lines = progress.lines([CPU_STARTING, failed_edge], 1.0)
    assert "edge-proxy           failed    crash loop" in lines
    assert "ner-extraction       healthy   http://127.0.0.1:8108  (direct: the edge proxy is not up yet)" in lines


def test_a_long_start_reports_progress_every_interval() -> None:
    progress = Progress("127.0.0.1")
    unregistered = WorkerSnapshot(Kind.STORAGE, None, {})
    progress.lines([CPU_STARTING, EDGE_UP, unregistered], 1.0)
    assert progress.lines([CPU_STARTING, EDGE_UP, unregistered], PROGRESS_EVERY_S - 1) == []
    [line] = progress.lines([CPU_STARTING, EDGE_UP, unregistered], PROGRESS_EVERY_S + 1)
    assert line == "... 11 s: still starting llm-inference (starting), the storage worker (registering)"


def test_the_pool_waits_for_nothing_once_every_assigned_service_settled() -> None:
    progress = Progress("127.0.0.1")
    settled = WorkerSnapshot(Kind.CPU, ("ner-extraction", "llm-inference"),
                             {"ner-extraction": st("healthy", 8108), "llm-inference": st("failed", 8105)})
    assert progress.waiting([settled, EDGE_UP, STORES]) == []
    assert progress.waiting([CPU_STARTING, EDGE_UP]) == ["llm-inference (starting)"]


def test_the_ready_line_counts_healthy_services_and_says_why_the_rest_are_not() -> None:
    gaps = [{"service": "redis", "healthy_replicas": 1, "reason": ""},
            {"service": "minio", "healthy_replicas": 0, "reason": "1 of 1 healthy workers: engine minio not available"},
            {"service": "coordinator", "healthy_replicas": 0, "reason": "long"}]
    line = summary(gaps, 41.4, {"coordinator": "rma up runs it"})
    assert line == ("Ready: 1/3 services healthy in 41 s; uncovered: "
                    "minio (1 of 1 healthy workers: engine minio not available), coordinator (rma up runs it)")
