"""Documents per second through parse → extract: via the edge proxy against the same libraries in-process.

One run, side by side, on the same letters (PDFs with a text layer and DOCX files this script
writes, with amounts, creditors, dates and account numbers):

* in-process: `parse_document` (pypdf / python-docx) then spaCy with the money-advice rules, in
  this process, one document at a time;
* via the edge proxy: `POST /service/upload/parse` then `POST /service/ner/extract` on a real
  coordinator and `rma edge-proxy`; document-processing and ner-extraction are started from their
  drivers as the worker starts them, and this script plays the worker that reports them healthy.
  One client, one document at a time (the same CPU work as in-process: the ratio is the cost of
  HTTP, the proxy and the process hops), then `--clients` at once (what the services' CPU share buys);
  and, to tell the proxy's share from the services', one client calling the services directly.

    .venv/bin/python bench/pipeline.py [--threads N] [--documents 40] [--rounds 3] [--clients N]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import docx
import httpx
from fpdf import FPDF

from proxy_overhead import play_worker, wait_http
from rma.services import DRIVERS
from rma.services.apps.money_ner import analyse, load_pipeline, spacy_model
from rma.services.apps.parsing import parse_document
from rma.services.base import Context
from rma.worker.process import free_port

CREDITORS = ("British Gas", "Lowell", "Barclaycard", "Thames Water", "Leeds City Council", "Vanquis Bank", "EE")
DEBTS = ("energy", "catalogue", "credit card", "water rates", "council tax", "credit card", "mobile phone")
MONTHS = ("January", "March", "May", "July", "September", "November")


def letter_lines(i: int) -> list[str]:
    """A creditor's letter of about 1,500 characters: the body of a typical first demand."""
    creditor, debt = CREDITORS[i % len(CREDITORS)], DEBTS[i % len(DEBTS)]
    amount, due = f"£{(i * 137) % 4000 + 12}.{i % 100:02d}", f"{i % 27 + 1} {MONTHS[i % len(MONTHS)]} 2025"
    return [
        creditor, f"Account number: {40_000_000 + i * 7919}", f"{i % 27 + 1} {MONTHS[(i + 1) % len(MONTHS)]} 2025",
        f"Dear Ms Client{i},",
        f"Our records show you owe {amount} to {creditor} for your {debt} account.",
        f"We wrote to you on {due} but have not received a payment, and the balance of {amount} remains unpaid.",
        "If you are struggling to pay, please contact us as soon as possible so that we can discuss an affordable",
        "repayment plan. You can also get free, confidential advice from a debt advice charity.",
        f"Please pay {amount} by {due}, or call us on 0333 000 {1000 + i} to agree a plan.",
        "If we do not hear from you, we may pass your account to a debt collection agency, which could affect",
        "your credit rating, or apply to the county court for a judgment against you.",
        f"Yours sincerely, Collections Team, {creditor}",
    ]


