"""ner-extraction against hostile texts and a full pool, as its own process on a free port.

Each adversarial text up to the 100,000-character limit is answered within a bound while a client sending a
small letter every 0.1 s is served meanwhile, and the app's memory (its pipeline processes included) after the
whole corpus stays within 200 MB of its start. /health says "busy" (429) while every pipeline process has been
taken for 2 s, and a request that waits longer than --queue-wait-s for one gets a 503. What test_tier2_ner.py
covers (time against a normal letter, bad requests, the body cap chunked or not) is not repeated here.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import httpx
import pytest

from procs import wait_until
from rma.services.apps.money_ner import spacy_model
from services.hostile_checks import EngineApp, assert_json_refusal, engine_app, served_meanwhile

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]
RSS_GROWTH_LIMIT = 200 * 2**20
TEXT_BOUND_S = 90.0  # one text at the limit: the slowest shape (an emoji run) took 37 s on 2 shared cores
CHARS = 100_000
LETTER = ("Dear Ms Patel,\nAccount number: 12345678\n"
          "Our records show you owe £412.50 to British Gas for your energy account. Please pay by 14 March 2025.")
EMOJI = "😀👍🎉❤🔥😂🙏💷"
NAMES = [(first + second).title() for first in ("ab", "ker", "lin", "mor", "pen", "rad", "sol", "tov", "wen", "zel")
         for second in ("ach", "by", "den", "ford", "ham", "ley", "ton", "wick")]


def corpus() -> dict[str, str]:
    """bench/ner_linear.py's shapes at the limit, and two of its kind: marks mixed with words, a run of no spaces."""
    rng = random.Random(7)
    marks = ["\u200f", "\u202e", "\x00", *EMOJI, "Smith ", "owes ", "£5 ", "Ltd"]
    return {
        '"Smith " * N + "Ltd"': "Smith " * ((CHARS - 3) // 6) + "Ltd",
        "capitalised words + Council": " ".join(islice(cycle(NAMES), CHARS // 7))[:CHARS - 8] + " Council",
        "RTL, NUL, emoji run": "\u200f\x00" + "".join(rng.choice(EMOJI) for _ in range(CHARS - 2)),
        "RTL, NUL, emoji and words": "".join(rng.choice(marks) for _ in range(CHARS))[:CHARS],
        "run-on owes": "you owe £5 to BT, " * (CHARS // 18),
        "no spaces": "".join(rng.choice("abcXYZ019£.,-'") for _ in range(CHARS)),
    }


def extract(app: EngineApp, body: dict[str, Any], timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{app.url}/extract", json=body, timeout=timeout)


def ner_app(folder: Path, *flags: str) -> AbstractContextManager[EngineApp]:
    """ner-extraction with two pipeline processes, one thread each as the driver sets it."""
    return engine_app("ner", folder, "--model", spacy_model({}) or "en_core_web_sm", "--threads", "2", *flags,
                      env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}, ready_s=100)


def test_adversarial_texts_at_the_limit_are_answered_in_bounded_time_and_memory_while_letters_are_served(
        tmp_path: Path) -> None:
    texts = corpus()
    with ner_app(tmp_path) as app:
        assert extract(app, {"text": LETTER}).status_code == 200  # the pipeline processes warmed
        before = app.rss()
        with served_meanwhile(lambda: extract(app, {"text": LETTER}, timeout=60)) as served:
            for name, text in texts.items():
                started = time.monotonic()
                try:
                    answer = extract(app, {"text": text}, timeout=TEXT_BOUND_S)
                except httpx.TimeoutException:
                    pytest.fail(f"{name}: no answer in {TEXT_BOUND_S:.0f} s")
                seconds = time.monotonic() - started
                if answer.status_code != 200:
                    assert_json_refusal(answer, (400, 413, 422))
                print(f"{name} ({len(text):,} chars): {answer.status_code} in {seconds:.1f} s")
                assert seconds < TEXT_BOUND_S, f"{name}: {seconds:.1f} s"
        grown = app.rss() - before
        summary = f"{served.summary()}; RSS {before / 2**20:.0f} MB at start, grew {grown / 2**20:+.0f} MB"
        print(summary)
        assert len(served.took) > 10 and served.p99() < 2.0, summary
        assert grown < RSS_GROWTH_LIMIT, summary
        assert app.health().status_code == 200


def test_health_says_busy_while_every_process_is_taken_and_a_request_waits_no_longer_than_its_budget(
        tmp_path: Path) -> None:
    """Two processes, and one batch split across both: it takes both slots, so the app is busy."""
    heavy = ["you owe £5 to BT, " * (CHARS // 18)] * 4
    with ner_app(tmp_path, "--queue-wait-s", "3") as app:
        batch = ThreadPoolExecutor(1).submit(extract, app, {"texts": heavy})
        wait_until(lambda: app.health().status_code == 429, 20, what="/health says busy")
        busy = app.health().json()
        assert busy["status"] == "busy" and "2 spaCy process slots busy" in busy["reason"], busy
        started = time.monotonic()
        assert_json_refusal(extract(app, {"text": LETTER}), (503,), "busy for 3 s")
        assert 2.5 < time.monotonic() - started < 10
        assert not batch.done(), "the batch ended before the refusal: make it heavier"
        answer = batch.result(120)
        print(f"batch of {len(heavy)} heavy texts: {time.monotonic() - started:.1f} s after the refusal began")
        assert answer.status_code == 200 and len(answer.json()["results"]) == len(heavy), answer.text[:300]
        assert app.health().status_code == 200
        assert extract(app, {"text": LETTER}).status_code == 200
