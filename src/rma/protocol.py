"""The HTTP contract between coordinator, workers and operators, as pydantic models.

Unknown fields are tolerated (the seed's agent and newer agents send extra data); what we
read is checked: ids and URLs by shape, numbers finite and non-negative.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from rma.mesh.pki import PUBLIC_KEY

WORKER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SERVICE_STATES = ("starting", "healthy", "running", "unhealthy", "crashed", "failed", "stopped")


def _http_url(value: str) -> str:
    """An http(s) URL whose host a router can use: the whole value (no trailing newline), and brackets that
    pair up (urlsplit refuses `http://[x`, which would otherwise fail later, where the host is read)."""
    if not re.fullmatch(r"https?://[^\s/?#]+(?::\d+)?(/[^\s]*)?", value):
        raise ValueError("must be an http:// or https:// URL")
    try:
        urlsplit(value).hostname  # noqa: B018 - parsed for its ValueError
    except ValueError as error:
        raise ValueError(f"must be an http:// or https:// URL ({error})") from None
    return value


# Checked inside pydantic-core (no Python call per field): the heartbeat is the hot path.
WorkerId = Annotated[str, Field(pattern=WORKER_ID_PATTERN.pattern, max_length=64)]
HttpUrl = Annotated[str, Field(max_length=2048), AfterValidator(_http_url)]
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=2**53)]
ServiceName = Annotated[str, Field(max_length=64)]
SeedState = Annotated[str, Field(max_length=32)]
Host = Annotated[str, Field(max_length=255, pattern=r"^[A-Za-z0-9.:\-\[\]]+$")]
# One key as `nebula-cert keygen` writes it (anchored: a pattern is searched for, not matched whole).
NEBULA_PUBLIC_KEY = f"^{PUBLIC_KEY.pattern}$"


class Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")


class Gpu(Tolerant):
    name: str = Field("", max_length=200)
    memory_mb: Count = 0
    free_mb: Count | None = None


class Capabilities(Tolerant):
    worker_type: Literal["auto", "gpu", "cpu", "storage", "edge"] | None = None
    has_gpu: bool = False
    gpus: list[Gpu] = Field(default_factory=list, max_length=64)
    gpu_memory_mb: Count | None = None
    cpu_cores: Count | None = None
    ram_mb: Count | None = None
    disk_free_mb: Count | None = None
    has_storage: bool = False
    has_edge: bool = False
    has_public_ip: bool = False
    # Engines the worker can start (see rma.catalog); None: the seed's agent, trusted by kind.
    engines: list[Annotated[str, Field(max_length=64)]] | None = Field(None, max_length=64)
    # Stateful services whose data the worker holds in its data dir.
    data_services: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=32)


class RegisterRequest(Tolerant):
    worker_id: WorkerId | None = None
    tunnel_url: HttpUrl | None = None
    vpn_ip: Host | None = None
    advertise_host: Host | None = None
    capabilities: Capabilities = Field(default_factory=lambda: Capabilities())
    # The worker's Nebula public key (PEM), for the mesh's CA to sign; its private key never leaves it.
    mesh_public_key: str | None = Field(None, max_length=200, pattern=NEBULA_PUBLIC_KEY)


class ServiceConfig(BaseModel):
    name: str
    port: int
    priority: int
    tier: int
    kind: str
    engine: str | None
    # A store's credential, sent only to the worker that runs the store.
    secret: str | None = Field(None, repr=False)
    # Where the pool's stores are (CHROMADB_HOST, REDIS_HOST, NEO4J_URI, ...), for the service's environment.
    env: dict[str, str] = Field(default_factory=dict)


class Lighthouse(BaseModel):
    """An edge worker every mesh node is told about: a lighthouse and a relay."""

    overlay_ip: str
    underlay: str  # host:port of its UDP listener, on the internet


class ClientRequest(BaseModel):
    """A client member the operator admits to the mesh: an application's server, by its public key."""

    model_config = ConfigDict(extra="forbid")
    name: WorkerId
    public_key: str = Field(max_length=200, pattern=NEBULA_PUBLIC_KEY)


class MeshMembership(BaseModel):
    """A worker's place on the mesh: its certificate and whom it trusts, renewed and revoked over heartbeats."""

    address: str  # overlay address with its prefix: 100.64.0.7/16
    certificate: str
    ca: str
    groups: list[str]
    expires: float
    lighthouses: list[Lighthouse]
    blocklist: list[str]  # fingerprints of revoked certificates


class Assignment(BaseModel):
    """What a worker should run: sent with registration and with every heartbeat answer."""

    worker_id: str
    assigned_services: list[str]
    service_configs: list[ServiceConfig]
    heartbeat_interval: float
    mesh: MeshMembership | None = None  # on a pool that runs on the mesh
    # The coordinator replicas edge workers run (on a shared store): another place to beat to, should this go.
    coordinators: list[str] = Field(default_factory=list)


class RegisterResponse(Assignment):
    status: Literal["registered"] = "registered"
    worker_type: str
    tier: int
    worker_token: str
    message: str


class ServiceStatus(Tolerant):
    state: Literal[SERVICE_STATES] = "running"  # type: ignore[valid-type]
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    restarts: Count = 0
    message: str = Field("", max_length=500)
    # Unix time of the newest snapshot the service copied off the machine (a store without replication).
    snapshot_at: Annotated[float, Field(ge=0, le=1e11)] | None = None


class MeshState(Tolerant):
    """How a worker's node is reached now: its tunnels by path, and the round trip to its lighthouse."""

    direct: Count = 0  # tunnels to peers whose packets go straight (a hole punched, or a public address)
    relayed: Count = 0  # tunnels through a relay (a peer, or this node, behind a NAT no punch passes)
    lighthouse_rtt_ms: Amount | None = None


class HeartbeatRequest(Tolerant):
    worker_id: WorkerId
    status: str = Field("healthy", max_length=32)
    current_load: Amount = 0.0
    cpu_percent: Amount = 0.0
    ram_percent: Amount = 0.0
    gpu_utilization: Amount = 0.0
    active_requests: Count = 0
    # The seed's agent sends {name: "running"}; ours sends {name: ServiceStatus}.
    services_status: dict[ServiceName, ServiceStatus | SeedState] = Field(default_factory=dict, max_length=32)
    mesh: MeshState | None = None  # on a pool that runs on the mesh


class HeartbeatResponse(Assignment):
    status: Literal["ok"] = "ok"


class ErrorBody(BaseModel):
    error: str
    detail: Any = None


class ApiError(Exception):
    """An error with its HTTP status: raised in the core, translated at the HTTP edge only."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class Unavailable(ApiError):
    status = 503