def letter_pdf(i: int) -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    for line in letter_lines(i):
        pdf.multi_cell(0, 6, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def letter_docx(i: int) -> bytes:
    document = docx.Document()
    lines = letter_lines(i)
    document.sections[0].header.paragraphs[0].text = lines[0]
    for line in lines[1:]:
        document.add_paragraph(line)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def corpus(count: int) -> list[tuple[str, bytes]]:
    return [(f"letter-{i}.pdf", letter_pdf(i)) if i % 2 == 0 else (f"letter-{i}.docx", letter_docx(i))
            for i in range(count)]


@contextmanager
def pool(threads: int, folder: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A coordinator, the edge proxy and both services; yields the edge proxy's URL and each service's own."""
    procs: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    log = open(folder / "bench.log", "ab")  # noqa: SIM115 - children write to it until the end

    def spawn(argv: tuple[str, ...], env: dict[str, str] | None = None) -> None:
        procs.append(subprocess.Popen(argv, stdout=log, stderr=log, env={**os.environ, **(env or {})}))

    try:
        port = free_port("127.0.0.1")
        coordinator = f"http://127.0.0.1:{port}"
        spawn((sys.executable, "-m", "rma", "coordinator", "--port", str(port), "--data-dir",
               str(folder / "coordinator"), "--heartbeat-interval", "1"))
        wait_http(f"{coordinator}/health", 180)
        ports = {}
        for name in ("document-processing", "ner-extraction"):
            ctx = Context("127.0.0.1", free_port("127.0.0.1"), folder / name, (coordinator,),
                          env={"OMP_NUM_THREADS": str(threads)})
            DRIVERS[name].prepare(ctx)
            launch = DRIVERS[name].launch(ctx)
            spawn(launch.argv, dict(launch.env))
            ports[name] = ctx.port
        for service_port in ports.values():
            wait_http(f"http://127.0.0.1:{service_port}/health", 180)
        threading.Thread(target=play_worker, args=(coordinator, ports, stop, ("spacy", "pdf-docx")),
                         daemon=True).start()
        edge = free_port("127.0.0.1")
        spawn((sys.executable, "-m", "rma", "edge-proxy", "--port", str(edge), "--coordinator-url", coordinator),
              {"RMA_RATE_LIMIT": "0", "ROUTING_REFRESH_INTERVAL": "1"})
        url = f"http://127.0.0.1:{edge}"
        for short in ("upload", "ner"):
            wait_http(f"{url}/service/{short}/health", 30)
        yield url, {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    finally:
        stop.set()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)
        log.close()


def rate(documents: list[tuple[str, bytes]], one: Callable[[tuple[str, bytes]], int], clients: int = 1) -> float:
    """Documents per second over one pass through `documents`, `clients` at a time."""
    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as workers:
        list(workers.map(one, documents))
    return len(documents) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="the services' CPU share")
    parser.add_argument("--documents", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    model = spacy_model(os.environ)
    if model is None:
        raise SystemExit("no spaCy English model: pip install -e '.[tier2]'")
    documents = corpus(args.documents)

    nlp = load_pipeline(model)

    def in_process(document: tuple[str, bytes]) -> int:
        text = parse_document(document[1]).answer()["text"]
        return len(analyse(nlp, [text])[0]["entities"])

    with tempfile.TemporaryDirectory() as tmp, pool(args.threads, Path(tmp)) as (edge, services):
        client = httpx.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=64))

        def through(parse_url: str, extract_url: str) -> Callable[[tuple[str, bytes]], int]:
            def one(document: tuple[str, bytes]) -> int:
                parsed = client.post(parse_url, files={"file": document})
                parsed.raise_for_status()
                found = client.post(extract_url, json={"text": parsed.json()["text"]})
                found.raise_for_status()
                return len(found.json()["entities"])

            return one

        proxied = through(f"{edge}/service/upload/parse", f"{edge}/service/ner/extract")
        direct = through(f"{services['document-processing']}/parse", f"{services['ner-extraction']}/extract")

        entities = sum(map(in_process, documents))  # and warm both paths
        if sum(map(proxied, documents)) != entities:
            raise SystemExit("the edge proxy's answers differ from the in-process ones")
        # Interleaved passes: on a shared machine, load from elsewhere then hits both paths alike.
        runs: dict[str, list[float]] = {"local": [], "direct": [], "edge": [], "edge-n": []}
        for _ in range(args.rounds):
            runs["local"].append(rate(documents, in_process))
            runs["direct"].append(rate(documents, direct))
            runs["edge"].append(rate(documents, proxied))
            runs["edge-n"].append(rate(documents, proxied, args.clients))
        client.close()

    local, straight, sequential, concurrent = (statistics.median(runs[key]) for key in runs)
    print(f"{len(documents)} letters (half PDF, half DOCX, ~1,500 characters each), median of {args.rounds} "
          f"interleaved passes, spaCy {model}, {os.cpu_count()} cores, services' share {args.threads} threads; "
          f"{entities} entities per pass on both paths")
    print(f"{'in-process, 1 thread':<26}{local:7.1f} documents/s")
    print(f"{'services direct, 1 client':<26}{straight:7.1f} documents/s  {straight / local:5.0%} of in-process")
    print(f"{'edge proxy, 1 client':<26}{sequential:7.1f} documents/s  {sequential / local:5.0%} of in-process "
          "(target >= 80%)")
    print(f"{f'edge proxy, {args.clients} clients':<26}{concurrent:7.1f} documents/s  {concurrent / local:5.0%} "
          "of in-process")

if __name__ == "__main__":
    main()
