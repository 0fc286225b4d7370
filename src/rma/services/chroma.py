"""chromadb: the `chroma run` server of the chromadb pip package, persisting under the worker's data dir.

Clients pass their own embeddings (the pool's rag-embeddings makes them): Chroma's default
embedding function downloads a model, which a volunteer's machine may not be able to do.
The server of chromadb 1.x (Rust) has no authentication: it ignores CHROMA_SERVER_AUTHN_*, so
the coordinator's secret cannot be required here; the store listens on the advertised address only.
"""

from __future__ import annotations

from rma.services.base import Context, Launch, ServiceDriver, find_binary

DATA = "chroma"


class Chroma(ServiceDriver):
    name = "chromadb"
    engine = "chroma"

    def launch(self, ctx: Context) -> Launch:
        path = str(ctx.data_dir.resolve() / DATA)
        return Launch(
            (find_binary("chroma") or "chroma", "run", "--path", path, "--host", ctx.host, "--port", str(ctx.port)),
            env={"ANONYMIZED_TELEMETRY": "False",  # a store does not report to anyone outside the pool
                 "NO_COLOR": "1"},  # plain lines in the worker's log file
            cwd=ctx.data_dir,
        )
