"""`rma status`: the operator's view of workers and gaps, sized for an 80-column terminal.

The default view keeps every name whole and says in a few words why a service is uncovered;
`--wide` shows every column and the gap report's full reasons; `--json` prints both admin
answers as they came, for scripts. Reading the coordinator is the only I/O here: the tables
are built from the two answers alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.padding import Padding
from rich.segment import Segments
from rich.table import Table
from rich.text import Text

from rma.catalog import BY_NAME
from rma.front import client_context
from rma.gap_reasons import groups, short_reason

STATUS_STYLE = {"critical": "bold red", "warning": "yellow", "ok": "green"}

# One mark per reported service state; a mark follows the name with no space, so a wrap never parts them.
MARKS = {"healthy": ("✓", "green"), "running": ("✓", "green"), "starting": ("~", "yellow"),
         "unhealthy": ("✗", "red"), "crashed": ("✗", "red"), "failed": ("✗", "red"), "stopped": ("✗", "red")}
NO_REPORT = ("?", "dim")
LEGEND = "✓ healthy  ~ starting  ✗ unhealthy, crashed or stopped  ? no report"


@dataclass(frozen=True)
class Answers:
    """The two admin answers `rma status` reads, as the coordinator sent them."""

    workers: dict[str, Any]
    gaps: dict[str, Any]


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


def fetch(coordinator_url: str, admin_token: str | None, transport: httpx.BaseTransport | None = None) -> Answers:
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    with httpx.Client(base_url=coordinator_url, headers=headers, timeout=10, transport=transport,
                      verify=client_context()) as client:
        return Answers(_get(client, "/api/admin/workers"), _get(client, "/api/admin/gaps"))


# --- tables ------------------------------------------------------------------------------------

WIDE_LIMIT = 400  # the widest a --wide table is drawn, past a narrower console
WORKER_ID_WIDTH = 24  # a longer worker id folds onto a second line rather than squeezing the other columns


def _state_of(worker: dict[str, Any], service: str) -> str | None:
    status = worker.get("services_status", {}).get(service)
    if isinstance(status, dict):
        state = status.get("state")
        return str(state) if state else None
    return str(status) if status else None  # the seed's agent reports a bare state string


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _mesh(worker: dict[str, Any]) -> str:
    """The worker's certificate (its groups, how long it has left) and its tunnels ("-" off the mesh)."""
    mesh = worker.get("mesh")
    if not isinstance(mesh, dict):
        return "-"
    expires = mesh.get("expires")
    line = ",".join(mesh.get("groups") or [])
    if isinstance(expires, int | float):
        line += f", {_age(max(0.0, expires - time.time()))} left"
    tunnels = mesh.get("tunnels")
    if isinstance(tunnels, dict):
        line += f", {tunnels.get('direct', 0)} direct, {tunnels.get('relayed', 0)} relayed"
        if isinstance(tunnels.get("lighthouse_rtt_ms"), int | float):
            line += f", lighthouse {tunnels['lighthouse_rtt_ms']:.1f} ms"
    return line


def _marked(worker: dict[str, Any]) -> Text:
    text = Text()
    for i, name in enumerate(worker["assigned_services"]):
        mark, style = MARKS.get(_state_of(worker, name) or "", NO_REPORT)
        text.append(" " if i else "")
        text.append(name)
        text.append(mark, style=style)
    return text or Text("-")


def _longest(header: str, values: list[str], cap: int = 64) -> int:
    return min(cap, max([len(header), *map(len, values)]))


def workers_table(workers: list[dict[str, Any]], wide: bool = False) -> Table:
    workers = sorted(workers, key=lambda w: w["worker_id"])
    table = Table(title=f"Workers ({sum(bool(w['healthy']) for w in workers)}/{len(workers)} healthy)",
                  caption=None if wide or not workers else LEGEND)
    # Fixed widths for all but the services, so only they wrap when the console is narrow.
    ids = [w["worker_id"] for w in workers]
    table.add_column("worker", width=None if wide else _longest("worker", ids, WORKER_ID_WIDTH), overflow="fold")
    table.add_column("kind", width=None if wide else len("storage"))
    if wide:
        table.add_column("host")
        table.add_column("mesh")
    table.add_column("state", width=None if wide else len("healthy"))
    table.add_column("services", overflow="fold")
    if wide:
        table.add_column("load", justify="right")
    table.add_column("last beat" if wide else "beat", justify="right", width=None if wide else len("beat"))
    for w in workers:
        state = "[green]healthy[/]" if w["healthy"] else "[red]down[/]"
        if wide:
            services = "\n".join(f"{n} ({_state_of(w, n) or '?'})" for n in w["assigned_services"]) or "-"
            table.add_row(w["worker_id"], w["worker_type"], w["host"], _mesh(w), state, services,
                          f"{w['current_load']:.2f}", f"{w['age_seconds']:.1f}s ago")
        else:
            table.add_row(w["worker_id"], w["worker_type"], state, _marked(w), _age(w["age_seconds"]))
    return table


