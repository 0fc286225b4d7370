"""What goes to the backend (headers, path, query), which requests may be retried, which names route."""

from __future__ import annotations

from typing import Any

import pytest

from rma.catalog import ALIASES, PUBLIC
from rma.routing.proxy import HOP_BY_HOP, outgoing, retry_safe
from rma.routing.router import RouteError, ServiceRouter, edge_services, resolve
from rma.routing.table import Table


def scope(headers: list[tuple[bytes, bytes]], path: str = "/service/ner/a%2Fb", query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": query, "headers": headers, "client": ("203.0.113.9", 5000), "scheme": "https"}


def test_hop_by_hop_dropped_forwarded_headers_added_query_kept() -> None:
    request = outgoing(scope([
        (b"host", b"edge.example"), (b"connection", b"keep-alive, x-secret-hop"), (b"x-secret-hop", b"1"),
        (b"keep-alive", b"timeout=5"), (b"transfer-encoding", b"chunked"), (b"te", b"trailers"),
        (b"x-forwarded-for", b"198.51.100.1"), (b"x-api-key", b"k"), (b"accept", b"text/plain"),
        (b"set-thing", b"a"), (b"set-thing", b"b"),
    ], query=b"q=1&r=%20"), "/a%2Fb", skip=HOP_BY_HOP | {b"x-api-key"})
    headers = [tuple(line.split(b": ", 1)) for line in request.lines.split(b"\r\n") if line]
    names = [k for k, _ in headers]
    assert request.target == b"/a%2Fb?q=1&r=%20"
    for gone in (b"host", b"connection", b"x-secret-hop", b"keep-alive", b"transfer-encoding", b"te", b"x-api-key"):
        assert gone not in names
    assert (b"x-forwarded-for", b"198.51.100.1, 203.0.113.9") in headers
    assert (b"x-forwarded-proto", b"https") in headers and (b"x-forwarded-host", b"edge.example") in headers
    assert [v for k, v in headers if k == b"set-thing"] == [b"a", b"b"]


def test_an_untrusting_router_sets_x_forwarded_itself() -> None:
    request = outgoing(scope([
        (b"host", b"edge.example"), (b"x-forwarded-for", b"198.51.100.1"), (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"bank.example"), (b"x-forwarded-port", b"1"), (b"forwarded", b"for=198.51.100.1"),
        (b"accept", b"text/plain"),
    ]), "/a", trust_forwarded=False)
    headers = [tuple(line.split(b": ", 1)) for line in request.lines.split(b"\r\n") if line]
    assert sorted(headers) == [(b"accept", b"text/plain"), (b"x-forwarded-for", b"203.0.113.9"),
                               (b"x-forwarded-host", b"edge.example"), (b"x-forwarded-proto", b"https")]


def test_retry_safety_follows_method_and_catalogue() -> None:
    assert retry_safe("notes-coa", "GET") and retry_safe("notes-coa", "DELETE")
    assert not retry_safe("notes-coa", "POST") and not retry_safe("llm-inference", "POST")
    assert retry_safe("ner-extraction", "POST") and retry_safe("rag-embeddings", "POST")


def test_resolve_aliases_unknown_and_non_http_services() -> None:
    assert resolve("ner", ALIASES) == "ner-extraction" and resolve("upload", ALIASES) == "document-processing"
    assert resolve("notes-coa", ALIASES) == "notes-coa"
    for name, status in (("nope", 404), ("redis", 400), ("edge-proxy", 400)):
        with pytest.raises(RouteError) as error:
            resolve(name, ALIASES)
        assert error.value.status == status and "error" in error.value.body


def test_outside_the_exposed_services_a_name_is_unknown() -> None:
    assert resolve("ner", ALIASES, PUBLIC) == "ner-extraction"
    for name in ("coordinator", "chromadb", "minio", "nope"):
        with pytest.raises(RouteError) as error:
            resolve(name, ALIASES, PUBLIC)
        assert error.value.status == 404 and error.value.body["error"] == f"unknown service {name!r}"
        listed = error.value.body["services"].split(", ")
        assert "ner" in listed and "ner-extraction" in listed and "coordinator" not in listed
        assert "chromadb" not in listed


def test_the_edge_routes_public_services_only() -> None:
    assert edge_services([]) == PUBLIC == {"llm-inference", "vision-ocr", "rag-embeddings", "ner-extraction",
                                          "document-processing", "notes-coa"}
    assert edge_services(["ner", "notes-coa"]) == {"ner-extraction", "notes-coa"}
    for name in ("coordinator", "chromadb", "edge-proxy", "nope"):
        with pytest.raises(ValueError, match=name):
            edge_services(["ner", name])


class Empty:
    def current(self) -> Table:
        return Table()


@pytest.mark.parametrize(("prefix", "root", "path", "expected"), [
    ("/service", "", "/service/ner/a%2Fb/c", ("ner", "/a%2Fb/c")),
    ("/service", "", "/service/ner", ("ner", "/")),
    ("/service", "", "/service/ner/", ("ner", "/")),
    ("", "/service", "/service/llm/v1/chat", ("llm", "/v1/chat")),
])
def test_split_keeps_the_raw_path(prefix: str, root: str, path: str, expected: tuple[str, str]) -> None:
    router = ServiceRouter(Empty(), prefix=prefix)
    assert router.split({"path": path, "raw_path": path.encode(), "root_path": root}) == expected


def test_split_refuses_a_missing_name() -> None:
    with pytest.raises(RouteError):
        ServiceRouter(Empty()).split({"path": "/service/", "raw_path": b"/service/", "root_path": ""})
