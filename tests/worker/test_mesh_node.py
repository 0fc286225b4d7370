"""The worker's side of the mesh without Nebula running: the firewall its assignment makes, and what it detects."""

from __future__ import annotations

import pytest

from rma.catalog import SERVICES, Kind
from rma.mesh.config import InboundRule
from rma.mesh.pki import GROUP
from rma.worker import mesh_node
from rma.worker.mesh_node import fences


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


def test_a_machine_without_nebula_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh_node.shutil, "which", lambda tool: None if tool == "nebula" else f"/usr/bin/{tool}")
    assert mesh_node.mesh_unavailable() == "nebula not installed (Debian: apt-get install nebula)"
