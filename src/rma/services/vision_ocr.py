"""vision-ocr: Tesseract behind this project's /ocr app (rma.services.apps.ocr).

Only the CPU engine is implemented: the catalogue's `vllm-vision` (a vision-language model on
vLLM) needs vLLM, which installs neither here nor on the GPU test machine, so this worker never
reports it and placement never assigns it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from rma.services.apps.models import package_dir
from rma.services.base import Context, Launch, ServiceDriver, cpu_threads


class VisionOcr(ServiceDriver):
    name = "vision-ocr"
    engine = "tesseract"

    def missing(self, engine: str, env: Mapping[str, str]) -> str | None:
        return None if package_dir("pypdfium2") else "no pypdfium2 to render PDF pages"

    def launch(self, ctx: Context) -> Launch:
        threads = cpu_threads(ctx)
        return Launch(
            (sys.executable, "-m", "rma.services.apps.ocr", "--host", ctx.host, "--port", str(ctx.port),
             "--threads", str(threads)),
            # One Tesseract thread per page; the app reads `threads` pages side by side.
            env={"OMP_THREAD_LIMIT": "1"},
            cwd=ctx.data_dir,
        )
