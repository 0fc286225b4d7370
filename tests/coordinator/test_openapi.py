"""The coordinator's OpenAPI document is its whole contract: every route it serves, the credentials each takes,
and a Schemathesis fuzz of the real process against it (no 5xx, answers as documented, state intact).

RMA_FUZZ_EXAMPLES (cases per operation, 25) and RMA_FUZZ_SEED fuzz deeper or elsewhere than CI does.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import jsonschema_rs
import pytest
import requests
import schemathesis
from fastapi.routing import iter_route_contexts
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.openapi.checks import RejectedPositiveData
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from etcd_cluster import etcd_cluster
from etcd_cluster import skip_reason as etcd_skip_reason
from procs import RmaProcess, start_coordinator
from rma.coordinator.app import create_app
from rma.coordinator.router_report import ReportBody
from rma.coordinator.state import CoordinatorSettings
from rma.mesh.pki import make_node_keys
from rma.protocol import HeartbeatRequest, HeartbeatResponse, RegisterRequest

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
REMOTE = ("203.0.113.7", 50000)  # a documentation address: the document is public, whoever asks
JOIN, ADMIN, KEY = "join-secret", "admin-secret", "client-key"
EXAMPLES = int(os.environ.get("RMA_FUZZ_EXAMPLES", "25"))  # per operation
SEED = int(os.environ.get("RMA_FUZZ_SEED", "20240611"))
SLOW_ANSWER_S = 5.0  # on loopback, with nothing to forward to: an answer this slow is a hang


def served(app: Starlette) -> tuple[set[tuple[str, str]], set[str]]:
    """What `app` really routes: (method, path) of every route (FastAPI's included), and the mounts' prefixes
    whose app routes by itself (the /service gateway, the dashboard's files)."""
    operations: set[tuple[str, str]] = set()
    mounts: set[str] = set()

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount) and hasattr(route.app, "routes"):
                walk(route.app.routes, prefix + route.path)
            elif isinstance(route, Mount):
                mounts.add(prefix + route.path + "/")
            elif isinstance(route, Route):
                if route.include_in_schema:
                    operations.update((m.lower(), prefix + route.path) for m in route.methods or () if m != "HEAD")
            else:  # FastAPI's included routers
                for context in iter_route_contexts([route]):
                    if context.include_in_schema:
                        operations.update((m.lower(), prefix + str(context.path)) for m in context.methods or ()
                                          if m != "HEAD")

    walk(list(app.routes), "")
    return operations, mounts


def documented(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): operation for path, item in doc["paths"].items()
            for method, operation in item.items() if method in METHODS}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


@pytest.fixture
def app_and_doc(tmp_path: Path) -> Iterator[tuple[Starlette, dict[str, Any]]]:
    app = create_app(CoordinatorSettings(data_dir=tmp_path, join_token=JOIN, admin_token=ADMIN))
    with TestClient(app, client=REMOTE) as client:
        response = client.get("/openapi.json")  # no credentials, from another machine
        assert response.status_code == 200, response.text
        assert client.get("/openapi.json").json() == response.json()
        yield app, response.json()


def test_document_lists_every_route_the_app_serves(app_and_doc: tuple[Starlette, dict[str, Any]]) -> None:
    app, doc = app_and_doc
    operations, mounts = served(app)
    listed = documented(doc)
    assert {"/service/", "/dashboard/"} <= mounts
    assert {("post", "/api/worker/register"), ("post", "/api/worker/heartbeat"),
            ("delete", "/api/worker/unregister/{worker_id}"), ("get", "/api/worker/watch/{worker_id}"),
            ("get", "/health"), ("get", "/api/admin/workers")} <= operations
    outside = {op for op in listed if not any(op[1].startswith(m) for m in mounts)}
    assert operations - outside == set(), "served but not documented"
    assert outside - operations == set(), "documented but not served"
    for mount in mounts:
        assert any(path.startswith(mount) for _, path in listed), f"nothing documented under {mount}"
    service = {method for method, path in listed if path == "/service/{name}/{path}"}
    assert {"get", "post"} <= service


