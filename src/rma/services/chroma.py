"""chromadb: the `chroma run` server of the chromadb pip package, persisting under the worker's data dir.

Clients pass their own embeddings (the pool's rag-embeddings makes them): Chroma's default
embedding function downloads a model, which a volunteer's machine may not be able to do.
The server of chromadb 1.x (Rust) has no authentication: it ignores CHROMA_SERVER_AUTHN_*, so
the coordinator's secret cannot be required here; the store listens on the advertised address only.

Where the coordinator gives it the snapshot key (a pool that replicates its stores), a companion copies
a snapshot to the pool's S3 every interval, to wherever S3's primary serves now, and a holder that starts
with no store restores the newest (rma.services.chroma_snapshots).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from rma.services import chroma_snapshots
from rma.services.base import Context, Launch, ServiceDriver, find_binary

DATA = "chroma"
DATABASE = "chroma.sqlite3"  # what a store that has ever started holds


class Chroma(ServiceDriver):
    name = "chromadb"
    engine = "chroma"

    def prepare(self, ctx: Context) -> None:
        super().prepare(ctx)
        if not chroma_snapshots.enabled(ctx.env):
            return
        state = ctx.data_dir.resolve()
        target = chroma_snapshots.Target.from_env(ctx.env)
        target.save(state)
        store = state / DATA
        if target.endpoint and not (store / DATABASE).exists():
            if store.exists():
                store.rmdir()  # an empty folder only: a store with files but no database is not overwritten
            chroma_snapshots.restore(target, store, state)

    def reconfigure(self, data_dir: Path, env: Mapping[str, str]) -> None:
        """S3's primary moved (or S3 began serving): the companion's next snapshot goes there."""
        if chroma_snapshots.enabled(env):
            chroma_snapshots.Target.from_env(env).save(data_dir.resolve())

    def launch(self, ctx: Context) -> Launch:
        path = ctx.data_dir.resolve() / DATA
        companions: tuple[Launch, ...] = ()
        if chroma_snapshots.enabled(ctx.env):
            companions = (Launch((sys.executable, "-m", "rma.services.chroma_snapshots", str(path),
                                  str(ctx.data_dir.resolve())), cwd=ctx.data_dir),)
        return Launch(
            (find_binary("chroma") or "chroma", "run", "--path", str(path), "--host", ctx.host, "--port",
             str(ctx.port)),
            env={"ANONYMIZED_TELEMETRY": "False",  # a store does not report to anyone outside the pool
                 "NO_COLOR": "1"},  # plain lines in the worker's log file
            cwd=ctx.data_dir,
            companions=companions,
        )

    def snapshot_at(self, data_dir: Path) -> float | None:
        return chroma_snapshots.last_taken(data_dir.resolve())
