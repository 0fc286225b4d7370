"""ner-extraction's pipeline on adversarial texts against a normal letter of the same length, in one process.

Each input once per size, timed as `analyse` runs it (spaCy's pipeline as money_ner builds it, then entities
and relations). Linear time shows as a steady ratio to the normal letter as the size grows; a ratio that
doubles with the size is time in its square. An emoji is a token of its own, so that run has 4.5 times the
letter's tokens and a steady ratio near 5. `--module` times another copy of money_ner.py
(`git show REV:src/rma/services/apps/money_ner.py > old.py`) to compare before and after.

    .venv/bin/python bench/ner_linear.py [--chars 6000 12000 24000 100000] [--module old.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import time
from collections.abc import Callable
from itertools import cycle, islice
from types import ModuleType

LETTER = ("Dear Ms Patel,\nAccount number: 12345678\nOur records show you owe £412.50 to British Gas for your energy "
          "account. Please pay by 14 March 2025. Mrs Smith owes Lowell £300 and £2,000 in rent arrears to Manchester "
          "City Council. She gets Universal Credit and PIP, and has a CCJ and a payday loan with Vanquis Bank.\n")
EMOJI = "😀👍🎉❤🔥😂🙏💷"
# 80 made-up surnames ("Abach", "Kerby", ...): the model tags a run of them PROPN, every one.
NAMES = [(first + second).title() for first in ("ab", "ker", "lin", "mor", "pen", "rad", "sol", "tov", "wen", "zel")
         for second in ("ach", "by", "den", "ford", "ham", "ley", "ton", "wick")]


def inputs(seed: int) -> dict[str, Callable[[int], str]]:
    """Text of about n characters for each shape the issue reported, and the normal letter."""
    rng = random.Random(seed)
    return {
        "normal letter": lambda n: (LETTER * (n // len(LETTER) + 1))[:n],
        '"Smith " * N + "Ltd"': lambda n: "Smith " * ((n - 3) // 6) + "Ltd",
        "capitalised words + Council": lambda n: " ".join(islice(cycle(NAMES), n // 7)) + " Council",
        "RTL, NUL, emoji run": lambda n: "\u200f\x00" + "".join(rng.choice(EMOJI) for _ in range(n - 2)),
        "run-on owes": lambda n: "you owe £5 to BT, " * (n // 18),
        "account references": lambda n: "ref 1234 " * (n // 9),
    }


def money_ner(path: str | None) -> ModuleType:
    if path is None:
        from rma.services.apps import money_ner as module
        return module
    spec = importlib.util.spec_from_file_location("money_ner_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chars", type=int, nargs="+", default=[6000, 12000, 24000, 100_000])
    parser.add_argument("--module", help="a money_ner.py to time instead of the installed one")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    module = money_ner(args.module)
    nlp = module.load_pipeline(module.spacy_model({}))
    nlp(LETTER)  # warm up
    print(f"{'input':30} {'chars':>7} {'tokens':>7} {'seconds':>8} {'× normal':>8}")
    for size in args.chars:
        normal = None
        for name, make in inputs(args.seed).items():
            text = make(size)
            start = time.perf_counter()
            doc = nlp(text)
            module.entities(doc), module.relations(doc)
            took = time.perf_counter() - start
            normal = normal or took
            print(f"{name:30} {len(text):7} {len(doc):7} {took:8.2f} {took / normal:8.2f}", flush=True)


if __name__ == "__main__":
    main()
