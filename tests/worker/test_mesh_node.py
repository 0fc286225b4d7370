"""The worker's side of the mesh without Nebula running: the firewall its assignment makes, and what it detects."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rma.catalog import BY_NAME, CALLERS, SERVICES, Kind
from rma.mesh.config import InboundRule
from rma.mesh.pki import GROUP
from rma.worker import mesh_node
from rma.worker.mesh_node import TunnelLog, fences


def test_each_assigned_port_is_open_to_the_groups_the_catalogue_names_and_no_one_else() -> None:
    rules = fences([("redis", 6379), ("neo4j", 7475), ("ner-extraction", 8108), ("not-a-service", 1)])
    assert set(rules) == {
        *(InboundRule(6379, "tcp", (group,)) for group in ("edge", "cpu", "gpu", "client")),
        *(InboundRule(port, "tcp", (group,)) for port in (7475, 7687) for group in ("edge", "cpu", "gpu", "client")),
        InboundRule(8108, "tcp", ("edge",)),  # an application: the routers only
    }
    assert fences([]) == ()


def test_the_catalogues_fences_name_real_groups_and_keep_stores_from_stores() -> None:
    for service in SERVICES:
        assert service.reached_by and all(GROUP.fullmatch(group) for group in service.reached_by), service.name
        if service.kind == Kind.STORAGE:
            assert "storage" not in service.reached_by and "client" in service.reached_by, service.name
        elif service.public:
            assert service.reached_by == ("edge",), service.name


def test_a_call_between_services_goes_through_the_load_balancer_which_only_the_workers_running_services_reach() -> None:
    assert {"llm-inference": {"notes-coa"}, "vision-ocr": {"document-processing"}} == CALLERS
    for callee, callers in CALLERS.items():
        assert BY_NAME[callee].reached_by == ("edge",), callee  # the callee itself: only the routers, the balancer
        for caller in callers:
            assert BY_NAME[caller].kind in (Kind.CPU, Kind.GPU), caller  # run by workers in SERVICE_RUNNERS
    assert set(BY_NAME["load-balancer"].reached_by) == {"cpu", "gpu"}


def test_a_machine_without_nebula_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh_node.shutil, "which", lambda tool: None if tool == "nebula" else f"/usr/bin/{tool}")
    assert mesh_node.mesh_unavailable() == "nebula not installed (Debian: apt-get install nebula)"


def test_tunnels_are_read_off_nebulas_log_direct_or_relayed_as_each_handshake_finished(tmp_path: Path) -> None:
    log = tmp_path / "nebula.log"

    def line(message: str, peer: str, stage: int | None = None, udp: bool = False, relay: bool = False) -> str:
        entry: dict[str, Any] = {"msg": message, "vpnIp": peer, "udpAddr": {"ip": "198.18.0.10", "port": 4242}
                                 if udp else None}
        if stage is not None:
            entry["handshake"] = {"stage": stage, "style": "ix_psk0"}
        if relay:
            entry["relay"] = "198.19.0.1"
        return json.dumps(entry) + "\n"

    log.write_text("level=info msg=config dump\n"  # Nebula's first line is text
                   + line("Handshake message sent", "198.19.0.1", 1)
                   + line("Handshake message received", "198.19.0.1", 2, udp=True)  # initiator, direct
                   + line("Handshake message received", "198.19.0.4", 2)  # initiator, through a relay
                   + line("Handshake message sent", "198.19.0.5", 2, relay=True)  # responder, through a relay
                   + '{"msg": "Handshake message received", "vpnIp": "198.19.0.6", "handshake": {"st')  # being written
    tunnels = TunnelLog(log)
    tunnels.read()
    assert tunnels.peers == {"198.19.0.1": False, "198.19.0.4": True, "198.19.0.5": True}
    with log.open("a") as more:
        more.write('age": 2}}\n' + line("Host roamed to new udp ip/port", "198.19.0.4")
                   + line("Remote certificate is no longer valid, tearing down the tunnel", "198.19.0.5"))
    tunnels.read()
    assert tunnels.peers == {"198.19.0.1": False, "198.19.0.4": False, "198.19.0.6": True}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("nebula") is None,
                    reason="needs root (to drop to an ordinary user with one capability), setpriv and nebula")
def test_an_ordinary_user_with_an_ambient_cap_net_admin_may_run_the_mesh() -> None:
    """What systemd's AmbientCapabilities=CAP_NET_ADMIN gives a volunteer's service: the worker's Nebula inherits
    it, so the mesh is detected; the same user without it is told how to grant it."""
    check = [sys.executable, "-c", "from rma.worker.mesh_node import mesh_unavailable; print(mesh_unavailable())"]
    env = {**os.environ, "PYTHONPATH": str(Path(mesh_node.__file__).parents[2])}
    granted = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all,+net_admin",
               "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin", "--no-new-privs"]
    plain = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--no-new-privs"]
    with_cap = subprocess.run([*granted, *check], capture_output=True, text=True, timeout=30, env=env, cwd="/")
    without = subprocess.run([*plain, *check], capture_output=True, text=True, timeout=30, env=env, cwd="/")
    assert with_cap.stdout.strip() == "None", with_cap.stdout + with_cap.stderr
    assert "setcap cap_net_admin=+ep" in without.stdout, without.stdout + without.stderr
