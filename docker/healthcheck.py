"""The images' HEALTHCHECK, stdlib only.

coordinator: its /health answers 200.
worker: it has joined the pool since this container started: registering (re)writes
DATA_DIR/worker.json with the coordinator's token, so a file left on the volume by an earlier
run does not count. A worker keeps its services while the coordinator is away, so that alone
does not make it unhealthy.
"""

import json
import os
import sys
import urllib.request
from pathlib import Path


def coordinator() -> bool:
    host = os.environ.get("COORDINATOR_HOST", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{os.environ.get('COORDINATOR_PORT', '8080')}/health"
    with urllib.request.urlopen(url, timeout=4) as answer:
        return bool(answer.status == 200)


def worker() -> bool:
    saved = Path(os.environ.get("DATA_DIR", "/data")) / "worker.json"
    return saved.stat().st_mtime >= container_started() and bool(json.loads(saved.read_text()).get("worker_token"))


def container_started() -> float:
    """When PID 1 (tini) started: boot time plus its start in clock ticks (field 22 of /proc/1/stat)."""
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    ticks = int(Path("/proc/1/stat").read_text().rpartition(")")[2].split()[19])
    return boot + ticks / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    try:
        sys.exit(0 if {"coordinator": coordinator, "worker": worker}[sys.argv[1]]() else 1)
    except (OSError, ValueError) as error:
        print(error, file=sys.stderr)
        sys.exit(1)