def test_document_declares_who_may_call_what(app_and_doc: tuple[Starlette, dict[str, Any]]) -> None:
    _, doc = app_and_doc
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    listed = documented(doc)
    for (method, path), operation in listed.items():
        assert "security" in operation, f"{method.upper()} {path} says nothing of its credentials"
        for requirement in operation["security"]:
            assert set(requirement) <= set(schemes), (method, path, requirement)
    bearer = [{"bearerAuth": []}]
    for path in ("/api/worker/register", "/api/worker/heartbeat", "/api/admin/workers"):
        method = "get" if "admin" in path else "post"
        assert listed[method, path]["security"] == bearer, path
    assert listed["delete", "/api/worker/unregister/{worker_id}"]["security"] == bearer
    assert listed["get", "/api/worker/watch/{worker_id}"]["security"] == bearer
    assert listed["get", "/service/{name}/{path}"]["security"] == [{"apiKey": []}]
    assert listed["get", "/health"]["security"] == []
    assert "loopback" in listed["post", "/api/worker/register"]["description"]
    assert "loopback" in listed["get", "/api/admin/workers"]["description"]
    # The answers the code gives (see test_routes.py for each of them).
    answers = {op: set(operation["responses"]) for op, operation in listed.items()}
    assert {"200", "401", "403", "409", "413", "422"} <= answers["post", "/api/worker/register"]
    assert {"200", "401", "413", "422"} <= answers["post", "/api/worker/heartbeat"]
    assert {"200", "401", "404"} <= answers["delete", "/api/worker/unregister/{worker_id}"]
    assert {"200", "401", "403"} <= answers["get", "/api/admin/workers"]
    assert {"401", "404", "413", "429", "503"} <= answers["get", "/service/{name}/{path}"]
    unavailable = listed["get", "/service/{name}/{path}"]["responses"]["503"]["content"]["application/json"]
    assert doc["components"]["schemas"]["NoReplica"]["required"] == ["error", "service", "reason"]
    assert unavailable["schema"] == {"$ref": "#/components/schemas/NoReplica"}


