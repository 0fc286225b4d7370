"""notes-coa: this project's letter writer (rma.services.apps.notes), which calls llm-inference.

It needs no engine of its own, only the coordinators' addresses to find llm-inference through
the load balancer; while llm-inference is uncovered it stays up and answers 503 saying so.
"""

from __future__ import annotations

import sys

from rma.services.base import Context, Launch, ServiceDriver


class NotesCoa(ServiceDriver):
    name = "notes-coa"
    engine = "rma-notes-coa"

    def launch(self, ctx: Context) -> Launch:
        return Launch(
            (sys.executable, "-m", "rma.services.apps.notes", "--host", ctx.host, "--port", str(ctx.port),
             "--coordinator-url", ",".join(ctx.coordinator_urls)),
            cwd=ctx.data_dir,
        )
