"""notes-coa end to end on CPU: a real pool (coordinator, a cpu worker, an edge worker) turns an
adviser's notes into the client's letter, worded by the CPU LLM that notes-coa finds through the
coordinator and reaches through the load balancer; the user reaches notes-coa through the edge proxy."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from e2e.test_tier1_e2e import healthy_replica
from procs import RmaProcess, start_coordinator, start_worker, wait_until
from rma.services.apps.advice_notes import facts_of, problems

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

NOTES = """Client owes £1,250.00 council tax arrears to Leeds City Council, summons issued 14/03/2026.
Discussed Universal Credit claim; payment of £612.40 due on 2 April 2026.
We will write to British Gas to ask for a 30 day hold on the £840 energy debt.
Client to send last 3 months bank statements by 20/04/2026."""


def test_notes_become_a_letter_that_keeps_every_figure(processes: list[RmaProcess], tmp_path: Path) -> None:
    coordinator, url = start_coordinator(tmp_path, interval=1.0)
    processes.append(coordinator)
    worker = start_worker(processes, tmp_path, url, "cpu", "w-cpu")
    start_worker(processes, tmp_path, url, "edge", "w-edge")
    for service in ("llm-inference", "notes-coa", "load-balancer", "edge-proxy"):
        wait_until(lambda s=service: healthy_replica(url, s), 180, 0.5, what=f"{service} healthy:\n{worker.log()}")
    edge = healthy_replica(url, "edge-proxy")["url"]

    def convert() -> httpx.Response | None:
        """None while the edge proxy's table (refreshed every second) does not list notes-coa yet."""
        answer = httpx.post(f"{edge}/service/notes/convert", json={"notes": NOTES, "client_name": "Sam Taylor"},
                            timeout=300)
        return None if answer.status_code == 503 and "no healthy replica" in answer.text else answer

    answer = wait_until(convert, 30, 0.5, what="notes-coa through the edge proxy")
    assert answer.status_code == 200, answer.text
    letter = answer.json()
    assert len(letter["matters_discussed"]) == 2 and len(letter["our_actions"]) == 1
    assert len(letter["your_actions"]) == 1
    text = letter["full_text"]
    assert text.startswith("Dear Sam Taylor,") and "What you need to do" in text
    # Every amount, date and name of the notes is in the letter, and no other amount or date is.
    notes, written = facts_of(NOTES), facts_of(text)
    assert notes.amounts == written.amounts and notes.dates == written.dates
    assert not [p for p in problems(notes, text) if p.startswith("dropped")]
