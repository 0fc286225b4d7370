"""A worker's health check of a service's own TLS listener: the chain verified, the exact certificate pinned."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

from rma.front.local_ca import LocalCa, make_local_ca
from rma.front.settings import TlsCheck
from rma.services.base import http_ok


async def serve_health(ca: LocalCa) -> asyncio.Server:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ca.cert, ca.key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)


def test_the_check_passes_only_for_the_certificate_the_service_was_given(tmp_path: Path) -> None:
    served = make_local_ca(tmp_path / "served", ["localhost"])
    other_server_same_ca_name = make_local_ca(tmp_path / "other", ["localhost"])

    async def run() -> tuple[bool, bool, bool]:
        server = await serve_health(served)
        port = server.sockets[0].getsockname()[1]
        async with server:
            given = TlsCheck.of(served.cert, {"RMA_CA_FILE": str(served.ca_file)})
            # Another CA's certificate: the chain does not verify against the CA this worker trusts.
            untrusted = TlsCheck.of(served.cert, {"RMA_CA_FILE": str(other_server_same_ca_name.ca_file)})
            # A trusted chain, but not the certificate this service was given.
            pinned_elsewhere = TlsCheck.of(other_server_same_ca_name.cert, {"RMA_CA_FILE": str(served.ca_file)})
            return (await http_ok("127.0.0.1", port, "/health", given),
                    await http_ok("127.0.0.1", port, "/health", untrusted),
                    await http_ok("127.0.0.1", port, "/health", pinned_elsewhere))

    assert asyncio.run(run()) == (True, False, False)


def test_the_check_is_built_once_per_certificate_and_again_when_the_file_is_replaced(tmp_path: Path) -> None:
    """A check runs every few seconds; loading a verifying context costs ~40 ms of CPU, so it is kept, but a
    renewed certificate file is pinned anew."""
    first = make_local_ca(tmp_path / "a", ["localhost"])
    env = {"RMA_TLS_CERT": str(first.cert), "RMA_CA_FILE": str(first.ca_file)}
    check = TlsCheck.from_env(env)
    assert check is not None and TlsCheck.from_env(env) is check
    renewed = make_local_ca(tmp_path / "b", ["localhost"])
    first.cert.write_bytes(renewed.cert.read_bytes())
    os.utime(first.cert, ns=(1, 1))
    again = TlsCheck.from_env(env)
    assert again is not check and again is not None and again.certificate != check.certificate
    assert TlsCheck.from_env({}) is None
