"""The minio service's second engine: SeaweedFS's `weed mini`, S3 on the assigned port.

`weed mini` is a whole cluster in one process: master, volume server, filer, admin server (its
UI off) with a maintenance worker, and the S3 gateway, all on the one address it binds (and
loopback beside it). Only the gateway checks S3 signatures; the others would serve anyone. So every
start writes, for the server's account only to read:
- the S3 identity: access key `rma`, the coordinator's secret; anonymous requests are refused; and
  the snapshots' identity (chromadb's and neo4j's), whose key reaches their bucket only;
- `security.toml` (weed's -config_dir): gRPC demands a certificate, the volume server's and the
  filer's HTTP need tokens signed with the store's keys, and the master's HTTP (which deletes
  buckets) answers this machine only. The keys and the certificate are derived from the store's
  secret, so every copy of the store trusts the others, and nobody without the secret.
The filer listens one port above S3 and its gRPC two above (a copy's peers find it from the S3
port discovery names); the other internal ports are chosen once, kept in the config folder, and
moved only when taken.

On a pool that replicates the store (rma.replication), a copy started beside a primary runs
`weed filer.sync` between that primary and itself, both ways: every bucket and object either takes
is copied to the other within about a second. It is asynchronous: what the primary acknowledged in
the last moment before its machine died reaches the survivor when that machine returns. A returning
copy starts its own filer.sync with the copy that is primary then.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import secrets
import socket
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from rma import catalog
from rma.files import write_private
from rma.replication import PRIMARY_VARIABLE, REPLICA_NAME_VARIABLE, SNAPSHOT_BUCKET, SNAPSHOT_USER, snapshot_key
from rma.services.accounts import STORE_ACCOUNT, as_server, check_reachable, service_account
from rma.services.base import HEALTH_TIMEOUT_S, Context, Launch, find_binary, probe_host

if TYPE_CHECKING:
    import minio

ENGINE = "seaweedfs"
FOLDER = "seaweedfs"  # weed's -dir, its account's; the minio engine's buckets are in "data"
# The worker's: the account reads the files in it but cannot replace them (a root worker writes there).
CONFIG = "seaweedfs-config"
IDENTITIES = "identities.json"
SECURITY = "security.toml"  # the name weed looks for in -config_dir
CERT, KEY = "grpc.crt", "grpc.key"
PORTS = "ports.json"
LOGS = "logs"
LOG_MB, LOG_FILES = 16, 3  # per severity: weed's defaults (1800 MB, 5) would fill a volunteer's disk
# The internal listeners besides S3 on the assigned port. The admin server's gRPC port is not
# free to choose: its maintenance worker dials the admin HTTP port plus weed's gRPC offset.
INTERNAL = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc", "admin")
GRPC_OFFSET = 10000
# The filer's ports, above the S3 port: what another copy's filer.sync dials.
FILER_OFFSETS = {"filer": 1, "filer.grpc": 2}
PORT_TRIES = 50
HEALTH_BUCKET = "rma-health"  # created by weed at start (-bucket); holds only the probe below
HEALTH_OBJECT = "probe"
REGION = "us-east-1"  # given, so the S3 client never asks the server for it
RESYNC_MAX_S = 60  # the longest wait between a filer.sync that ended and the next
# The gRPC certificate is derived from the store's secret, byte for byte the same on every copy: its dates too.
CERT_FROM = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
CERT_UNTIL = datetime.datetime(2125, 1, 1, tzinfo=datetime.UTC)


def prepare(ctx: Context, user: str, secret: str) -> None:
    """Write the identity, the TLS material and security.toml, and settle the internal ports."""
    account = service_account(STORE_ACCOUNT)
    data, config = ctx.data_dir.resolve() / FOLDER, ctx.data_dir.resolve() / CONFIG
    data.mkdir(exist_ok=True)
    (data / LOGS).mkdir(exist_ok=True)
    config.mkdir(exist_ok=True)
    data.chmod(0o700)
    config.chmod(0o711)  # its files are opened by name only
    owner = (account.pw_uid, account.pw_gid) if account else None
    if account:
        check_reachable(data, account)
        for folder in (data, data / LOGS):  # the account's own folder: a link there is changed, not followed
            os.chown(folder, account.pw_uid, account.pw_gid, follow_symlinks=False)
    # weed replays the flags it saved here when a flag is not given; the driver gives every one.
    (data / "mini.options").unlink(missing_ok=True)
    identity = {"name": user, "credentials": [{"accessKey": user, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    # the snapshots of chromadb and neo4j (rma.replication): their own bucket, and no other.
    snapshots = {"name": SNAPSHOT_USER,
                 "credentials": [{"accessKey": SNAPSHOT_USER, "secretKey": snapshot_key(secret)}],
                 "actions": [f"{action}:{SNAPSHOT_BUCKET}" for action in ("Admin", "Read", "Write", "List")]}
    write_private(config / IDENTITIES, json.dumps({"identities": [identity, snapshots]}), owner)
    cert, key = _grpc_identity(secret)
    write_private(config / CERT, cert, owner)
    write_private(config / KEY, key, owner)
    write_private(config / SECURITY, _security(config, secret, replicated=replicated(ctx)), owner)
    _settle_ports(ctx)


def launch(ctx: Context) -> Launch:
    data, config = ctx.data_dir.resolve() / FOLDER, ctx.data_dir.resolve() / CONFIG
    port = ports(ctx)
    ident = probe_host(ctx.host)  # the address the components call each other on
    argv = (
        # weed's own log files (its info lines) in the data folder, bounded; the rest goes to stderr.
        "weed", f"-config_dir={config}", f"-logdir={data / LOGS}", f"-log_max_size_mb={LOG_MB}",
        f"-log_max_files={LOG_FILES}",
        "mini", f"-dir={data}", f"-ip={ident}", f"-ip.bind={_bind_address(ctx.host)}",
        f"-s3.port={ctx.port}", *(f"-{name}.port{suffix}={port[name + suffix]}" for name, suffix in (
            ("master", ""), ("master", ".grpc"), ("volume", ""), ("volume", ".grpc"),
            ("filer", ""), ("filer", ".grpc"), ("s3", ".grpc"), ("admin", ""))),
        f"-admin.port.grpc={port['admin'] + GRPC_OFFSET}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", "-s3.iam=false",
        "-master.telemetry=false",  # a store does not report to anyone outside the pool
        f"-s3.config={config / IDENTITIES}", f"-bucket={HEALTH_BUCKET}",
        "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false",  # as S3 and MinIO answer
        # The master's HTTP and the volume servers' writes: this machine only ("@": weed's own unix sockets).
        f"-whiteList={','.join(dict.fromkeys((ident, '127.0.0.1', '@')))}",
        # In the working folder (-dir), named relative to it: a socket's path may not pass 107 bytes.
        "-filer.localSocket=filer.sock", "-s3.localSocket=s3.sock",
    )
    # Empty: weed would add the worker's own AWS keys, or create buckets S3_BUCKET names.
    env = {"GOMEMLIMIT": memory_limit(ctx.env), "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
           "S3_BUCKET": "", "S3_TABLE_BUCKET": ""}
    primary = ctx.env.get(PRIMARY_VARIABLE, "") if replicated(ctx) else ""
    companions = (Launch(as_server(_follow(ctx, primary), service_account(STORE_ACCOUNT), deathsig="SIGTERM"),
                         env=env, cwd=data),) if primary else ()
    return Launch(as_server(argv, service_account(STORE_ACCOUNT), deathsig="SIGTERM"), env=env, cwd=data,
                  companions=companions)


def replicated(ctx: Context) -> bool:
    """A copy of a replicated store: the coordinator names every copy (its worker id)."""
    return bool(ctx.env.get(REPLICA_NAME_VARIABLE))


def filer_address(host: str, s3_port: int) -> str:
    """The filer beside the S3 gateway on host:s3_port, as weed names a server (host:port.grpcPort)."""
    return f"{host}:{s3_port + FILER_OFFSETS['filer']}.{s3_port + FILER_OFFSETS['filer.grpc']}"


def _follow(ctx: Context, primary: str) -> tuple[str, ...]:
    """`weed filer.sync` between the primary at `primary` (its S3 host:port) and this copy, both ways.

    filer.sync exits when a filer does not answer at its start (this copy's own is still starting, or the
    primary's machine is gone), so a shell loop starts it again: 2 s later, doubling to a minute while each
    run is short. It resumes from the checkpoints it keeps in the two filers. Its log goes to its own
    bounded files only: a peer gone for days makes it retry, and say so, every two seconds. The health
    probe's bucket is each copy's own.
    """
    host, port = primary.rsplit(":", 1)
    config = ctx.data_dir.resolve() / CONFIG
    sync = (find_binary("weed") or "weed", f"-config_dir={config}", f"-logdir={ctx.data_dir.resolve() / FOLDER / LOGS}",
            f"-log_max_size_mb={LOG_MB}", f"-log_max_files={LOG_FILES}", "-alsologtostderr=false",
            "-stderrthreshold=FATAL", "filer.sync",
            f"-a={filer_address(host.strip('[]'), int(port))}", f"-b={filer_address(probe_host(ctx.host), ctx.port)}",
            f"-a.excludePaths=/buckets/{HEALTH_BUCKET}", f"-b.excludePaths=/buckets/{HEALTH_BUCKET}")
    loop = (f"pause=1; while :; do began=$(date +%s); \"$@\"; "
            f"if [ $(($(date +%s) - began)) -ge {RESYNC_MAX_S} ]; then pause=1; fi; "
            f"pause=$((pause * 2 > {RESYNC_MAX_S} ? {RESYNC_MAX_S} : pause * 2)); sleep $pause; done")
    return ("sh", "-c", loop, "filer.sync", *sync)


def s3_port_usable(host: str, port: int) -> bool:
    """weed refuses an S3 port, or a filer port above it, that anything listens on, on this address or any."""
    return all(_usable(host, port + offset, "s3", set()) for offset in (0, *FILER_OFFSETS.values()))


def _bind_address(host: str) -> str:
    """weed checks its ports on `-ip.bind` + ":port": an IPv6 address only works in brackets."""
    if not host:
        return "0.0.0.0"
    return f"[{host}]" if ":" in host else host


def memory_limit(env: Mapping[str, str]) -> str:
    """Go's soft memory limit: the worker's GOMEMLIMIT, else the RAM the catalogue gives the engine.

    Unlimited, weed keeps what a burst of uploads took (~300 MB after 5 MB objects, against ~125 MB
    idle); at the catalogue's 256 MiB it stays near 155 MB, at about half the unlimited throughput.
    """
    return env.get("GOMEMLIMIT") or f"{catalog.get('minio').engine(ENGINE).ram_mb}MiB"


async def healthy(ctx: Context, user: str) -> bool:
    """A signed put, get and delete of a small object, through the volume server that holds the data.

    weed's /healthz answers from the S3 gateway alone, before its volumes are necessarily readable.
    """
    if not ctx.secret:
        return False
    host = probe_host(ctx.host)
    client = _client(f"[{host}]:{ctx.port}" if ":" in host else f"{host}:{ctx.port}", user, ctx.secret)
    expires = datetime.timedelta(minutes=1)
    put, get, delete = (client.get_presigned_url(method, HEALTH_BUCKET, HEALTH_OBJECT, expires=expires)
                        for method in ("PUT", "GET", "DELETE"))
    body = secrets.token_bytes(16)
    try:
        # Plain HTTP: verify=False only skips loading the CA bundle, ~40 ms of CPU per check.
        async with asyncio.timeout(HEALTH_TIMEOUT_S), httpx.AsyncClient(verify=False, trust_env=False) as http:
            stored = await http.put(put, content=body)
            read = await http.get(get)
            removed = await http.delete(delete)
    except (httpx.HTTPError, TimeoutError):
        return False
    return stored.is_success and read.is_success and read.content == body and removed.is_success


@lru_cache(maxsize=4)
def _client(endpoint: str, user: str, secret: str) -> minio.Minio:
    """The S3 client that signs the probe's URLs, locally: no request of its own."""
    import minio  # the storage extra's (the catalogue lists it): imported only where this engine runs

    return minio.Minio(endpoint, user, secret, secure=False, region=REGION)


def ports(ctx: Context) -> dict[str, int]:
    """The internal ports prepare chose, by name (INTERNAL)."""
    saved: dict[str, int] = json.loads((ctx.data_dir.resolve() / CONFIG / PORTS).read_text())
    return saved


def _settle_ports(ctx: Context) -> None:
    """Keep the saved internal ports that are still free, choose new ones for the rest."""
    try:
        saved = ports(ctx)
    except (OSError, ValueError):
        saved = {}
    chosen = {name: ctx.port + offset for name, offset in FILER_OFFSETS.items()}
    avoid = {service.port for service in catalog.SERVICES} | {ctx.port} | set(chosen.values())
    for name in INTERNAL:
        if name in chosen:
            continue
        port = saved.get(name) if isinstance(saved, dict) else None
        if not (isinstance(port, int) and _usable(ctx.host, port, name, avoid | set(chosen.values()))):
            port = _pick(ctx.host, name, avoid | set(chosen.values()))
        chosen[name] = port
    if chosen != saved:
        (ctx.data_dir.resolve() / CONFIG / PORTS).write_text(json.dumps(chosen))


def _pick(host: str, name: str, avoid: set[int]) -> int:
    for _ in range(PORT_TRIES):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if _usable(host, port, name, avoid):
            return port
    raise OSError(f"no free port for seaweedfs {name} on {host} after {PORT_TRIES} tries")


def _usable(host: str, port: int, name: str, avoid: set[int]) -> bool:
    """Free the way weed checks it (on the address and on every address), clear of the others."""
    wanted = (port, port + GRPC_OFFSET) if name == "admin" else (port,)
    return all(0 < each < 65536 and each not in avoid and _bindable(host, each)
               and _bindable("::" if ":" in host else "0.0.0.0", each) for each in wanted)


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go listens: TIME_WAIT is no owner
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _security(folder: Path, secret: str, *, replicated: bool) -> str:
    """weed's security.toml: signing keys derived from the store's secret, and its one certificate, both CA and peer.

    A replicated copy has no key for volume reads: filer.sync fetches the primary's chunks unsigned (it has
    no way to sign them), so there a chunk is read by whoever knows its id, whose random cookie only the
    filer's signed metadata gives away.
    """
    sections = ["jwt.signing", "jwt.filer_signing", "jwt.filer_signing.read"]
    if not replicated:
        sections.append("jwt.signing.read")
    tables: dict[str, dict[str, str]] = {
        section: {"key": base64.urlsafe_b64encode(_derived(secret, section)).decode()} for section in sections
    }
    tables["grpc"] = {"ca": str(folder / CERT)}
    for component in ("master", "volume", "filer", "s3", "admin", "worker", "client"):
        tables[f"grpc.{component}"] = {"cert": str(folder / CERT), "key": str(folder / KEY)}
    return "".join(f"[{section}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
                   for section, values in tables.items())


def _derived(secret: str, purpose: str) -> bytes:
    """32 bytes for `purpose`, from the store's secret (HKDF-SHA256): the same on every copy, unguessable without it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), 32, salt=None, info=f"rma-seaweedfs {purpose}".encode()).derive(secret.encode())


def _grpc_identity(secret: str) -> tuple[str, str]:
    """An Ed25519 certificate for server and client use, as PEM (certificate, key), derived from the secret.

    Ed25519 signs deterministically, so every copy makes the same certificate: each trusts the others.
    """
    from cryptography import x509  # the storage extra's, as minio is
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ed25519.Ed25519PrivateKey.from_private_bytes(_derived(secret, "grpc key"))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rma-seaweedfs")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(int.from_bytes(_derived(secret, "grpc serial")[:16], "big") | 1)
        .not_valid_before(CERT_FROM).not_valid_after(CERT_UNTIL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(key, None)
    )
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), pem_key.decode()
