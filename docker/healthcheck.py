"""The images' HEALTHCHECK, stdlib only.

coordinator: its /health answers 200 (over TLS when it serves RMA_TLS_CERT: the chain checked against
RMA_CA_FILE or the system's CAs, the name not, since loopback is not the certificate's name).
worker: it has joined the pool since this container started: registering (re)writes
DATA_DIR/worker.json with the coordinator's token, so a file left on the volume by an earlier
run does not count. A worker keeps its services while the coordinator is away, so that alone
does not make it unhealthy.
"""

import json
import os
import ssl
import sys
import urllib.request
from pathlib import Path


def coordinator() -> bool:
    host = os.environ.get("COORDINATOR_HOST", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    host = f"[{host}]" if ":" in host else host
    tls = bool(os.environ.get("RMA_TLS_CERT"))
    url = f"{'https' if tls else 'http'}://{host}:{os.environ.get('COORDINATOR_PORT', '8080')}/health"
    context = None
    if tls:
        context = ssl.create_default_context(cafile=os.environ.get("RMA_CA_FILE") or None)
        context.check_hostname = False
    with urllib.request.urlopen(url, timeout=4, context=context) as answer:
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
