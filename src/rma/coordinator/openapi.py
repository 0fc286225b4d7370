"""The coordinator's whole public contract as one OpenAPI document, served at `/openapi.json`.

FastAPI documents only its own routes. The worker protocol runs on plain Starlette for speed, `/service` is
the routing engine's gateway and the dashboard is static files, so this module adds them by hand, with the
protocol's pydantic models as their schemas, the statuses each route really answers and the credentials it
really takes: clients and fuzzers (tests/coordinator/test_openapi.py) read the same contract the code keeps.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from rma import catalog
from rma.coordinator.router_report import ReportBody
from rma.protocol import (
    ClientRequest,
    ErrorBody,
    HeartbeatRequest,
    HeartbeatResponse,
    MeshMembership,
    RegisterRequest,
    RegisterResponse,
)

Json = dict[str, Any]
REF = "#/components/schemas/{model}"
MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (RegisterRequest, "validation"), (RegisterResponse, "serialization"), (HeartbeatRequest, "validation"),
    (HeartbeatResponse, "serialization"), (ErrorBody, "serialization"), (ReportBody, "validation"),
    (ClientRequest, "validation"), (MeshMembership, "serialization"),
]
# rma.protocol checks a tunnel URL in an AfterValidator, which its JSON schema cannot show: the same rule here,
# with Python's `\s` spelled out (it takes more than JSON Schema's: \x1c-\x1f and \x85 too).
def _ranges(codes: list[int]) -> str:
    """A regex character class's body for `codes` (sorted), runs written as ranges."""
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in runs)


_SPACE = _ranges([c for c in range(0x10000) if chr(c).isspace()])
HTTP_URL_PATTERN = f"^https?://[^{_SPACE}/?#]+(?::[0-9]+)?(/[^{_SPACE}]*)?$"
# What the catalogue routes over HTTP (the stores speak their own protocols, the routers would loop).
HTTP_SERVICES = [s.name for s in catalog.SERVICES
                 if s.health.protocol == "http" and s.name not in ("edge-proxy", "load-balancer")]
SERVICE_METHODS = ("get", "post", "put", "patch", "delete")
DASHBOARD = Path(__file__).parent / "dashboard"

BEARER: list[Json] = [{"bearerAuth": []}]
PUBLIC: list[Json] = []
JOIN_NOTE = ("Takes the join token (RMA_JOIN_TOKEN) as a bearer token; while RMA_JOIN_TOKEN is unset it takes none "
             "and is open to loopback callers only (403 for any other).")
ADMIN_NOTE = ("Takes the admin token (RMA_ADMIN_TOKEN) as a bearer token; while RMA_ADMIN_TOKEN is unset it takes "
              "none and is open to loopback callers only (403 for any other).")
WORKER_NOTE = ("Takes the worker's own token (`worker_token` from its registration) as a bearer token. An unknown "
               "worker id answers 401 as a wrong token does, so ids cannot be probed.")
KEY_NOTE = ("Takes a client key (RMA_API_KEYS) in X-API-Key; while RMA_API_KEYS is unset it takes none and is open "
            "to every caller. The key stays at the gateway: it is not passed on to the service.")

DESCRIPTION = ("The RMA pool's coordinator: workers register and beat here (the worker protocol), operators read "
               "/api/admin, routers read /api/services, and clients reach the pool's services through /service. "
               "Errors are JSON objects with an `error` message. Each operation says which credential it takes.")

