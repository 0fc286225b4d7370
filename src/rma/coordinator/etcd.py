"""etcd's v3 API through the JSON gateway every etcd ≥ 3.4 serves on its client URLs, on httpx.

The coordinator needs a handful of calls (range, put, delete, txn): each is one POST of JSON
with base64 keys and values. The Python gRPC clients are unmaintained (python-etcd3) or
synchronous on `requests` with a single endpoint (etcd3gw); this one tries every member of the
cluster in turn, starting with the last that answered, so a dead member costs one connect.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger("rma.coordinator")

TIMEOUT_S = 2.0
WATCH_RETRY_S = 0.2  # between a dropped watch and the next member
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops


class EtcdError(RuntimeError):
    """etcd refused a call, or no member answered; the message says which and why."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes  # empty for a deleted key, in a watch event
    create_revision: int
    mod_revision: int
    deleted: bool = False


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def range_end(prefix: str) -> str:
    """The end of the key range holding every key that starts with `prefix` (etcd's prefix convention)."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return _b64(b"\0")
    raw[-1] += 1
    return _b64(bytes(raw))


def put(key: str, value: str | bytes) -> dict[str, Any]:
    """A put, as a transaction's operation."""
    return {"request_put": {"key": _b64(key), "value": _b64(value)}}


def delete(key: str, prefix: bool = False) -> dict[str, Any]:
    """A delete of `key` (or of every key under it), as a transaction's operation."""
    request = {"key": _b64(key), **({"range_end": range_end(key)} if prefix else {})}
    return {"request_delete_range": request}


def get_operation(key: str) -> dict[str, Any]:
    """A read of `key`, as a transaction's operation."""
    return {"request_range": {"key": _b64(key)}}


def absent(key: str) -> dict[str, Any]:
    """A transaction's condition: `key` does not exist (it was never created, or was deleted)."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def _key_value(kv: dict[str, Any], deleted: bool = False) -> KeyValue:
    return KeyValue(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")),
                    int(kv.get("create_revision", 0)), int(kv.get("mod_revision", 0)), deleted)


def key_values(answer: dict[str, Any]) -> list[KeyValue]:
    return [_key_value(kv) for kv in answer.get("kvs", [])]


def revision_of(answer: dict[str, Any]) -> int:
    """The store's revision an answer was made at (every answer's header carries it)."""
    return int(answer.get("header", {}).get("revision", 0))


def modified(key: str, revision: int) -> dict[str, Any]:
    """A transaction's condition: `key` was last written at `revision` (0: it does not exist)."""
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


class Etcd:
    """A client of one etcd cluster, given its members' client URLs (http://host:2379)."""

    def __init__(self, endpoints: Sequence[str], timeout: float = TIMEOUT_S) -> None:
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self.endpoints = [url.rstrip("/") for url in endpoints]
        self._client = httpx.Client(timeout=timeout, trust_env=False)
        self._first = 0  # the member that answered last

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `/v3/{path}` on the first member that answers; EtcdError when none does."""
        problems = []
        for turn in range(len(self.endpoints)):
            index = (self._first + turn) % len(self.endpoints)
            url = self.endpoints[index]
            try:
                answer = self._client.post(f"{url}/v3/{path}", json=body)
            except httpx.HTTPError as error:
                problems.append(f"{url}: {type(error).__name__}")
                continue
            if answer.status_code >= 500 and "leader" in answer.text:  # a member cut off from the quorum
                problems.append(f"{url}: {answer.text[:200]}")
                continue
            if answer.status_code != 200:
                raise EtcdError(f"etcd at {url} refused {path}: HTTP {answer.status_code} {answer.text[:300]}")
            self._first = index
            result: dict[str, Any] = answer.json()
            return result
        raise EtcdError("no etcd member answered (" + "; ".join(problems) + ")")

    def get(self, key: str) -> KeyValue | None:
        found = key_values(self.call("kv/range", {"key": _b64(key)}))
        return found[0] if found else None

    def get_prefix(self, prefix: str) -> list[KeyValue]:
        """Every key under `prefix`, in key order."""
        return self.snapshot(prefix)[0]

    def snapshot(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix`, and the revision they were read at (a watch from the next misses nothing)."""
        answer = self.call("kv/range", {"key": _b64(prefix), "range_end": range_end(prefix)})
        return key_values(answer), revision_of(answer)

    async def watch(self, prefix: str, after: int) -> AsyncIterator[list[KeyValue]]:
        """Each batch of changes under `prefix` made after revision `after`, as etcd commits them, for ever:
        a dropped stream is opened again on the next member, from where it left off."""
        body = {"key": _b64(prefix), "range_end": range_end(prefix)}
        async with httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT_S, read=None), trust_env=False) as client:
            while True:
                url = self.endpoints[self._first]
                try:
                    async with client.stream("POST", f"{url}/v3/watch", json={"create_request": {
                            **body, "start_revision": str(after + 1)}}) as stream:
                        async for line in stream.aiter_lines():
                            result = json.loads(line).get("result", {}) if line.strip() else {}
                            events = [_key_value(e["kv"], e.get("type") == "DELETE") for e in result.get("events", [])]
                            if events:
                                after = max(e.mod_revision for e in events)
                                yield events
                except (httpx.HTTPError, ValueError) as error:
                    log.warning("etcd watch on %s dropped (%s); opening it on the next member", url,
                                type(error).__name__)
                self._first = (self._first + 1) % len(self.endpoints)
                await asyncio.sleep(WATCH_RETRY_S)

    def txn(self, success: Sequence[dict[str, Any]], compare: Sequence[dict[str, Any]] = (),
            failure: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """One atomic transaction: `success` if every `compare` holds, else `failure`."""
        if len(success) > MAX_TXN_OPS or len(failure) > MAX_TXN_OPS:
            raise ValueError(f"an etcd transaction takes at most {MAX_TXN_OPS} operations")
        return self.call("kv/txn", {"compare": list(compare), "success": list(success), "failure": list(failure)})

    def write(self, operations: Sequence[dict[str, Any]]) -> None:
        """Puts and deletes, in transactions of at most MAX_TXN_OPS operations (each one atomic)."""
        for start in range(0, len(operations), MAX_TXN_OPS):
            self.txn(operations[start:start + MAX_TXN_OPS])

    def put_if_absent(self, key: str, value: str) -> str:
        """Put `value` under `key` unless the key exists; the value it holds afterwards either way."""
        answer = self.txn([put(key, value)], compare=[absent(key)],
                          failure=[get_operation(key)])
        if answer.get("succeeded"):
            return value
        held = key_values(answer["responses"][0]["response_range"])
        if not held:  # deleted between the compare and the read: cannot happen inside one transaction
            raise EtcdError(f"etcd said {key} exists and then had no value for it")
        return held[0].value.decode()

    def close(self) -> None:
        self._client.close()
