"""The coordinator and universal-worker images, built by docker/build.sh and run for real with podman.

The worker image is the `cpu-ocr` variant: a CPU worker whose only engine is Tesseract. It is the
smallest image that proves the whole path for a CPU volunteer: a `WORKER_TYPE=cpu` worker gets
tier-1 services only where it reports their CPU engines, and Tesseract (pytesseract, pillow,
pypdfium2 and Debian's tesseract-ocr) is the lightest of them, while the full CPU image's torch
and llama.cpp would cost minutes of build for nothing more proven. Both containers use the host's
network, so the worker's services listen on loopback where the coordinator forwards
/service/ocr/... to them. Podman keeps its images under .cache/containers (and build.sh its wheels
under build/wheels), so a second run reuses every unchanged layer.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from procs import free_port, wait_until
from services.test_tier1_ocr import letter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / ".cache" / "containers"  # outside the build context: podman never walks it
COORDINATOR = "rma-pool/coordinator:latest"
WORKER = "rma-pool/universal-worker:cpu-ocr"
BUILD_TIMEOUT_S = 720  # a fresh machine: debootstrap, the wheels, two images (about 3 minutes on 2 cores)


class Podman:
    """`podman` with this host's settings (docker/containers.conf) and the tests' own image store."""

    def __init__(self) -> None:
        STATE.mkdir(parents=True, exist_ok=True)
        storage = STATE / "storage.conf"
        storage.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{STATE}/graph"\nrunroot = "{STATE}/run"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(ROOT / "docker" / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(storage)}
        self.names: list[tuple[str, str]] = []  # (kind, name) of everything to remove afterwards

    def __call__(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        done = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout.strip()

    def run(self, name: str, image: str, *options: str) -> str:
        self.names.append(("container", name))
        return self("run", "--detach", "--network", "host", "--name", name, *options, image)

    def volume(self, name: str) -> str:
        self.names.append(("volume", name))
        return self("volume", "create", name)

    def logs(self, name: str) -> str:
        done = subprocess.run(["podman", "logs", name], env=self.env, capture_output=True, text=True, timeout=30,
                              check=False)
        return done.stdout + done.stderr

    def remove_all(self) -> None:
        for kind, name in reversed(self.names):
            subprocess.run(["podman", *(("rm", "--force", "--time", "0") if kind == "container" else
                                        ("volume", "rm", "--force")), name],
                           env=self.env, capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (`make system-packages` installs it)")
    engine = Podman()
    log = STATE / "build.log"
    with log.open("w") as out:
        built = subprocess.run([str(ROOT / "docker" / "build.sh"), "coordinator", "cpu-ocr"], cwd=ROOT,
                               env={**engine.env, "ENGINE": "podman", "PIP": str(Path(sys.executable).parent / "pip")},
                               stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S, check=False)
    assert built.returncode == 0, f"docker/build.sh failed:\n{log.read_text()[-4000:]}"
    yield engine
    engine.remove_all()


@pytest.fixture(scope="module")
def coordinator(podman: Podman) -> str:
    """The coordinator container on a free port of the host's loopback; returns its URL."""
    port = free_port()
    name = f"rma-test-coordinator-{os.getpid()}"
    podman.run(name, COORDINATOR, "--env", f"COORDINATOR_PORT={port}", "--env", "HEARTBEAT_INTERVAL=1")
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 60, 0.2,
               what=f"the coordinator container's /health:\n{podman.logs(name)}")
    return url


def workers(url: str) -> dict[str, dict[str, Any]]:
    return {w["worker_id"]: w for w in httpx.get(f"{url}/api/admin/workers", timeout=2).json()["workers"]}


