"""How long `rma up` (what `make up` runs, the venv present) takes to its ready line, first and second start.

Starts `rma up` on a fresh data dir, waits for "Ready: ...", stops it with Ctrl-C (SIGINT), then
starts it again on the same data dir (the stores' data and the workers come back). Prints the
seconds to ready for each start and the ready line itself (services covered, and why not).

    .venv/bin/python bench/up_ready.py [--timeout 600]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rma.services.base import free_port
from stores import stop_group

RMA = Path(sys.executable).parent / "rma"


def one_start(data_dir: Path, log: Path, timeout: float) -> tuple[float, str]:
    """Seconds from launch to the ready line, and the line."""
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(RMA), "up", "--port", str(free_port("127.0.0.1")), "--data-dir", str(data_dir)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while time.monotonic() - started < timeout:
            found = re.search(r"^Ready: .*$", log.read_text(errors="replace"), re.M)
            if found:
                return time.monotonic() - started, found.group(0)
            if proc.poll() is not None:
                raise RuntimeError(f"rma up exited with {proc.returncode}:\n{log.read_text()}")
            time.sleep(0.2)
        raise RuntimeError(f"no ready line in {timeout:.0f} s:\n{log.read_text()}")
    finally:
        stop_group(proc, signal.SIGINT, 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rma-up-bench-"))
    folder.chmod(0o711)  # a root `rma up` runs PostgreSQL as the postgres account, which must enter it
    try:
        for label in ("first start (fresh data dir)", "second start (same data dir)"):
            seconds, line = one_start(folder / "data", folder / "up.log", args.timeout)
            print(f"{label:<30} {seconds:6.1f} s to ready  {line}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