def test_document_is_valid_openapi_with_the_protocol_models(app_and_doc: tuple[Starlette, dict[str, Any]]) -> None:
    _, doc = app_and_doc
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    loaded = list(schema.get_all_operations())
    assert all(result.ok() for result in loaded)
    assert len(loaded) == len(documented(doc))
    components = doc["components"]["schemas"]
    for ref in set(refs(doc)):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components, ref
    body = doc["paths"]["/api/worker/register"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/RegisterRequest"}
    assert set(components["RegisterRequest"]["properties"]) == set(RegisterRequest.model_fields)
    assert set(components["HeartbeatRequest"]["properties"]) == set(HeartbeatRequest.model_fields)
    assert components["HeartbeatRequest"]["required"] == ["worker_id"]
    assert "HTTPValidationError" not in components  # the app answers its own error shape


def test_document_is_built_once(tmp_path: Path) -> None:
    app = create_app(CoordinatorSettings(data_dir=tmp_path))
    api = next(r.app for r in app.routes if isinstance(r, Mount) and r.path == "")
    assert api.openapi() is api.openapi()


def test_worker_routes_refuse_other_methods_with_405(tmp_path: Path) -> None:
    with TestClient(create_app(CoordinatorSettings(data_dir=tmp_path))) as client:
        response = client.get("/api/worker/register")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_service_takes_the_keys_the_settings_give(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RMA_API_KEYS", raising=False)
    with TestClient(create_app(CoordinatorSettings(data_dir=tmp_path, api_keys=(KEY,)))) as client:
        response = client.get("/service/ner-extraction/health")
    assert response.status_code == 401, response.text


@pytest.mark.parametrize("tunnel_url", ["http://[x", "https://a[b:1", "http://[::1"])
def test_register_refuses_a_tunnel_url_with_broken_brackets(tmp_path: Path, tunnel_url: str) -> None:
    # Found by the fuzz below: url_host's urlsplit raises ValueError("Invalid IPv6 URL"), answered as a bare 500.
    with TestClient(create_app(CoordinatorSettings(data_dir=tmp_path)), client=("127.0.0.1", 50000),
                    raise_server_exceptions=False) as client:
        response = client.post("/api/worker/register", json={"worker_id": "w1", "tunnel_url": tunnel_url})
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert "error" in response.json()


# -- the real process, fuzzed ------------------------------------------------------------------------------


def register(url: str, worker_id: str, engines: list[str], mesh_key: str | None = None) -> dict[str, Any]:
    response = httpx.post(f"{url}/api/worker/register", headers={"Authorization": f"Bearer {JOIN}"}, timeout=5,
                          json={"worker_id": worker_id, "advertise_host": "127.0.0.1", "mesh_public_key": mesh_key,
                                "capabilities": {"worker_type": "cpu", "engines": engines}})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def admin_workers(url: str) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{url}/api/admin/workers", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
    assert response.status_code == 200, response.text
    return {w["worker_id"]: w for w in response.json()["workers"]}


def no_undocumented_server_error(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """`not_a_server_error`, except for the 502, 503 and 504 an operation documents: the /service gateway's word
    on its replicas (none healthy, none reachable, too slow) and discovery's "none healthy" are answers."""
    documented = case.operation.definition.raw.get("responses", {})
    if response.status_code in (502, 503, 504) and str(response.status_code) in documented:
        return None
    return not_a_server_error(ctx, response, case)


# Rules a model validator keeps that JSON Schema cannot say (each is in the schema's description): a
# schema-valid case that breaks one is rightly refused.
INEXPRESSIBLE = {"POST /api/admin/router-report": "more errors than requests"}
# The request bodies' models: a case Schemathesis calls invalid that the model takes is judged against them.
BODIES: dict[str, type[BaseModel]] = {"/api/worker/register": RegisterRequest,
                                      "/api/worker/heartbeat": HeartbeatRequest,
                                      "/api/admin/router-report": ReportBody}


def tolerated(failure: Exception, case: schemathesis.Case, response: Any) -> bool:
    """A failed check that is not the server's fault: a rule JSON Schema cannot say (INEXPRESSIBLE), a
    "schema-violating" case whose body the document allows (the fault was in a header this test replaces), or
    one that pydantic's lax mode takes (true for 1, "4" for 4) and its strict mode refuses."""
    label = case.operation.label
    if isinstance(failure, RejectedPositiveData):
        return INEXPRESSIBLE.get(label, "\0") in response.text
    model = BODIES.get(case.operation.path)
    if not isinstance(failure, AcceptedNegativeData) or model is None:
        return False
    sent = response.request.body or b"{}"
    components = case.operation.schema.raw_schema["components"]
    validator = jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{model.__name__}",
                                             "components": components})
    try:
        if validator.is_valid(json.loads(sent)):
            return True
    except (ValueError, UnicodeError):  # lone surrogates: Python's json reads them, Rust's strings cannot
        pass
    try:
        model.model_validate_json(sent, strict=True)
    except ValidationError:
        return True
    return False  # the document refuses what the model takes, strict and all: they disagree


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("pool", [
    "lan", pytest.param("mesh", marks=pytest.mark.skipif(shutil.which("nebula-cert") is None,
                                                         reason="nebula-cert is not installed")),
    pytest.param("etcd", marks=pytest.mark.skipif(etcd_skip_reason() is not None, reason=str(etcd_skip_reason())))])
def test_fuzzing_the_real_coordinator_finds_no_server_error(tmp_path: Path, processes: list[RmaProcess],
                                                            pool: str) -> None:
    """A LAN pool, a pool on the mesh (where registration takes a public key and signs it), and a replica on
    etcd (whose store writes go through etcd's transactions)."""
    mesh = pool == "mesh"
    with contextlib.ExitStack() as stack:
        store = {"RMA_STORE_URL": stack.enter_context(etcd_cluster(tmp_path / "etcd", 1)).url} if pool == "etcd" else {}
        fuzz_a_coordinator(tmp_path, processes, mesh, store)


def fuzz_a_coordinator(tmp_path: Path, processes: list[RmaProcess], mesh: bool, store: dict[str, str]) -> None:
    # A long interval: nobody is swept down (and has its services moved) while the fuzz runs.
    coordinator, url = start_coordinator(tmp_path, interval=60.0, env={
        "RMA_JOIN_TOKEN": JOIN, "RMA_ADMIN_TOKEN": ADMIN, "RMA_API_KEYS": KEY,
        **({"RMA_MESH_NETWORK": "198.19.0.0/16"} if mesh else {}), **store})
    processes.append(coordinator)

    def key(worker_id: str) -> str | None:
        return make_node_keys(tmp_path / worker_id) if mesh else None

    keeper = register(url, "keeper-before-the-fuzz", ["spacy", "pdf-docx"], key("keeper"))
    assert keeper["assigned_services"] and (keeper["mesh"] is not None) == mesh
    target = register(url, "heartbeat-target", ["spacy"], key("target"))  # the fuzzed heartbeats speak as this one

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")  # public: no credentials
    operations = [result.ok() for result in schema.get_all_operations()]
    session = requests.Session()

    def credentials(case: schemathesis.Case) -> dict[str, str]:
        path = case.operation.path
        if path.startswith("/service/"):
            return {"X-API-Key": KEY}
        if path == "/api/worker/register":
            return {"Authorization": f"Bearer {JOIN}"}
        if path in ("/api/worker/heartbeat", "/api/worker/watch/{worker_id}"):
            return {"Authorization": f"Bearer {target['worker_token']}"}
        if path.startswith(("/api/admin/", "/api/services/discover/", "/api/worker/unregister/")):
            return {"Authorization": f"Bearer {ADMIN}"}
        return {}

    failures: dict[str, set[str]] = collections.defaultdict(set)
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    started = time.monotonic()

    def exercise(case: schemathesis.Case) -> None:
        label, headers = case.operation.label, credentials(case)
        if case.operation.path == "/api/worker/heartbeat" and isinstance(case.body, dict) and (
                case.meta is None or case.meta.generation.mode.is_positive):
            case.body["worker_id"] = target["worker_id"]
        response = case.call(base_url=url, session=session, headers=headers, timeout=10)
        statuses[label][response.status_code] += 1
        sent = response.request
        request = f"{sent.method} {sent.url} body={sent.body!r:.1200} -> {response.status_code} {response.text:.600}"
        if response.elapsed > SLOW_ANSWER_S:  # seconds
            failures[label].add(f"answered after {response.elapsed:.1f}s\n    {request}")
        try:
            case.validate_response(response, headers=headers, excluded_checks=[not_a_server_error],
                                   additional_checks=[no_undocumented_server_error],
                                   transport_kwargs={"base_url": url, "session": session, "headers": headers,
                                                     "timeout": 10})
        except schemathesis.errors.FailureGroup as group:
            for failure in group.exceptions:
                if tolerated(failure, case, response):
                    continue
                detail = " ".join(failure.message.split())[:400]
                failures[label].add(f"{type(failure).__name__}: {failure.title}: {detail}\n    {request}")

    for operation in operations:
        fuzz(operation, exercise)()
    elapsed = time.monotonic() - started
    summary = {label: dict(counts) for label, counts in statuses.items()}
    print(f"\nfuzzed {len(operations)} operations, {sum(sum(c.values()) for c in statuses.values())} cases "
          f"in {elapsed:.1f}s: {summary}")

    problems = [f"{label}:\n" + "\n".join(sorted(f)) for label, f in failures.items()]
    problems += [f"the coordinator logged:\n{crash}" for crash in tracebacks(coordinator.log())]
    try:
        problems += after_the_fuzz(url, keeper, target)
    except (httpx.HTTPError, AssertionError) as error:
        problems.append(f"the coordinator stopped answering as it did: {error!r}\n{coordinator.log()[-3000:]}")
    assert not problems, "\n\n".join(problems)


def after_the_fuzz(url: str, keeper: dict[str, Any], target: dict[str, Any]) -> list[str]:
    """What is wrong with the coordinator's state after the fuzz: up, the worker from before still listed with
    its services and its token, the watch stream (which the fuzz cannot open) answering as documented."""
    problems = []
    if (health := httpx.get(f"{url}/health", timeout=5)).status_code != 200:
        problems.append(f"/health answers {health.status_code}")
    listed = admin_workers(url).get("keeper-before-the-fuzz")
    if listed is None or listed["assigned_services"] != keeper["assigned_services"]:
        problems.append(f"the worker registered before the fuzz is not as it was: {listed}")
    beat = httpx.post(f"{url}/api/worker/heartbeat", json={"worker_id": "keeper-before-the-fuzz"}, timeout=5,
                      headers={"Authorization": f"Bearer {keeper['worker_token']}"})
    # (Its assignment may change now: the pool it beats into has the fuzz's workers.)
    if beat.status_code != 200 or HeartbeatResponse.model_validate_json(beat.content).worker_id != keeper[
            "worker_id"]:
        problems.append(f"the worker from before cannot beat with its token: {beat.status_code} {beat.text}")
    with httpx.stream("GET", f"{url}/api/worker/watch/{target['worker_id']}", timeout=5,
                      headers={"Authorization": f"Bearer {target['worker_token']}"}) as stream:
        kind = stream.headers.get("content-type", "")
        if stream.status_code != 200 or not kind.startswith("application/x-ndjson"):
            problems.append(f"watch answers {stream.status_code} {kind}")
        else:
            HeartbeatResponse.model_validate_json(next(stream.iter_lines()))
    return problems


def tracebacks(log: str) -> list[str]:
    """Each traceback in a coordinator's log, with the line that introduced it."""
    lines = log.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j][:2] == "20"), len(lines))
            found.append("\n".join(lines[max(0, i - 1):end]))
    return found


def fuzz(operation: Any, exercise: Callable[[schemathesis.Case], None]) -> Callable[[], None]:
    """A Hypothesis test over `operation`'s valid and invalid cases, bounded, without shrinking (each
    failure is recorded by `exercise`, not raised)."""
    strategy = st.one_of(operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                         operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
                         *operation.get_strategies_from_examples())

    @hypothesis.seed(SEED)
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck), verbosity=hypothesis.Verbosity.quiet)
    @hypothesis.given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        exercise(case)

    return run


def test_every_worker_route_refuses_every_other_method_with_405(tmp_path: Path) -> None:
    with TestClient(create_app(CoordinatorSettings(data_dir=tmp_path))) as client:
        for method, path, allowed in (("PUT", "/api/worker/heartbeat", "POST"), ("POST", "/api/worker/watch/w1", "GET"),
                                      ("GET", "/api/worker/unregister/w1", "DELETE")):
            response = client.request(method, path)
            assert (response.status_code, response.headers["allow"]) == (405, allowed), (method, path)
            assert allowed in response.json()["error"]
