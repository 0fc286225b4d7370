"""`rma discover`: where a service answers, as one line a program can use (`redis://...`, `http://...`)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import typer

from rma.front import client_context


def discover_line(answer: dict[str, Any]) -> str:
    """The recommended replica's connection URL (stores, for authorised callers), else its plain URL."""
    recommended = next(w for w in answer["workers"] if w["worker_id"] == answer["recommended"])
    return str(recommended.get("connection_url") or recommended["url"])


def show_discovery(coordinator_url: str, service: str, admin_token: str | None, api_key: str | None,
                   as_json: bool) -> int:
    """Print where `service` answers; returns the exit code (1 when the coordinator says no)."""
    headers = {}
    if admin_token:
        headers["Authorization"] = f"Bearer {admin_token}"
    if api_key:
        headers["X-API-Key"] = api_key
    try:
        answer = httpx.get(f"{coordinator_url}/api/services/discover/{service}", headers=headers, timeout=10,
                           verify=client_context())
    except httpx.HTTPError as error:
        typer.echo(f"cannot reach the coordinator at {coordinator_url}: {error}", err=True)
        return 1
    try:
        body = answer.json()
    except ValueError:
        body = {"error": answer.text}
    if answer.status_code != 200:
        typer.echo(f"{service}: HTTP {answer.status_code}: {body.get('error', body)}", err=True)
        return 1
    typer.echo(json.dumps(body, indent=2) if as_json else discover_line(body))
    return 0