SECURITY_SCHEMES: Json = {
    "bearerAuth": {
        "type": "http", "scheme": "bearer",
        "description": "`Authorization: Bearer <token>`, one of three tokens, as each operation says: the join "
                       "token (RMA_JOIN_TOKEN) to register, a worker's own token (from its registration) for its "
                       "heartbeat, watch and unregistration, the admin token (RMA_ADMIN_TOKEN) for /api/admin. "
                       "While the join or admin token is unset its routes take no token and are open to loopback "
                       "callers only.",
    },
    "apiKey": {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": "A client key of the /service gateway (RMA_API_KEYS, the edge proxy's keys); unset: "
                       "/service takes no key. It does not read stores' credentials.",
    },
    "storeKey": {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": "A store key (RMA_STORE_KEYS): discovery then adds stores' secrets and connection URLs.",
    },
}

ROUTE_ERROR: Json = {
    "type": "object", "title": "RouteError", "required": ["error"],
    "description": "An answer of the /service gateway itself (not of a service).",
    "properties": {
        "error": {"type": "string"},
        "service": {"type": "string", "description": "The catalogue name the request was for."},
        "replica": {"type": "string", "description": "The worker whose replica failed."},
        "services": {"type": "string", "description": "On 404: the names this route knows, comma-separated."},
        "reason": {"type": "string"},
    },
}
NO_REPLICA: Json = {
    "type": "object", "title": "NoReplica", "required": ["error", "service", "reason"],
    "description": "503 of /service: the service has no healthy replica now, and why (the gap report's reason).",
    "properties": {"error": {"type": "string"}, "service": {"type": "string"}, "reason": {"type": "string"}},
}
UNREGISTERED: Json = {
    "type": "object", "title": "Unregistered", "required": ["status", "message"],
    "properties": {"status": {"const": "ok"}, "message": {"type": "string"}},
}
HEALTH: Json = {
    "type": "object", "title": "Health", "required": ["status", "workers"],
    "properties": {
        "status": {"const": "healthy"},
        "workers": {"type": "object", "required": ["total", "active", "stale"], "properties": {
            "total": {"type": "integer", "minimum": 0}, "active": {"type": "integer", "minimum": 0},
            "stale": {"type": "integer", "minimum": 0}}},
    },
}
OK: Json = {"type": "object", "title": "Ok", "required": ["status"], "properties": {"status": {"const": "ok"}}}


def coordinator_openapi(api: FastAPI, max_body_bytes: int) -> Json:
    """The complete document: FastAPI's own for `api`'s routes, completed, plus every route FastAPI does not
    serve (see `create_app`). `max_body_bytes` is the coordinator's body cap (413 past it)."""
    doc = get_openapi(title=api.title, version=api.version, description=api.description or DESCRIPTION,
                      routes=api.routes)
    schemas: Json = doc.setdefault("components", {}).setdefault("schemas", {})
    _merge(schemas, _model_schemas())
    _merge(schemas, {"RouteError": ROUTE_ERROR, "NoReplica": NO_REPLICA, "Unregistered": UNREGISTERED,
                     "Health": HEALTH, "Ok": OK})
    too_large = _error(f"The body is over the coordinator's cap of {max_body_bytes} bytes.")
    for path, methods in doc["paths"].items():
        for operation in methods.values():
            _complete(path, operation, too_large)
    paths = doc["paths"]
    for path, item in {**_worker_paths(too_large), **_service_paths(), **_dashboard_paths()}.items():
        if path in paths:
            raise ValueError(f"{path} is documented twice")
        paths[path] = item
    _drop_unused(doc)
    doc["components"]["securitySchemes"] = SECURITY_SCHEMES
    return copy.deepcopy(doc)  # nothing shared with this module's constants


def install(api: FastAPI, max_body_bytes: int) -> None:
    """Make `api` serve `coordinator_openapi` at its openapi_url, built once, on the first request."""
    built: list[Json] = []

    def document() -> Json:
        if not built:
            built.append(coordinator_openapi(api, max_body_bytes))
        return built[0]

    api.openapi = document  # type: ignore[method-assign]


def _model_schemas() -> Json:
    """The protocol models' JSON schemas (with the models they use), named as components, plus what their
    Python validators check and JSON Schema cannot see from them."""
    _, top = models_json_schema(MODELS, ref_template=REF)
    defs: Json = top.get("$defs", {})
    url = defs["RegisterRequest"]["properties"]["tunnel_url"]
    for branch in url.get("anyOf", [url]):
        if branch.get("type") == "string":
            branch.setdefault("pattern", HTTP_URL_PATTERN)
    defs["ReportBody"]["properties"]["services"].setdefault("propertyNames", {"enum": list(catalog.BY_NAME)})
    defs["FiguresBody"].setdefault("description", "`errors` counts failed requests, so it is at most the sum of "
                                                  "`latency` (every request, by latency bucket); more is a 422.")
    return defs


def _merge(schemas: Json, more: Json) -> None:
    for name, schema in more.items():
        if name in schemas and schemas[name] != schema:
            raise ValueError(f"two different schemas named {name}")
        schemas[name] = schema


def _ref(name: str) -> Json:
    return {"$ref": REF.format(model=name)}


def _json(description: str, schema: Json, headers: Json | None = None) -> Json:
    answer: Json = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def _error(description: str, name: str = "ErrorBody", headers: Json | None = None) -> Json:
    return _json(description, _ref(name), headers)


def _admin_errors() -> Json:
    return {"401": _error("RMA_ADMIN_TOKEN is set and the bearer token is missing or not it."),
            "403": _error("RMA_ADMIN_TOKEN is unset and the caller is not on loopback.")}


def _complete(path: str, operation: Json, too_large: Json) -> None:
    """Credentials and the answers FastAPI cannot see (the routes raise ApiError) on a FastAPI operation."""
    responses: Json = operation["responses"]
    if "422" in responses:
        # The app answers FastAPI's validation errors with its own shape (`app._invalid`), not HTTPValidationError.
        responses["422"] = _error("The parameters are invalid.")
    if path.startswith("/api/admin/"):
        operation["security"] = BEARER
        operation["description"] = _join(operation.get("description"), ADMIN_NOTE)
        responses.update(_admin_errors())
    elif path in ("/health", "/metrics", "/api/services/table"):
        operation["security"] = PUBLIC
    if path == "/health":
        responses["200"] = _json("The coordinator is up; its workers by state.", _ref("Health"))
    elif path == "/metrics":
        responses["200"] = {"description": "Prometheus' text format.", "content": {"text/plain": {"schema": {
            "type": "string"}}}}
    elif path == "/api/services/table":
        operation["description"] = _join(operation.get("description"), "Public: the routers read it.")
    elif path == "/api/services/discover/{service}":
        # Open to anyone; the admin token or a store key adds stores' credentials.
        operation["security"] = [{}, *BEARER, {"storeKey": []}]
        operation["description"] = _join(operation.get("description"), (
            "Open to every caller. With the admin token as a bearer token (any loopback caller while "
            "RMA_ADMIN_TOKEN is unset) or a store key (RMA_STORE_KEYS) in X-API-Key, a store's replicas carry "
            "its secret, engine and connection URL."))
        responses.pop("422", None)  # a str path parameter: nothing for FastAPI to refuse
        operation["parameters"][0]["examples"] = {name: {"value": name} for name in ("ner-extraction", "redis")}
        responses["404"] = _error("The catalogue has no such service.")
        responses["503"] = _error("No worker serves the service healthily now.")
    elif path == "/api/admin/mesh/clients":
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(
            "ClientRequest")}}}
        responses["200"] = _json("Admitted: the client member's certificate, the CA and the lighthouses.",
                                 _ref("MeshMembership"))
        responses["404"] = _error("The pool does not run on the mesh.")
        responses["403"] = _error("The name or the key was revoked from the mesh.")
        responses["409"] = _error("The name is a worker's.")
        responses["413"] = too_large
        responses["422"] = _error("The body is not JSON, or not a ClientRequest.")
    elif path == "/api/admin/mesh/revoke/{worker_id}":
        responses.pop("422", None)  # a str path parameter: nothing for FastAPI to refuse
        responses["404"] = _error("The pool does not run on the mesh, or the worker has no place on it.")
    elif path == "/api/admin/router-report":
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(
            "ReportBody")}}}
        responses["200"] = _json("Added to the history.", _ref("Ok"))
        responses["413"] = too_large
        responses["422"] = _error("The body is not JSON, or not a ReportBody.")


