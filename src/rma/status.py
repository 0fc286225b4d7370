"""`rma status`: the operator's view of workers and gaps, as rich tables."""

from __future__ import annotations

from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

STATUS_STYLE = {"critical": "bold red", "warning": "yellow", "ok": "green"}


def _get(client: httpx.Client, path: str) -> dict[str, Any]:
    response = client.get(path)
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise RuntimeError(f"{path}: HTTP {response.status_code}: {message}")
    data: dict[str, Any] = response.json()
    return data


def workers_table(workers: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Workers ({sum(w['healthy'] for w in workers)}/{len(workers)} healthy)")
    for column in ("worker", "kind", "host", "state", "services", "load", "last beat"):
        table.add_column(column)
    for w in sorted(workers, key=lambda w: w["worker_id"]):
        services = []
        for name in w["assigned_services"]:
            state = w["services_status"].get(name, {}).get("state", "?")
            services.append(f"{name} ({state})")
        table.add_row(
            w["worker_id"], w["worker_type"], w["host"],
            "[green]healthy[/]" if w["healthy"] else "[red]down[/]",
            "\n".join(services) or "-", f"{w['current_load']:.2f}", f"{w['age_seconds']:.1f}s ago",
        )
    return table


def gaps_table(report: dict[str, Any]) -> Table:
    summary = report["summary"]
    table = Table(title=f"Services ({summary['covered']}/{summary['total_services']} covered, "
                        f"{summary['needs_attention']} need attention)")
    for column in ("service", "kind", "priority", "port", "assigned", "healthy", "status", "why"):
        table.add_column(column)
    for g in report["gaps"]:
        style = STATUS_STYLE[g["status"]]
        table.add_row(g["service"], g["required_type"], str(g["priority"]), str(g["port"]),
                      str(g["current_workers"]), str(g["healthy_replicas"]), f"[{style}]{g['status']}[/]",
                      g["reason"])
    return table


def show_status(coordinator_url: str, admin_token: str | None, console: Console | None = None) -> int:
    """Print the tables; returns the exit code (1 when the coordinator cannot be read)."""
    console = console or Console()
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    try:
        with httpx.Client(base_url=coordinator_url, headers=headers, timeout=10) as client:
            workers = _get(client, "/api/admin/workers")["workers"]
            gaps = _get(client, "/api/admin/gaps")
    except (httpx.HTTPError, RuntimeError) as error:
        console.print(f"[red]cannot read the coordinator at {coordinator_url}: {error}[/]")
        return 1
    console.print(workers_table(workers))
    console.print(gaps_table(gaps))
    return 0
