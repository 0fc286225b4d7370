"""Tier-1 services through the load balancer against the same replica called directly, side by side.

rag-embeddings and llm-inference run on their CPU engines (started through their drivers, as a
worker starts them); a real coordinator holds the table, this script plays the worker that
reports them healthy, and `rma load-balancer` routes to them. Direct and balanced rounds
alternate so drift on a noisy machine hits both alike. Targets: ≥ 90% of direct embeddings/s,
≥ 95% of direct LLM tokens/s; the first token's added delay is printed too.

    .venv/bin/python bench/services.py [--rounds 6] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path

from proxy_overhead import free_port, play_worker, wait_http
from tier1 import embeddings, llm, started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="alternating direct/balanced rounds per service")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        folder = Path(tmp)
        log = stack.enter_context(open(folder / "bench.log", "ab"))
        coordinator_port, balancer_port = free_port(), free_port()
        procs = [subprocess.Popen([sys.executable, "-m", "rma", "coordinator", "--port", str(coordinator_port),
                                   "--data-dir", str(folder / "coordinator"), "--heartbeat-interval", "1"],
                                  stdout=log, stderr=log)]
        stack.callback(lambda: [p.terminate() for p in procs])
        coordinator = f"http://127.0.0.1:{coordinator_port}"
        wait_http(f"{coordinator}/health")
        direct = {
            "rag-embeddings": stack.enter_context(
                started("rag-embeddings", "sentence-transformers", args.threads, "/health", folder)),
            "llm-inference": stack.enter_context(
                started("llm-inference", "llama-cpp", args.threads, "/health", folder)),
        }
        served = {service: int(url.rsplit(":", 1)[1]) for service, url in direct.items()}
        threading.Thread(target=play_worker, args=(coordinator, served, stop, ("sentence-transformers", "llama-cpp")),
                         daemon=True).start()
        stack.callback(stop.set)
        procs.append(subprocess.Popen([sys.executable, "-m", "rma", "load-balancer", "--port", str(balancer_port),
                                       "--coordinator-url", coordinator], stdout=log, stderr=log))
        balanced = {service: f"http://127.0.0.1:{balancer_port}/service/{service}" for service in direct}
        for service in direct:
            wait_http(f"{balanced[service]}/health", 30)

        emb: dict[str, list[float]] = {"direct": [], "balanced": []}
        rates: dict[str, list[float]] = {"direct": [], "balanced": []}
        firsts: dict[str, list[float]] = {"direct": [], "balanced": []}
        llm(direct["llm-inference"], 8)  # warm both paths' caches and connections
        llm(balanced["llm-inference"], 8)
        for _ in range(args.rounds):
            for path, urls in (("direct", direct), ("balanced", balanced)):
                emb[path].append(embeddings(urls["rag-embeddings"], 3))
                rate, first = llm(urls["llm-inference"], 64)
                rates[path].append(rate)
                firsts[path].append(first * 1000)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    print(f"CPU engines, {args.threads} threads, {args.rounds} alternating rounds, medians")
    print(f"{'':<28}{'direct':>10}{'balanced':>10}{'ratio':>8}")
    e_direct, e_lb = median(emb["direct"]), median(emb["balanced"])
    print(f"{'embeddings/s (batch 32)':<28}{e_direct:>10.1f}{e_lb:>10.1f}{e_lb / e_direct:>8.0%}  (target ≥ 90%)")
    r_direct, r_lb = median(rates["direct"]), median(rates["balanced"])
    print(f"{'LLM tokens/s (streamed)':<28}{r_direct:>10.1f}{r_lb:>10.1f}{r_lb / r_direct:>8.0%}  (target ≥ 95%)")
    f_direct, f_lb = median(firsts["direct"]), median(firsts["balanced"])
    print(f"{'LLM first token ms':<28}{f_direct:>10.0f}{f_lb:>10.0f}{'':>8}  (+{f_lb - f_direct:.1f} ms)")


if __name__ == "__main__":
    main()
