"""document-processing: this project's /parse app (rma.services.apps.documents) over pypdf and python-docx.

Scanned PDF pages go to vision-ocr through the pool, so the app gets the worker's coordinator URLs
to find it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from rma.services.apps.models import package_dir
from rma.services.base import LOCATION_VARIABLES, THREAD_VARIABLES, Context, Launch, ServiceDriver, cpu_threads


class DocumentProcessing(ServiceDriver):
    name = "document-processing"
    engine = "pdf-docx"
    passes = (*LOCATION_VARIABLES, *THREAD_VARIABLES)

    def missing(self, engine: str, env: Mapping[str, str]) -> str | None:
        return None if package_dir("python_multipart") else "no python-multipart to read uploads"

    def launch(self, ctx: Context) -> Launch:
        argv: tuple[str, ...] = (sys.executable, "-m", "rma.services.apps.documents", "--host", ctx.host,
                                 "--port", str(ctx.port), "--threads", str(cpu_threads(ctx)))
        if ctx.coordinator_urls:
            argv += ("--coordinator-url", ",".join(ctx.coordinator_urls))
        return Launch(argv, cwd=ctx.data_dir)
