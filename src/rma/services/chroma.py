"""chromadb: the `chroma run` server of the chromadb pip package, persisting under the worker's data dir.

Clients pass their own embeddings (the pool's rag-embeddings makes them): Chroma's default
embedding function downloads a model, which a volunteer's machine may not be able to do.
The server of chromadb 1.x (Rust) has no authentication: it ignores CHROMA_SERVER_AUTHN_*, so
the coordinator's secret cannot be required here; the store listens on the advertised address only.

Where the coordinator gives it the snapshot key (a pool that replicates its stores), a companion copies
a snapshot to the pool's S3 every interval, to wherever S3's primary serves now, and a holder that starts
with no store restores the newest (rma.services.snapshots).
"""

from __future__ import annotations

from pathlib import Path

from rma.services import snapshots
from rma.services.base import Context, Launch, ServiceDriver, find_binary

DATA = "chroma"
DATABASE = "chroma.sqlite3"  # what a store that has ever started holds


class Chroma(snapshots.Snapshotted, ServiceDriver):
    name = "chromadb"
    engine = "chroma"

    def prepare(self, ctx: Context) -> None:
        super().prepare(ctx)
        snapshots.prepare(ctx.env, holding(ctx.data_dir), DATABASE)

    def launch(self, ctx: Context) -> Launch:
        path = ctx.data_dir.resolve() / DATA
        return Launch(
            (find_binary("chroma") or "chroma", "run", "--path", str(path), "--host", ctx.host, "--port",
             str(ctx.port)),
            env={"ANONYMIZED_TELEMETRY": "False",  # a store does not report to anyone outside the pool
                 "NO_COLOR": "1"},  # plain lines in the worker's log file
            cwd=ctx.data_dir,
            companions=holding(ctx.data_dir).companions(ctx.env),
        )


def holding(data_dir: Path) -> snapshots.Holding:
    """The store folder, copied whole; the server is `chroma run --path` it."""
    root = data_dir.resolve()
    return snapshots.Holding("chromadb", root / DATA, root, str(root / DATA))
