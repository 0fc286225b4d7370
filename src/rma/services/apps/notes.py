"""notes-coa: an adviser's notes → the client's "notes of advice" letter, worded by llm-inference.

The notes are split into items and sorted into the letter's three sections here (headings or
wording decide); llm-inference, reached through the pool's load balancer, rewords each item
for the client. A rewording that drops or changes an amount, date, reference or name, or adds
one, is asked for again at a higher temperature, and after the last try the request fails with
the item and what went wrong: the letter never carries a figure the adviser did not write.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, Field

from rma.front import client_context
from rma.services.apps.advice_notes import MATTERS, OURS, SECTIONS, YOURS, Note, problems, split_notes
from rma.services.apps.common import ApiError, Loaded, arguments, build_app, serve
from rma.services.apps.peers import Peers, PeerUnavailable

LLM = "llm-inference"
MAX_NOTES_CHARS = 20_000
MAX_ITEMS = 40
MAX_ITEM_CHARS = 1_000  # one note: a long paragraph; past it the adviser should split it
# llm-inference's tokens one letter may ask for (each note's first try; a retry asks the same again): a CPU
# replica writes ~50 tokens a second, so this bounds a letter's first pass to a few minutes of one replica.
MAX_LETTER_TOKENS = 8_000
MAX_BODY_BYTES = 256 << 10
TEMPERATURES = (0.0, 0.3, 0.6, 0.9)  # one try each: the first is the model's best guess
PARALLEL = 4  # items in flight at once; the load balancer spreads them over the replicas
LLM_TIMEOUT_S = 300.0
# A few worked examples of the note's own section steer even a small model (SmolLM2-135M on CPU)
# to a faithful rewording; examples of another section's form get copied instead.
INSTRUCTION = ("Rewrite each money adviser's note for the client, in plain English, speaking to the client as "
               '"you". Keep every amount, date, number and name exactly.')
EXAMPLES = {
    MATTERS: (
        ("Client owes £300 overdraft to Barclays, letter dated 01/02/2026.",
         "You owe £300 on your Barclays overdraft, as their letter of 01/02/2026 says."),
        ("Discussed Pension Credit claim; £85.10 a week from 3 June 2026.",
         "We talked about your Pension Credit claim, which pays £85.10 a week from 3 June 2026."),
        ("Cabot Financial chasing £1,400 credit card debt, account ending 5521.",
         "Cabot Financial is asking you for £1,400 for a credit card debt, account ending 5521."),
    ),
    OURS: (
        ("Adviser to check Council Tax Reduction for 2026.",
         "We will check whether you can get Council Tax Reduction for 2026."),
        ("We will ring EDF re £95.20 meter arrears.", "We will phone EDF about the £95.20 you owe on your meter."),
    ),
    YOURS: (
        ("Client to call Thames Water about the £220 bill.", "Please call Thames Water about your £220 bill."),
        ("Client to bring payslips by 5 May 2026.", "Please bring your payslips to us by 5 May 2026."),
    ),
}
HEADINGS = {MATTERS: "What we discussed", OURS: "What we will do", YOURS: "What you need to do"}
NOTHING = "Nothing at this stage."


class ConvertRequest(BaseModel):
    notes: str = Field(min_length=1, max_length=MAX_NOTES_CHARS, description="the adviser's notes, one item a line")
    client_name: str = Field(min_length=1, max_length=200)


@dataclass
class Drafter:
    """Rewords notes through llm-inference, found anew (with its model name) as the pool changes."""

    peers: Peers

    async def _llm(self) -> tuple[str, str]:
        try:
            base = await self.peers.base_url(LLM)
        except PeerUnavailable as error:
            raise ApiError(503, f"cannot write the letter: {error}") from None
        answer = await self._call("GET", f"{base}/v1/models")
        models = answer.get("data") or [{}]
        return base, str(models[0].get("id", "default"))

    async def _call(self, method: str, url: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            answer = await self.peers.client.request(method, url, json=payload, timeout=LLM_TIMEOUT_S)
        except httpx.HTTPError as error:
            raise ApiError(502, f"{LLM} did not answer: {type(error).__name__}") from None
        if answer.status_code == 503:
            raise ApiError(503, f"cannot write the letter: {LLM} is unavailable ({answer.text[:200]})")
        if answer.status_code != 200:
            raise ApiError(502, f"{LLM} answered {answer.status_code}: {answer.text[:200]}")
        result: dict[str, Any] = answer.json()
        return result

    async def reword(self, note: Note, base: str, model: str) -> tuple[str, int]:
        """The note for the client and the tries it took; ApiError 502 when no try keeps its facts."""
        last: list[str] = []
        for tries, temperature in enumerate(TEMPERATURES, start=1):
            answer = await self._call("POST", f"{base}/v1/completions", {
                "model": model, "prompt": prompt(note), "max_tokens": tokens_for(note),
                "temperature": temperature, "seed": tries, "stop": ["\n"]})
            text = str(answer["choices"][0].get("text", "")).strip()
            last = problems(note.facts, text) if text else ["gave no text"]
            if not last:
                return text, tries
        raise ApiError(502, f"{LLM} could not reword the note {note.text!r} without changing its facts "
                            f"({'; '.join(last)}) in {len(TEMPERATURES)} tries")

    async def convert(self, request: ConvertRequest) -> dict[str, Any]:
        notes = split_notes(request.notes)
        if not notes:
            raise ApiError(400, "notes: no text to turn into a letter", "notes")
        if len(notes) > MAX_ITEMS:
            raise ApiError(400, f"notes: {len(notes)} items, at most {MAX_ITEMS} per letter", "notes")
        for number, note in enumerate(notes, start=1):
            if len(note.text) > MAX_ITEM_CHARS:
                raise ApiError(400, f"notes: item {number} is {len(note.text):,} characters, at most "
                                    f"{MAX_ITEM_CHARS:,}: split it", "notes")
        tokens = sum(tokens_for(note) for note in notes)
        if tokens > MAX_LETTER_TOKENS:
            raise ApiError(413, f"notes: the letter would ask {LLM} for {tokens:,} tokens, at most "
                                f"{MAX_LETTER_TOKENS:,}: send fewer or shorter notes", "notes")
        base, model = await self._llm()
        gate = asyncio.Semaphore(PARALLEL)

        async def one(note: Note) -> tuple[str, int]:
            async with gate:
                return await self.reword(note, base, model)

        worded = await asyncio.gather(*(one(note) for note in notes))
        sections: dict[str, list[str]] = {name: [] for name in SECTIONS}
        for note, (text, _) in zip(notes, worded, strict=True):
            sections[note.section].append(text)
        return {**sections, "full_text": letter(request.client_name.strip(), sections), "model": model,
                "tries": sum(tries for _, tries in worded)}


def tokens_for(note: Note) -> int:
    """The most tokens a rewording of `note` may take: a sentence or two more than the note itself."""
    return 40 + len(note.text) // 2


def prompt(note: Note) -> str:
    shots = "".join(f"Note: {said}\nLetter: {worded}\n\n" for said, worded in EXAMPLES[note.section])
    return f"{INSTRUCTION}\n\n{shots}Note: {note.text}\nLetter:"


def letter(client_name: str, sections: dict[str, list[str]]) -> str:
    parts = [f"Dear {client_name},", "Thank you for talking to us about your money. This letter sets out what we "
             "discussed, what we will do, and what we need you to do."]
    for name in SECTIONS:
        lines = sections[name] or [NOTHING]
        parts.append(HEADINGS[name] + "\n" + "\n".join(f"- {line}" for line in lines))
    parts += ["If anything in this letter is wrong, or your situation changes, please tell us as soon as you can.",
              "Yours sincerely,\nYour money adviser"]
    return "\n\n".join(parts) + "\n"


def create_app(coordinator_urls: list[str]) -> Any:
    def drafter() -> Drafter:
        return Drafter(Peers(coordinator_urls, httpx.AsyncClient(trust_env=False, verify=client_context())))

    loaded = Loaded("notes-coa", drafter)
    app = build_app("notes-coa", loaded, MAX_BODY_BYTES)

    @app.post("/convert")
    async def convert(request: ConvertRequest) -> dict[str, Any]:
        return await loaded.get().convert(request)

    return app


def main() -> None:
    parser = arguments("an adviser's notes → the client's letter, worded by llm-inference")
    parser.add_argument("--coordinator-url", default="", help="comma-separated coordinator URLs")
    args = parser.parse_args()
    serve(create_app([url for url in args.coordinator_url.split(",") if url]), args.host, args.port)


if __name__ == "__main__":
    main()