def ocr_replica(url: str, worker_id: str) -> dict[str, Any] | None:
    answer = httpx.get(f"{url}/api/services/discover/vision-ocr", timeout=2)
    found = answer.json()["workers"] if answer.status_code == 200 else []
    return next((r for r in found if r["worker_id"] == worker_id), None)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_coordinator_container_answers_health_as_a_non_root_user(podman: Podman, coordinator: str) -> None:
    assert httpx.get(f"{coordinator}/health", timeout=2).json()
    name = f"rma-test-coordinator-{os.getpid()}"
    assert podman("exec", name, "id", "-u") == "10001"
    podman("healthcheck", "run", name)  # exits non-zero when unhealthy
    for image in (COORDINATOR, WORKER):
        assert podman("image", "inspect", "--format", "{{.Config.StopSignal}}", image) == "SIGTERM"


def test_cpu_worker_container_serves_stops_cleanly_and_keeps_its_data(podman: Podman, coordinator: str) -> None:
    volume = f"rma-test-worker-data-{os.getpid()}"
    podman.volume(volume)
    first = f"rma-test-worker-{os.getpid()}"
    seed_variables = ("--env", "WORKER_TYPE=cpu", "--env", f"COORDINATOR_URL={coordinator}",
                      "--volume", f"{volume}:/data")
    podman.run(first, WORKER, *seed_variables)

    def joined() -> str | None:
        cpu = [w for w in workers(coordinator).values() if w["capabilities"]["worker_type"] == "cpu"]
        return cpu[0]["worker_id"] if cpu else None

    worker_id = wait_until(joined, 60, 0.2, what=f"the worker container registered:\n{podman.logs(first)}")
    assert "tesseract" in workers(coordinator)[worker_id]["capabilities"]["engines"]
    replica = wait_until(lambda: ocr_replica(coordinator, worker_id), 90, 0.2,
                         what=f"vision-ocr healthy in the worker container:\n{podman.logs(first)}")
    # Through the coordinator's own /service route (the seed's short name), into the container's Tesseract.
    answer = httpx.post(f"{coordinator}/service/ocr/ocr", files={"file": ("letter.png", letter())}, timeout=60)
    assert answer.status_code == 200 and "412.50" in answer.json()["text"], answer.text
    podman("healthcheck", "run", first)
    first_log = podman("exec", first, "cat", "/data/logs/vision-ocr.log")

    podman("stop", "--time", "30", first, timeout=60)
    assert podman("inspect", "--format", "{{.State.ExitCode}}", first) == "0"  # stopped by SIGTERM, not killed
    assert f"unregistered {worker_id}" in podman.logs(first)
    assert worker_id not in workers(coordinator)
    assert ocr_replica(coordinator, worker_id) is None and refused(replica["port"])

    second = f"rma-test-worker-{os.getpid()}-again"
    podman.run(second, WORKER, *seed_variables)  # a new container, the same volume, no WORKER_ID
    wait_until(lambda: ocr_replica(coordinator, worker_id), 90, 0.2,
               what=f"the same worker back with vision-ocr:\n{podman.logs(second)}")
    assert podman("exec", second, "cat", "/data/logs/vision-ocr.log").startswith(first_log)


def test_the_worker_image_joins_a_mesh_once_the_container_may_make_a_tun_device(podman: Podman) -> None:
    """With --cap-add NET_ADMIN and the tun device the worker detects the mesh; without them it says what to add.
    Podman hands an added capability to the rma account as an ambient one; Docker gives a non-root user none of
    its own, so the image's nebula carries CAP_NET_ADMIN as a file capability too."""
    python = ("--entrypoint", "/opt/rma/bin/python", WORKER, "-c")
    detect = (*python, "from rma.worker.mesh_node import mesh_unavailable; print(mesh_unavailable())")
    allowed = podman("run", "--rm", "--cap-add", "NET_ADMIN", "--device", "/dev/net/tun", *detect)
    assert allowed == "None", allowed
    assert "--cap-add NET_ADMIN --device /dev/net/tun" in podman("run", "--rm", *detect)
    capability = podman("run", "--rm", *python,
                        "import os; print(os.getxattr('/usr/bin/nebula', 'security.capability'))")
    assert capability.startswith("b'") and len(capability) > 3, capability
    assert "Version: " in podman("run", "--rm", "--cap-add", "NET_ADMIN", "--entrypoint", "/usr/bin/nebula", WORKER,
                                 "-version")