def _states(workers: list[dict[str, Any]], service: str) -> list[str]:
    """What the healthy workers assigned `service` report of it (the gap report counts only those)."""
    return [s for w in workers if w["healthy"] and service in w["assigned_services"] and (s := _state_of(w, service))]


def _ready(gap: dict[str, Any]) -> str:
    service = BY_NAME.get(gap["service"])
    replicas = gap.get("target_replicas", service.target_replicas if service else None)
    target = f"/{replicas}" if replicas else ""
    return f"{gap['healthy_replicas']}{target}"


def gaps_table(report: dict[str, Any], workers: list[dict[str, Any]] | None = None, wide: bool = False) -> Table:
    """The services, critical first; with `wide` every column, and the reasons go to `reasons` instead."""
    summary = report["summary"]
    gaps = report["gaps"]
    table = Table(title=f"Services ({summary['covered']}/{summary['total_services']} covered, "
                        f"{summary['needs_attention']} need attention)",
                  caption=None if wide else "ready: healthy replicas of the target; --wide: every reason")
    # A service's name is never folded or cut: its column is fixed as wide as the longest name.
    table.add_column("service", width=None if wide else _longest("service", [g["service"] for g in gaps]))
    if wide:
        for column in ("kind", "priority", "port", "assigned", "healthy", "status"):
            table.add_column(column)
    else:
        table.add_column("status", width=len("critical"))
        table.add_column("ready", justify="right", width=len("ready"))
        table.add_column("why", overflow="fold")
    for g in gaps:
        status = f"[{STATUS_STYLE.get(g['status'], '')}]{g['status']}[/]"
        if wide:
            table.add_row(g["service"], g["required_type"], str(g["priority"]), str(g["port"]),
                          str(g["current_workers"]), str(g["healthy_replicas"]), status)
        else:
            why = short_reason(g["reason"], _states(workers or [], g["service"]))
            table.add_row(g["service"], status, _ready(g), Text(why))
    return table


def reasons(report: dict[str, Any]) -> Group:
    """Each uncovered service's full reason from the gap report, one group of workers a line."""
    lines: list[RenderableType] = []
    for g in report["gaps"]:
        if not g["reason"]:
            continue
        lines.append(Padding(Text(g["service"], style="bold"), (0, 0, 0, 2)))
        whys = [f"{who}: {why}" for _, who, why in groups(g["reason"])] or [g["reason"]]
        lines += [Padding(Text(why), (0, 0, 0, 4)) for why in whys]
    return Group(Text("Why uncovered", style="bold"), *lines) if lines else Group()


def _print_uncut(console: Console, table: Table) -> None:
    """Print `table` at its natural width, past a narrower console (as `kubectl -o wide` does): nothing folds."""
    need = Measurement.get(console, console.options.update_width(WIDE_LIMIT), table).maximum
    if need <= console.width:
        console.print(table)
    else:
        console.print(Segments(console.render(table, console.options.update_width(need))), crop=False)


def render(console: Console, answers: Answers, wide: bool = False) -> None:
    """The tables; at 80 columns or more they fit the console, and with `wide` they may run past it."""
    workers = answers.workers["workers"]
    show = _print_uncut if wide else Console.print
    show(console, workers_table(workers, wide))
    show(console, gaps_table(answers.gaps, workers, wide))
    if wide:
        console.print(reasons(answers.gaps))


def show_status(coordinator_url: str, admin_token: str | None, console: Console | None = None, *,
                wide: bool = False, as_json: bool = False, transport: httpx.BaseTransport | None = None) -> int:
    """Print the tables (or, with `as_json`, the raw answers); 1 when the coordinator cannot be read."""
    console = console or Console()
    try:
        answers = fetch(coordinator_url, admin_token, transport)
    except (httpx.HTTPError, RuntimeError) as error:
        # With --json, stdout stays JSON or empty; a script reads the exit code and stderr.
        errors = Console(stderr=True) if as_json else console
        errors.print(f"[red]cannot read the coordinator at {coordinator_url}: {error}[/]")
        return 1
    if as_json:
        console.out(json.dumps({"workers": answers.workers, "gaps": answers.gaps}, indent=2), highlight=False)
        return 0
    render(console, answers, wide)
    return 0
