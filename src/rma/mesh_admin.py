"""The operator's mesh commands: `rma mesh-revoke` cuts a worker off, `rma client-cert` admits an application.

A client member is an application's server on the mesh (group `client`: it reaches the stores and the load
balancer, as the catalogue's fences say). Its key pair is made where the command runs, which should be that
server: only the public key goes to the coordinator, which signs it; the command writes the Nebula config
beside the key, for `nebula -config` to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from rma.files import write_private
from rma.front import client_context
from rma.mesh.config import Lighthouse, NodeConfig, render
from rma.mesh.pki import make_node_keys


class AdminRefused(Exception):
    """The coordinator could not be reached, or said no: the message says which, and why."""


def admin_post(coordinator_url: str, admin_token: str | None, path: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    url = f"{coordinator_url.rstrip('/')}{path}"
    try:
        answer = httpx.post(url, headers=headers, json=body, timeout=15, verify=client_context())
    except httpx.HTTPError as exc:
        raise AdminRefused(f"the coordinator at {coordinator_url} could not be reached: {exc}") from None
    if answer.status_code != 200:
        raise AdminRefused(f"the coordinator refused ({answer.status_code}): {answer.text[:300]}")
    return answer.json()


def revoke(coordinator_url: str, admin_token: str | None, worker_id: str) -> list[str]:
    """Revoke every live certificate of `worker_id` (a worker or a client member); their fingerprints."""
    fingerprints: list[str] = admin_post(coordinator_url, admin_token, f"/api/admin/mesh/revoke/{worker_id}")[
        "fingerprints"]
    return fingerprints


def client_member(coordinator_url: str, admin_token: str | None, name: str, folder: Path) -> Path:
    """Admit `name` as a client member with a key made in `folder`; writes its certificate and its Nebula
    config there, and returns the config's path."""
    public_key = make_node_keys(folder)
    member = admin_post(coordinator_url, admin_token, "/api/admin/mesh/clients",
                        {"name": name, "public_key": public_key})
    (folder / "ca.crt").write_text(member["ca"])
    write_private(folder / "host.crt", member["certificate"])
    config = NodeConfig(folder, tuple(Lighthouse(h["overlay_ip"], h["underlay"]) for h in member["lighthouses"]),
                        blocklist=tuple(member["blocklist"]))  # it serves nothing: no inbound port is open
    path = folder / "config.json"
    write_private(path, render(config))
    return path
