"""`python -m rma.worker`: the universal worker alone, the same as `rma worker`."""

import typer

from rma.worker.commands import worker

typer.run(worker)
