"""An adviser's notes as items in the letter's three sections, and the facts each item must keep.

notes-coa asks a language model to reword each note for the client; a model may drop or change
a figure, and a small one often does. So the facts are taken out of the notes here, without the
model (amounts, dates, reference numbers, and the names of creditors, benefits and other
bodies), and every rewording is checked against them: each fact kept, no figure or name added.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

MATTERS, OURS, YOURS = "matters_discussed", "our_actions", "your_actions"
SECTIONS = (MATTERS, OURS, YOURS)

# Headings an adviser may use (alone on a line, or before a colon); without them each note is
# sorted by its wording.
HEADINGS = {
    MATTERS: re.compile(r"(matters?( discussed)?|discussed|summary|situation|background|issues?)", re.I),
    OURS: re.compile(r"((our|adviser'?s?|advisor'?s?|rma) actions?|actions? for (us|the adviser|adviser))", re.I),
    YOURS: re.compile(r"((your|client'?s?) actions?|actions? for (you|the client|client)|next steps)", re.I),
}
OUR_WORDING = re.compile(r"^((we|i|adviser|advisor|rma)\s+(will|shall|to|agreed to|are going to|am going to|"
                         r"need to|can)|we'll|i'll)\b", re.I)
YOUR_WORDING = re.compile(r"^((client|cl|you)\s+(will|to|should|must|needs? to|has to|agreed to|is to|can)|please)\b",
                          re.I)
BULLET = re.compile(r"^\s*(?:[-*•·]|\d{1,2}[.)])\s*")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")

MONTHS = {name: number for number, names in enumerate((
    ("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",), ("jun", "june"),
    ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"), ("oct", "october"), ("nov", "november"),
    ("dec", "december")), start=1) for name in names}
_MONTH = "|".join(sorted(MONTHS, key=len, reverse=True))
AMOUNT = re.compile(r"£\s?(\d[\d,]*(?:\.\d{1,2})?)(k\b)?", re.I)
NUMERIC_DATE = re.compile(r"\b(\d{1,2})[/.-](\d{1,2})[/.-](\d{2}|\d{4})\b")
DAY_MONTH = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH})\b\.?,?(?:\s+(\d{{4}}))?", re.I)
MONTH_DAY = re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b,?(?:\s+(\d{{4}}))?", re.I)
REFERENCE = re.compile(r"\b\d{3,}\b")  # account and reference numbers (years too: 2026 is a fact)
NAME = re.compile(r"\b[A-Z][A-Za-z&'’]*(?:[ -](?:of |and |& )?[A-Z][A-Za-z&'’]*)*")
# Capitalised words that are not names: the letter's own voice, titles, calendar words.
NOT_NAMES = frozenset((
    "client", "clients", "cl", "we", "i", "you", "your", "yours", "our", "us", "please", "discussed", "agreed",
    "adviser", "advisor", "rma", "the", "a", "an", "this", "that", "these", "those", "he", "she", "they", "it",
    "his", "her", "their", "mr", "mrs", "ms", "miss", "dr", "note", "notes", "letter", "dear", "also", "and", "but",
    "or", "if", "so", "then", "today", "tomorrow", "yesterday", "yes", "no", "as", "at", "by", "for", "from", "in",
    "on", "to", "with", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
)) | frozenset(MONTHS)


@dataclass(frozen=True)
class Facts:
    """What a note states and its rewording must keep: amounts in pence, dates, numbers, names."""

    amounts: frozenset[int] = frozenset()
    dates: frozenset[tuple[int, int, int | None]] = frozenset()
    numbers: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()  # lower case

    def describe(self) -> str:
        parts = [f"£{pence / 100:,.2f}" for pence in sorted(self.amounts)]
        parts += [f"{d}/{m}" + (f"/{y}" if y else "") for d, m, y in sorted(self.dates, key=str)]
        return ", ".join(parts + sorted(self.numbers) + sorted(self.names))


@dataclass
class Note:
    """One item of the notes, the section it belongs in, and its facts."""

    text: str
    section: str
    facts: Facts = field(init=False)

    def __post_init__(self) -> None:
        self.facts = facts_of(self.text)


def _pence(digits: str, thousands: bool) -> int | None:
    try:
        value = Decimal(digits.replace(",", ""))
    except InvalidOperation:
        return None
    return int(value * (1000 if thousands else 1) * 100)


def _year(text: str | None) -> int | None:
    if not text:
        return None
    year = int(text)
    return year + 2000 if year < 100 else year


def facts_of(text: str) -> Facts:
    """The amounts, dates, reference numbers and names in `text`, normalised so wording may differ."""
    amounts = {p for m in AMOUNT.finditer(text) if (p := _pence(m.group(1), bool(m.group(2)))) is not None}
    dates: set[tuple[int, int, int | None]] = set()
    spans: list[tuple[int, int]] = [m.span() for m in AMOUNT.finditer(text)]
    for match in NUMERIC_DATE.finditer(text):
        dates.add((int(match.group(1)), int(match.group(2)), _year(match.group(3))))
        spans.append(match.span())
    for match in DAY_MONTH.finditer(text):
        dates.add((int(match.group(1)), MONTHS[match.group(2).lower()], _year(match.group(3))))
        spans.append(match.span())
    for match in MONTH_DAY.finditer(text):
        dates.add((int(match.group(2)), MONTHS[match.group(1).lower()], _year(match.group(3))))
        spans.append(match.span())
    numbers = {m.group() for m in REFERENCE.finditer(text)
               if not any(start <= m.start() < end for start, end in spans)}
    return Facts(frozenset(amounts), frozenset(dates), frozenset(numbers), frozenset(names_in(text)))


def names_in(text: str) -> set[str]:
    """Runs of capitalised words, less the words capitalised without being names. A run's first word
    is left out where it opens a sentence: there it may be any word ("Send", "Lowell")."""
    names = set()
    for match in NAME.finditer(text):
        words = re.split(r"[ -]", match.group())
        before = text[:match.start()].rstrip()
        if not before or before[-1] in ".!?:;(\"'":
            words = words[1:]
        words = [w for w in words if w.lower().strip("'’") not in NOT_NAMES]
        while words and words[0].lower() in {"of", "and", "&"}:
            words.pop(0)
        if words:
            names.add(" ".join(words).lower())
    return names


def problems(note: Facts, rewording: str) -> list[str]:
    """What the rewording lost or added; empty when it keeps the note's facts and invents none."""
    found = facts_of(rewording)
    said = rewording.lower()
    issues = [f"dropped £{p / 100:,.2f}" for p in sorted(note.amounts - found.amounts)]
    issues += [f"added £{p / 100:,.2f}" for p in sorted(found.amounts - note.amounts)]
    issues += [f"dropped the date {d}/{m}" for d, m, _ in sorted(note.dates - found.dates, key=str)]
    issues += [f"added the date {d}/{m}" for d, m, _ in sorted(found.dates - note.dates, key=str)]
    issues += [f"dropped {n}" for n in sorted(note.numbers - found.numbers)]
    issues += [f"added {n}" for n in sorted(found.numbers - note.numbers)]
    issues += [f"dropped {name!r}" for name in sorted(note.names) if name not in said]
    known = {word for name in note.names for word in name.split()}
    for name in sorted(found.names):
        if added := [word for word in name.split() if word not in known]:
            issues.append(f"added {' '.join(added)!r}")
    return issues


def split_notes(notes: str) -> list[Note]:
    """Items in order: a heading sets the section of the lines under it, else each item's wording does."""
    items: list[Note] = []
    heading: str | None = None
    for raw in notes.splitlines():
        line = BULLET.sub("", raw).strip()
        head, _, rest = line.partition(":")
        section = next((name for name, pattern in HEADINGS.items() if pattern.fullmatch(head.strip())), None)
        if section is not None:
            heading, line = section, rest.strip()
        for sentence in SENTENCE_END.split(line):
            if sentence := sentence.strip():
                items.append(Note(sentence, heading or section_of(sentence)))
    return items


def section_of(item: str) -> str:
    if OUR_WORDING.match(item):
        return OURS
    if YOUR_WORDING.match(item):
        return YOURS
    return MATTERS
