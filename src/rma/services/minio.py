"""minio: the pool's S3 object store, its buckets under the worker's data dir, on one of two engines.

The MinIO server, offered only where a real `minio` binary is installed (no package registry
here carries it): the root credentials travel in the environment, which only this user and root
can read; the startup banner, which would print them, is anonymised; the web console stays off.
SeaweedFS's `weed mini` (rma.services.seaweedfs) where there is no MinIO: the same access key
and secret, S3 on the same port, and the one of the two that replicates (filer.sync between copies).
"""

from __future__ import annotations

from rma import catalog
from rma.services import seaweedfs
from rma.services.base import LOCATION_VARIABLES, Busy, Context, Launch, ServiceDriver, require_secret

ROOT_USER = catalog.get("minio").engine("seaweedfs").user  # the access key on either engine
DATA = "data"


class Minio(ServiceDriver):
    name = "minio"
    engines = ("minio", seaweedfs.ENGINE)
    engine = engines[0]
    passes = (*LOCATION_VARIABLES, "GOMEMLIMIT")  # both engines are Go programs (see seaweedfs.memory_limit)

    def port_usable(self, host: str, port: int, engine: str | None) -> bool:
        if engine == seaweedfs.ENGINE:
            return seaweedfs.s3_port_usable(host, port)
        return super().port_usable(host, port, engine)

    def prepare(self, ctx: Context) -> None:
        secret = require_secret(ctx, self.name)
        super().prepare(ctx)
        if ctx.engine == seaweedfs.ENGINE:
            seaweedfs.prepare(ctx, ROOT_USER, secret)
        else:
            (ctx.data_dir / DATA).mkdir(exist_ok=True)

    def launch(self, ctx: Context) -> Launch:
        if ctx.engine == seaweedfs.ENGINE:
            return seaweedfs.launch(ctx)
        host = f"[{ctx.host}]" if ":" in ctx.host else ctx.host
        return Launch(
            ("minio", "server", str(ctx.data_dir.resolve() / DATA), "--address", f"{host}:{ctx.port}", "--anonymous"),
            env={"MINIO_ROOT_USER": ROOT_USER, "MINIO_ROOT_PASSWORD": require_secret(ctx, self.name),
                 "MINIO_BROWSER": "off"},
            cwd=ctx.data_dir,
        )

    async def healthy(self, ctx: Context) -> bool | Busy:
        if ctx.engine == seaweedfs.ENGINE:
            return await seaweedfs.healthy(ctx, ROOT_USER)
        return await super().healthy(ctx)
