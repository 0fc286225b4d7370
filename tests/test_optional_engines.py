"""The base install: `rma` runs without any engine's optional packages, and offers only the engines it can run.

Each engine's packages are an extra (storage, tier1, tier2); the coordinator and edge images carry
none of them. A module-level import of one in a driver would break every `rma` command there.
"""

from __future__ import annotations

import json
import subprocess
import sys

# Every optional package a driver or an engine app uses: the extras' top-level modules.
OPTIONAL = ("minio", "neo4j", "arcadedb_embedded", "chromadb", "torch", "sentence_transformers",
            "spacy", "llama_cpp", "pytesseract", "pypdfium2", "pypdf", "docx", "PIL")

WITHOUT_EXTRAS = f"""
import importlib.abc, json, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {OPTIONAL!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None

sys.meta_path.insert(0, NotInstalled())
from typer.testing import CliRunner
from rma.cli import app
from rma.worker.engines import runnable_engines
from rma.worker.probe import Probe

helped = CliRunner().invoke(app, ["--help"])
print(json.dumps({{"help": helped.exit_code, "engines": runnable_engines(Probe.system())}}))
"""


def test_rma_runs_and_offers_no_engine_whose_packages_are_missing() -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["help"] == 0
    # (Engines found as programs, chroma's and weed's scripts, are offered by whether the program is there.)
    assert not {"seaweedfs", "arcadedb", "spacy", "llama-cpp", "tesseract", "pdf-docx",
                "sentence-transformers"} & set(found["engines"]), found["engines"]
    assert "rma-edge-proxy" in found["engines"]  # the project's own engines need nothing more