def _join(first: str | None, second: str) -> str:
    return f"{first}\n\n{second}" if first else second


def _worker_paths(too_large: Json) -> Json:
    """The worker protocol (`routes.worker_routes`), plain Starlette endpoints, in `routes`' own terms."""
    worker_id = {"name": "worker_id", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "The worker's id, as it registered."}
    return {
        "/api/worker/register": {"post": {
            "summary": "Register a worker", "operationId": "register_worker", "tags": ["worker"],
            "description": "Join the pool (or re-join it): the answer is the worker's assignment and its new "
                           "token. The host routers will use is the connection's peer, unless the operator "
                           "vouches for the peer's network (RMA_VOUCHED_NETWORKS). " + JOIN_NOTE,
            "security": BEARER,
            "parameters": [{"name": "X-Worker-Token", "in": "header", "required": False, "schema": {
                "type": "string"}, "description": "The worker's current token: needed to re-register an id "
                                                  "that is registered already."}],
            # An empty body reads as {}: every field has a default.
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref(
                "RegisterRequest")}}},
            "responses": {
                "200": _json("Registered: the assignment and the worker's token.", _ref("RegisterResponse")),
                "401": _error("RMA_JOIN_TOKEN is set and the bearer token is missing or not it."),
                "403": _error("RMA_JOIN_TOKEN is unset and the caller is not on loopback; or the worker may not "
                              "register as the host it advertises (not its own address, loopback from another "
                              "machine, link-local, a name from a network nobody vouched for); or, on a pool "
                              "that runs on the mesh, it sent no mesh_public_key, or it or its key was revoked."),
                "409": _error("The id is registered already and X-Worker-Token is not that worker's token."),
                "413": too_large,
                "422": _error("The body is not JSON, or not a RegisterRequest."),
            },
        }},
        "/api/worker/heartbeat": {"post": {
            "summary": "Heartbeat", "operationId": "heartbeat", "tags": ["worker"],
            "description": "The worker's state every interval; the answer is its current assignment. The body "
                           "is checked before the token (422 first). " + WORKER_NOTE,
            "security": BEARER,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(
                "HeartbeatRequest")}}},
            "responses": {
                "200": _json("The worker's assignment now.", _ref("HeartbeatResponse")),
                "401": _error("The bearer token is missing, or not this worker's (or the worker is unknown)."),
                "413": too_large,
                "422": _error("The body is not JSON, or not a HeartbeatRequest."),
            },
        }},
        "/api/worker/unregister/{worker_id}": {"delete": {
            "summary": "Unregister a worker", "operationId": "unregister_worker", "tags": ["worker"],
            "description": "Leave the pool: the worker's services become gaps for others to fill. Takes the "
                           "worker's own token or, when RMA_ADMIN_TOKEN is set, the admin token, as a bearer "
                           "token. An unknown id answers 401 as a wrong token does, but 404 to the admin.",
            "security": BEARER, "parameters": [worker_id],
            "responses": {
                "200": _json("Unregistered.", _ref("Unregistered")),
                "401": _error("The bearer token is missing, or neither this worker's nor the admin token."),
                "404": _error("The admin asked for a worker that is not registered."),
            },
        }},
        "/api/worker/watch/{worker_id}": {"get": {
            "summary": "Watch the worker's assignment", "operationId": "watch_worker", "tags": ["worker"],
            "description": "A stream that stays open: the worker's assignment as one JSON line (a "
                           "HeartbeatResponse) now and at every change, an empty line each heartbeat interval "
                           "between. A dropped stream marks the worker down after one interval. " + WORKER_NOTE,
            "security": BEARER, "parameters": [worker_id],
            "responses": {
                "200": {"description": "Newline-delimited JSON: HeartbeatResponse lines and empty keep-alive "
                                       "lines.",
                        "content": {"application/x-ndjson": {"schema": {"type": "string"},
                                                             "x-line-schema": _ref("HeartbeatResponse")}}},
                "401": _error("The bearer token is missing, or not this worker's (or the worker is unknown)."),
            },
        }},
    }


