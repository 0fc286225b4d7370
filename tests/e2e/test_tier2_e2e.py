"""Tier-2 document flow end to end: a real coordinator assigns document-processing, ner-extraction and
vision-ocr to `rma worker` (WORKER_TYPE=cpu); an edge worker runs the routers. Letters the test writes go
through the edge proxy's short names: parse (`upload`), then extract (`ner`); a scanned page is read by
vision-ocr, which document-processing reaches through the load balancer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.test_tier1_e2e import healthy_replica
from procs import RmaProcess, start_coordinator, start_worker, wait_until
from services.test_tier2_documents import letter_docx, letter_pdf

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def entities_in(text: str, answer: dict[str, Any]) -> dict[str, str]:
    """text → label of each entity, after checking that its offsets point at it in `text`."""
    for entity in answer["entities"]:
        assert text[entity["start"]:entity["end"]] == entity["text"], entity
    return {entity["text"]: entity["label"] for entity in answer["entities"]}


def test_letters_go_through_parse_then_extract_on_the_edge_proxy(processes: list[RmaProcess], tmp_path: Path) -> None:
    coordinator, url = start_coordinator(tmp_path, interval=1.0)
    processes.append(coordinator)
    worker = start_worker(processes, tmp_path, url, "cpu", "w-cpu")
    start_worker(processes, tmp_path, url, "edge", "w-edge")
    for service in ("document-processing", "ner-extraction", "vision-ocr"):
        wait_until(lambda s=service: healthy_replica(url, s), 200, 0.5, what=f"{service} healthy:\n{worker.log()}")
    wait_until(lambda: healthy_replica(url, "load-balancer"), 60, 0.5, what="the load balancer healthy")
    edge = wait_until(lambda: healthy_replica(url, "edge-proxy"), 60, 0.5, what="the edge proxy healthy")["url"]

    def parse(data: bytes, name: str) -> dict[str, Any] | None:
        """None until the edge proxy's table (refreshed every second) lists the replica."""
        answer = httpx.post(f"{edge}/service/upload/parse", files={"file": (name, data)}, timeout=120)
        assert answer.status_code in (200, 503), answer.text
        return answer.json() if answer.status_code == 200 else None

    def extract(text: str) -> dict[str, Any] | None:
        answer = httpx.post(f"{edge}/service/ner/extract", json={"text": text}, timeout=60)
        assert answer.status_code in (200, 503), answer.text
        return answer.json() if answer.status_code == 200 else None

    # A PDF letter with a text layer, then a scanned page: vision-ocr reads the scan.
    parsed = wait_until(lambda: parse(letter_pdf(scanned_pages=1), "letter.pdf"), 20, 0.5, what="parse via the edge")
    letter, scan = parsed["pages"]
    assert letter["source"] == "text" and scan["source"] == "ocr", parsed["warnings"]
    assert "412.50" in scan["text"] and "Lowell" in scan["text"] and parsed["warnings"] == []
    text = parsed["text"]
    found = wait_until(lambda: extract(text), 20, 0.5, what="extract via the edge")
    entities = entities_in(text, found)
    assert entities["£412.50"] == "MONEY" and entities["British Gas"] == "CREDITOR"
    assert entities["14 March 2025"] == "DATE" and entities["12345678"] == "ACCOUNT_REF"
    assert entities["Lowell"] == "CREDITOR"  # from the scanned page's OCR text
    assert any(r["amount"]["text"] == "£412.50" and r["creditor"]["text"] == "British Gas" for r in found["relations"])

    # A Word letter: the creditor is in the letterhead.
    parsed = parse(letter_docx(), "letter.docx")
    assert parsed is not None
    text = parsed["text"]
    entities = entities_in(text, extract(text) or {})
    assert entities["£1,250.00"] == "MONEY" and entities["2 June 2025"] == "DATE"
    assert entities["Lowell"] == entities["Lowell Financial Ltd"] == "CREDITOR"
