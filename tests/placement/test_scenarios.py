"""The seed's allocation scenarios and the pool's self-healing, driven through the harness."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from placement_harness import FIXTURE_NAMES, Harness, capabilities

from rma.catalog import SERVICES, Kind
from rma.placement import Pool, WorkerState, desire, gap_report, multitask_limit
from rma.protocol import Capabilities

Machine = Callable[..., WorkerState]
GPU_SERVICES = {s.name for s in SERVICES if s.kind == Kind.GPU}
CPU_SERVICES = {s.name for s in SERVICES if s.kind == Kind.CPU}
STORES = {s.name for s in SERVICES if s.kind == Kind.STORAGE}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixtures_are_valid_register_capabilities(name: str) -> None:
    Capabilities.model_validate(capabilities(name))


# --- the seed's seven scenarios, one pool growing worker by worker ---


def test_seed_scenarios_in_sequence(harness: Harness, machine: Machine) -> None:
    # (1) First GPU worker: both 8 GiB priority-1 engines fit 16 GiB, rag-embeddings does not.
    harness.join(machine("gpu_nvidia_t4_16g", "g1"))
    assert harness.services("g1") & GPU_SERVICES == {"llm-inference", "vision-ocr"}
    assert harness.services("g1") & CPU_SERVICES == CPU_SERVICES  # stands in: no CPU worker yet

    # (2) Second GPU worker specialises on the remaining GPU gap.
    harness.join(machine("gpu_nvidia_t4_16g", "g2"))
    assert harness.services("g2") == {"rag-embeddings"}

    # (3) Third GPU worker adds redundancy to the most important service.
    harness.join(machine("gpu_nvidia_t4_16g", "g3"))
    assert harness.services("g3") == {"llm-inference"}

    # (4) First CPU worker takes the CPU services; the GPU stand-in sheds them.
    harness.join(machine("cpu_desktop_32g_all_engines", "c1"))
    assert harness.services("c1") == CPU_SERVICES
    assert harness.services("g1") == {"llm-inference", "vision-ocr"}

    # (5) First storage worker takes every store it can run, chromadb and redis included.
    harness.join(machine("storage_full", "s1"))
    assert harness.services("s1") == STORES

    # (6) First edge worker: coordinator + edge-proxy, and the uncovered load-balancer.
    harness.join(machine("edge_public", "e1"))
    assert harness.services("e1") == {"coordinator", "edge-proxy", "load-balancer"}

    # (7) Second edge worker: coordinator + another edge service; the first keeps its own.
    harness.join(machine("edge_public", "e2"))
    assert "coordinator" in harness.services("e2")
    assert len(harness.services("e2")) == 2
    assert harness.services("e1") == {"coordinator", "edge-proxy", "load-balancer"}

    assert harness.covered() == {s.name for s in SERVICES}
    assert not harness.round(), "the pool is at a fixed point: no needless churn"


def test_first_storage_worker_takes_only_what_it_can_run(harness: Harness, machine: Machine) -> None:
    harness.join(machine("storage_redis_only", "s1"))
    assert harness.services("s1") == {"redis"}


def test_big_gpu_holds_more_when_memory_allows(harness: Harness, machine: Machine) -> None:
    harness.join(machine("gpu_nvidia_4090_24g", "g1"))
    assert harness.services("g1") & GPU_SERVICES == GPU_SERVICES


def test_gpu_memory_is_respected(harness: Harness, machine: Machine) -> None:
    harness.join(machine("gpu_small_4g", "g1"))
    assert harness.services("g1") & GPU_SERVICES == {"rag-embeddings"}


def test_gpu_claim_without_gpu_gets_no_gpu_service(harness: Harness, machine: Machine) -> None:
    harness.join(machine("gpu_claim_no_gpu", "g1"))
    assert not harness.services("g1") & GPU_SERVICES
    assert harness.services("g1") == CPU_SERVICES


def test_seed_agent_without_engine_list_is_trusted_by_kind(harness: Harness, machine: Machine) -> None:
    harness.join(machine("seed_agent_cpu", "c1"))
    harness.join(machine("seed_agent_gpu", "g1"))
    assert harness.services("c1") == CPU_SERVICES
    assert harness.services("g1") == GPU_SERVICES  # no memory reported: no memory check


def test_worker_without_engines_gets_nothing(harness: Harness, machine: Machine) -> None:
    harness.join(machine("cpu_no_engines", "c1"))
    assert harness.services("c1") == set()


# --- self-healing ---


def test_dead_workers_services_go_to_survivors(harness: Harness, machine: Machine) -> None:
    for worker_id in ("g1", "g2", "g3"):
        harness.join(machine("gpu_nvidia_t4_16g", worker_id))
    harness.join(machine("cpu_desktop_32g_all_engines", "c1"))
    lost = harness.services("g1")
    harness.down("g1")
    harness.settle()
    assert lost <= harness.covered()
    assert harness.replicas("vision-ocr") == ["g2"]  # the survivor with GPU memory to spare
    harness.up("g1")
    harness.settle()
    assert harness.covered() == GPU_SERVICES | CPU_SERVICES


def test_gpu_worker_takes_over_cpu_fallback_only_once_serving(harness: Harness, machine: Machine) -> None:
    harness.join(machine("cpu_desktop_32g_all_engines", "c1"))
    assert harness.services("c1") >= GPU_SERVICES  # tier-1 on CPU engines while no GPU worker

    harness.join(machine("gpu_nvidia_t4_16g", "g1"), settle=False)
    assert harness.services("g1") == {"llm-inference", "vision-ocr"}  # same as joining an empty pool
    harness.workers["g1"] = replace(harness.workers["g1"], serving=frozenset())  # still loading
    harness.round(serve=False)
    assert {"llm-inference", "vision-ocr"} <= harness.services("c1"), "no gap while the GPU replica loads"

    harness.settle()
    assert harness.services("c1") == CPU_SERVICES | {"rag-embeddings"}  # rag does not fit on g1
    assert harness.replicas("llm-inference") == ["g1"]


def test_gpu_worker_sheds_cpu_services_once_a_cpu_worker_serves(harness: Harness, machine: Machine) -> None:
    harness.join(machine("gpu_nvidia_4090_24g", "g1"))
    harness.join(machine("cpu_laptop_8g", "c1"), settle=False)
    harness.workers["c1"] = replace(harness.workers["c1"], serving=frozenset())
    harness.round(serve=False)
    assert harness.services("g1") >= CPU_SERVICES
    harness.settle()
    assert harness.services("g1") == GPU_SERVICES
    assert harness.services("c1") == CPU_SERVICES


def test_gpu_worker_stands_in_again_when_the_cpu_worker_dies(harness: Harness, machine: Machine) -> None:
    harness.join(machine("gpu_nvidia_4090_24g", "g1"))
    harness.join(machine("cpu_laptop_8g", "c1"))
    harness.down("c1")
    harness.settle()
    assert harness.services("g1") == GPU_SERVICES | CPU_SERVICES


def test_store_never_moves_off_a_healthy_worker(harness: Harness, machine: Machine) -> None:
    harness.join(machine("storage_redis_only", "s1"))
    harness.join(machine("storage_full", "s2"))
    assert harness.services("s1") == {"redis"}
    assert harness.services("s2") == STORES - {"redis"}


def test_store_returns_to_its_data_holder(harness: Harness, machine: Machine) -> None:
    harness.join(machine("storage_full", "s1"))
    harness.join(machine("storage_redis_only", "s2"))
    harness.down("s1")
    harness.settle()
    assert harness.services("s2") == {"redis"}  # the only store it can run
    harness.up("s1")
    plan = harness.beat("s1")
    assert set(plan.services) == STORES - {"redis"}
    harness.settle()
    assert harness.replicas("redis") == ["s2"]


def test_store_taken_over_while_its_holder_was_down_stays_single(harness: Harness, machine: Machine) -> None:
    harness.join(machine("storage_full", "s1"))
    harness.join(machine("storage_full", "s2"))
    harness.away_and_back("s1")
    for store in STORES:
        assert harness.replicas(store) == ["s2"], "two copies of a store would split its data"


def test_crash_looped_service_is_placed_elsewhere(harness: Harness, machine: Machine) -> None:
    harness.join(machine("gpu_nvidia_4090_24g", "g1"))
    harness.join(machine("cpu_laptop_8g", "c1"))
    harness.workers["c1"] = replace(harness.workers["c1"], failed=frozenset({"ner-extraction"}))
    harness.settle()
    assert "ner-extraction" not in harness.services("c1")
    assert harness.replicas("ner-extraction") == ["g1"]


def test_down_worker_is_told_to_run_nothing(machine: Machine) -> None:
    worker = machine("cpu_laptop_8g", assigned=("ner-extraction",), healthy=False)
    plan = desire(worker, Pool.of([worker]))
    assert plan.services == ()
    assert plan.shed == (("ner-extraction", "worker is down"),)


# --- CPU multitasking 3 -> 2 -> 1 ---


def test_multitask_limit_falls_as_cpu_workers_join(machine: Machine) -> None:
    worker = machine("cpu_desktop_32g_all_engines", "c0")
    limits = [
        multitask_limit(worker, Pool.of([machine("cpu_laptop_8g", f"c{i}") for i in range(peers)]))
        for peers in range(4)
    ]
    assert limits == [3, 2, 1, 1]


def test_cpu_workers_multitask_less_as_the_tier_fills(harness: Harness, machine: Machine) -> None:
    harness.join(machine("cpu_laptop_8g", "c1"))
    harness.join(machine("cpu_laptop_8g", "c2"))
    assert len(harness.services("c2")) == 2
    harness.join(machine("cpu_laptop_8g", "c3"))
    assert len(harness.services("c3")) == 1
    assert harness.services("c1") == CPU_SERVICES | {"vision-ocr"}, "nobody else keeps the target: no shedding"
    assert all(len(harness.replicas(name)) >= 2 for name in CPU_SERVICES)


def test_past_the_limit_a_worker_sheds_only_what_others_keep_at_target(machine: Machine) -> None:
    busy = tuple(sorted(CPU_SERVICES))
    gpu = machine("gpu_nvidia_4090_24g", "g1", assigned=("vision-ocr",), serving=frozenset({"vision-ocr"}))
    peers = [gpu] + [machine("cpu_laptop_8g", f"p{i}", assigned=busy, serving=frozenset(busy)) for i in range(3)]
    worker = machine("cpu_laptop_8g", "c1", assigned=busy, serving=frozenset(busy))
    plan = desire(worker, Pool.of([worker, *peers]))
    assert plan.services == ("ner-extraction",)
    assert {name for name, _ in plan.shed} == {"document-processing", "notes-coa"}

    lonely = machine("cpu_laptop_8g", "p0", assigned=("ner-extraction",), serving=frozenset({"ner-extraction"}))
    idle = [machine("cpu_laptop_8g", f"p{i}") for i in (1, 2)]
    plan = desire(worker, Pool.of([worker, gpu, lonely, *idle]))
    assert plan.services == busy and plan.shed == ()


# --- the gap report ---


def _reasons(workers: list[WorkerState]) -> dict[str, str]:
    return {gap.service: gap.reason for gap in gap_report(workers, Pool.of(workers))}


def test_gap_report_says_why(machine: Machine) -> None:
    small = machine("gpu_small_4g", "g1", assigned=("rag-embeddings",), serving=frozenset({"rag-embeddings"}))
    redis_only = machine("storage_redis_only", "s1")
    reasons = _reasons([small, redis_only])
    assert "needs 8192 MB of GPU memory, worker has 4096 MB" in reasons["llm-inference"]
    assert "engine chroma not available" in reasons["chromadb"]
    assert "edge" in reasons["coordinator"]  # no worker of that kind
    assert reasons["rag-embeddings"] == ""
    assert "can run it" in reasons["redis"]  # s1 has not beaten yet


def test_gap_report_on_an_empty_pool_and_a_false_gpu_claim(machine: Machine) -> None:
    assert set(_reasons([])) == {s.name for s in SERVICES}
    assert _reasons([machine("edge_public", healthy=False)])["coordinator"] == "no healthy workers"
    assert "reports no GPU" in _reasons([machine("gpu_claim_no_gpu")])["llm-inference"]


def test_gap_report_orders_and_grades(machine: Machine) -> None:
    edge = machine("edge_public", "e1", assigned=("coordinator",), serving=frozenset({"coordinator"}))
    gaps = gap_report([edge], Pool.of([edge]))
    grades = {gap.service: gap.status for gap in gaps}
    assert grades["coordinator"] == "warning"  # one healthy replica, target two
    assert grades["edge-proxy"] == "critical"
    assert [gap.status for gap in gaps] == sorted((g.status for g in gaps), key=["critical", "warning", "ok"].index)