def _service_paths() -> Json:
    """The coordinator's own `/service` mount: the routing engine behind the edge proxy's gateway."""
    parameters = [
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "examples": {
            name: {"value": name} for name in ("ner-extraction", "ocr", "chromadb")},
         "description": "A catalogue service that speaks HTTP, or an alias of one: " + ", ".join(HTTP_SERVICES)},
        {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "The path on the service (its query string passes too)."},
    ]
    retry = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
    responses = {
        "default": {"description": "The service's own answer, relayed as its replica sent it."},
        "400": _error("The name is a router (edge-proxy, load-balancer) or a service that does not speak HTTP "
                      "(the stores: find them through /api/services/discover/{service}); or Content-Length is "
                      "not a number.", "RouteError"),
        "401": _error("RMA_API_KEYS is set and X-API-Key is missing or not one of them.", "RouteError",
                      {"WWW-Authenticate": {"schema": {"const": "ApiKey"}}}),
        "404": _error("No such service (`services` lists the names this route knows), or no name.", "RouteError"),
        "413": _error("The body is over the gateway's cap (RMA_MAX_BODY_MB, 256 MiB unless set); the connection "
                      "closes.", "RouteError"),
        "429": _error("Over the rate limit (RMA_RATE_LIMIT a second, RMA_RATE_BURST at once) of the API key, or "
                      "of the client address without one.", "RouteError", retry),
        "502": _error("No replica could be reached, or one dropped the connection.", "RouteError"),
        "503": _error("No healthy replica of the service now; or none this coordinator can reach: the pool runs on "
                      "a mesh the coordinator is not a member of (call an edge proxy).", "NoReplica", retry),
        "504": _error("The replica did not answer in time.", "RouteError"),
    }
    item: Json = {"parameters": parameters}
    for method in SERVICE_METHODS:
        operation: Json = {
            "summary": f"{method.upper()} through the pool to a service", "operationId": f"service_{method}",
            "tags": ["service"], "description": "Routed to a healthy replica (retried on another where safe). "
                                                + KEY_NOTE,
            "security": [{"apiKey": []}], "responses": copy.deepcopy(responses),
        }
        if method in ("post", "put", "patch"):
            operation["requestBody"] = {"required": False, "content": {
                "application/json": {"schema": {}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
        item[method] = operation
    return {"/service/{name}/{path}": item}


def _dashboard_paths() -> Json:
    """The operator's dashboard: static files that read /api/admin with the admin token like any client."""
    return {
        "/": {"get": {
            "summary": "The dashboard", "operationId": "dashboard", "tags": ["dashboard"], "security": PUBLIC,
            "responses": {"200": {"description": "The dashboard's page.", "content": {"text/html": {"schema": {
                "type": "string"}}}}},
        }},
        "/dashboard/{path}": {"get": {
            "summary": "The dashboard's files", "operationId": "dashboard_file", "tags": ["dashboard"],
            "security": PUBLIC,
            "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
                            "examples": {f.name: {"value": f.name} for f in sorted(DASHBOARD.glob("*.*s"))}}],
            "responses": {"200": {"description": "A script or style sheet.", "content": {"*/*": {"schema": {}}}},
                          "404": _error("No such file.")},
        }},
    }


def _drop_unused(doc: Json) -> None:
    """Drop FastAPI's HTTPValidationError and ValidationError once nothing refers to them."""
    schemas = doc["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):
        rest = {**doc, "components": {**doc["components"], "schemas": {k: v for k, v in schemas.items() if k != name}}}
        if REF.format(model=name) not in _refs(rest):
            schemas.pop(name, None)


def _refs(node: object) -> set[str]:
    if isinstance(node, dict):
        return {node["$ref"]} if isinstance(node.get("$ref"), str) else set().union(*map(_refs, node.values()))
    if isinstance(node, list):
        return set().union(*map(_refs, node))
    return set()
