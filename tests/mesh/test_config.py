"""A node's Nebula config: what it holds, that Nebula 1.6.1 reads every key of it, and that `nebula -test` takes it."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rma.mesh import config as mesh_config
from rma.mesh.config import InboundRule, Lighthouse, NodeConfig, ignored_by_161, render
from rma.mesh.pki import MeshCa, MeshUnavailable, make_node_keys

EDGE = Lighthouse("198.19.0.1", "198.18.0.10:4242")
FINGERPRINT = "ab" * 32


def home(folder: Path, **extra: Any) -> NodeConfig:
    return NodeConfig(folder, (EDGE,), **extra)


def lighthouse(folder: Path, **extra: Any) -> NodeConfig:
    return NodeConfig(folder, (EDGE,), am_lighthouse=True, listen_port=mesh_config.LIGHTHOUSE_PORT, tun_device=None,
                      **extra)


def parsed(config: NodeConfig) -> dict[str, Any]:
    settings: dict[str, Any] = json.loads(render(config))
    return settings


def test_a_home_node_lists_the_lighthouse_and_the_relay(tmp_path: Path) -> None:
    settings = parsed(home(tmp_path))
    assert settings["static_host_map"] == {"198.19.0.1": ["198.18.0.10:4242"]}
    assert settings["lighthouse"] == {"am_lighthouse": False, "interval": 60, "hosts": ["198.19.0.1"]}
    assert settings["relay"] == {"am_relay": False, "use_relays": True, "relays": ["198.19.0.1"]}
    assert settings["listen"]["port"] == 0
    assert settings["tun"]["disabled"] is False and settings["tun"]["dev"] == "rma-mesh0"
    assert settings["pki"] == {"ca": f"{tmp_path}/ca.crt", "cert": f"{tmp_path}/host.crt",
                               "key": f"{tmp_path}/host.key", "blocklist": [], "disconnect_invalid": True}
    assert "stats" not in settings


def test_every_node_punches_at_once_and_notices_a_dead_tunnel_fast(tmp_path: Path) -> None:
    for config in (home(tmp_path), lighthouse(tmp_path)):
        settings = parsed(config)
        assert settings["punchy"] == {"punch": True, "respond": True, "delay": "0s"}
        assert settings["timers"] == {"connection_alive_interval": 1, "pending_deletion_interval": 4}
        assert settings["pki"]["disconnect_invalid"] is True


def test_a_lighthouse_is_the_relay_reports_to_no_one_and_has_no_tun(tmp_path: Path) -> None:
    settings = parsed(lighthouse(tmp_path, stats_listen="127.0.0.1:9100"))
    assert settings["lighthouse"]["am_lighthouse"] is True and settings["lighthouse"]["hosts"] == []
    assert settings["static_host_map"] == {}
    assert settings["relay"] == {"am_relay": True, "use_relays": False}  # a relay's own relays: ignored by 1.6.1
    assert settings["listen"]["port"] == 4242
    assert settings["tun"] == {"disabled": True}
    assert settings["stats"]["listen"] == "127.0.0.1:9100" and settings["stats"]["lighthouse_metrics"] is True


def test_inbound_rules_hold_icmp_then_each_rule_with_its_groups(tmp_path: Path) -> None:
    rules = (InboundRule(8080), InboundRule("9000-9010", "udp", ("cpu", "router")), InboundRule("any", "any"))
    inbound = parsed(home(tmp_path, inbound=rules))["firewall"]["inbound"]
    assert inbound == [
        {"port": "any", "proto": "icmp", "host": "any"},
        {"port": 8080, "proto": "tcp", "host": "any"},
        {"port": "9000-9010", "proto": "udp", "groups": ["cpu", "router"]},  # `groups`: ALL of them
        {"port": "any", "proto": "any", "host": "any"},
    ]


def test_the_blocklist_is_rendered(tmp_path: Path) -> None:
    assert parsed(home(tmp_path, blocklist=(FINGERPRINT,)))["pki"]["blocklist"] == [FINGERPRINT]


def test_no_key_outside_what_nebula_161_reads(tmp_path: Path) -> None:
    full = home(tmp_path, inbound=(InboundRule(1, groups=("a",)),), blocklist=(FINGERPRINT,),
                stats_listen="127.0.0.1:1")
    for config in (full, lighthouse(tmp_path)):
        assert ignored_by_161(parsed(config)) == []


def test_keys_from_newer_nebula_docs_are_caught() -> None:
    newer = {"tunnels": {"drop_inactive": True}, "punchy": {"delay": "0s", "respond_delay": "5s"},
             "firewall": {"inbound_action": "reject", "inbound": [{"port": 1, "proto": "tcp", "local_cidr": "x"}]},
             "static_host_map": {"198.19.0.1": ["a:1"]}}
    assert ignored_by_161(newer) == ["tunnels.drop_inactive", "punchy.respond_delay", "firewall.inbound_action",
                                     "firewall.inbound[0].local_cidr"]


def test_render_refuses_a_key_161_would_ignore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = mesh_config.tree
    monkeypatch.setattr(mesh_config, "tree", lambda config: {**real(config), "tunnels": {"drop_inactive": True}})
    with pytest.raises(ValueError, match="tunnels.drop_inactive"):
        render(home(tmp_path))


@pytest.mark.parametrize("make", [
    lambda: InboundRule(0), lambda: InboundRule(70000), lambda: InboundRule("9-1"), lambda: InboundRule("80,81"),
    lambda: InboundRule(80, "sctp"), lambda: InboundRule(80, groups=("Bad Group",)),
    lambda: Lighthouse("not-an-ip", "198.18.0.10:4242"), lambda: Lighthouse("198.19.0.1", "198.18.0.10"),
    lambda: NodeConfig(Path("/x"), ()), lambda: NodeConfig(Path("/x"), (EDGE,), am_lighthouse=True),
    lambda: NodeConfig(Path("/x"), (EDGE,), tun_device="a-name-far-too-long"),
    lambda: NodeConfig(Path("/x"), (EDGE,), blocklist=("not-a-fingerprint",)),
])
def test_what_nebula_could_not_use_is_refused(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


@pytest.mark.skipif(shutil.which("nebula") is None or shutil.which("nebula-cert") is None,
                    reason="nebula / nebula-cert not installed (Debian: apt-get install nebula)")
def test_nebula_test_accepts_the_rendered_configs(tmp_path: Path) -> None:
    try:
        ca = MeshCa(tmp_path / "ca")
    except MeshUnavailable as exc:
        pytest.skip(f"nebula-cert does not work here: {exc}")
    configs = {
        "edge": lighthouse(tmp_path / "edge", stats_listen="127.0.0.1:9100"),
        "h1": home(tmp_path / "h1", inbound=(InboundRule(8080), InboundRule("9000-9010", "udp", ("cpu", "router"))),
                   blocklist=(FINGERPRINT,)),
    }
    for number, (name, config) in enumerate(configs.items(), start=1):
        address = ipaddress.IPv4Interface(f"198.19.0.{number}/16")
        certificate = ca.sign(name, make_node_keys(config.folder), address, ["cpu"], 3600)
        (config.folder / "host.crt").write_text(certificate.pem)
        (config.folder / "ca.crt").write_text(ca.certificate)
        path = config.folder / "config.yml"
        path.write_text(render(config))
        done = subprocess.run(["nebula", "-test", "-config", str(path)], capture_output=True, text=True, timeout=20,
                              check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    # and -test does read the firewall: a rule 1.6.1 refuses fails it
    bad = json.loads(path.read_text())
    bad["firewall"]["inbound"].append({"port": 1, "proto": "tcp", "group": ["cpu", "router"]})
    path.write_text(json.dumps(bad))
    done = subprocess.run(["nebula", "-test", "-config", str(path)], capture_output=True, text=True, timeout=20,
                          check=False)
    assert done.returncode != 0 and "group should contain a single value" in done.stdout + done.stderr
