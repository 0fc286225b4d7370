"""minio: the MinIO object store server, its buckets under the worker's data dir.

Offered only where a real `minio` binary is installed (no package registry here carries it).
The root credentials travel in the environment, which only this user and root can read; the
startup banner, which would print them, is anonymised; the web console stays off.
"""

from __future__ import annotations

from rma.services.base import Context, Launch, ServiceDriver, require_secret

ROOT_USER = "rma"
DATA = "data"


class Minio(ServiceDriver):
    name = "minio"
    engine = "minio"

    def prepare(self, ctx: Context) -> None:
        require_secret(ctx, self.name)
        super().prepare(ctx)
        (ctx.data_dir / DATA).mkdir(exist_ok=True)

    def launch(self, ctx: Context) -> Launch:
        host = f"[{ctx.host}]" if ":" in ctx.host else ctx.host
        return Launch(
            ("minio", "server", str(ctx.data_dir.resolve() / DATA), "--address", f"{host}:{ctx.port}", "--anonymous"),
            env={"MINIO_ROOT_USER": ROOT_USER, "MINIO_ROOT_PASSWORD": require_secret(ctx, self.name),
                 "MINIO_BROWSER": "off"},
            cwd=ctx.data_dir,
        )
