"""The mesh's certificates: the coordinator is a Nebula CA, and a worker's private key never leaves it.

A worker makes its key pair (`nebula-cert keygen`) and sends only the public key; the CA signs it
(`nebula-cert sign -in-pub`) with the worker's overlay address and groups, for a bounded time. A
certificate's fingerprint is what a revocation lists (Nebula's `pki.blocklist`). Every private key
is a 0600 file; nothing secret is ever on a command line, only the paths of such files.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rma.files import write_private

CA_DURATION_H = 5 * 365 * 24  # the CA's own lifetime: a pool's; node certificates are far shorter
# One X25519 key: 32 bytes, 44 characters of base64 (any 32 bytes are a key, so this is the whole check).
PUBLIC_KEY = re.compile(r"-----BEGIN NEBULA X25519 PUBLIC KEY-----\n[A-Za-z0-9+/]{43}=\n"
                        r"-----END NEBULA X25519 PUBLIC KEY-----\n?")
GROUP = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
COMMAND_TIMEOUT_S = 10.0


class MeshUnavailable(RuntimeError):
    """Nebula's tools are not on this machine (or failed): the mesh cannot be joined here."""


class BadPublicKey(ValueError):
    """What a worker sent as its public key is not one."""


@dataclass(frozen=True)
class Certificate:
    """A signed node certificate as Nebula reads it, with what the pool checks of it."""

    pem: str
    name: str
    address: ipaddress.IPv4Interface
    groups: tuple[str, ...]
    fingerprint: str
    expires: float  # seconds since the epoch


def nebula_cert() -> str:
    """The nebula-cert program's path; MeshUnavailable where it is not installed."""
    found = shutil.which("nebula-cert")
    if found is None:
        raise MeshUnavailable("nebula-cert is not installed (Debian: apt-get install nebula)")
    return found


def _run(*args: str) -> str:
    try:
        done = subprocess.run([nebula_cert(), *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MeshUnavailable(f"nebula-cert {args[0]}: {exc}") from exc
    if done.returncode != 0:
        raise MeshUnavailable(f"nebula-cert {args[0]} failed: {(done.stderr or done.stdout).strip()[:300]}")
    return done.stdout


def read_certificate(pem: str) -> Certificate:
    """What `pem` certifies (nebula-cert print); MeshUnavailable where it is not a Nebula certificate."""
    with tempfile.TemporaryDirectory(prefix="rma-mesh-") as folder:
        path = Path(folder, "host.crt")
        path.write_text(pem)
        details = json.loads(_run("print", "-json", "-path", str(path)))
    body = details["details"]
    expires = datetime.fromisoformat(body["notAfter"]).timestamp()
    return Certificate(pem, body["name"], ipaddress.IPv4Interface(body["ips"][0]), tuple(body["groups"]),
                       details["fingerprint"], expires)


def make_node_keys(folder: Path) -> str:
    """This node's key pair in `folder` (host.key, 0600, and host.pub), made once; the public key's text."""
    key, public = folder / "host.key", folder / "host.pub"
    if not (key.exists() and public.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".keygen-", dir=folder) as scratch:
            _run("keygen", "-out-key", f"{scratch}/host.key", "-out-pub", f"{scratch}/host.pub")
            write_private(key, Path(scratch, "host.key").read_bytes())
            public.write_bytes(Path(scratch, "host.pub").read_bytes())
    return public.read_text()


def check_public_key(text: str) -> str:
    """`text` if it is one Nebula X25519 public key in PEM; BadPublicKey (saying what is wrong) if not."""
    if len(text) > 200 or not PUBLIC_KEY.fullmatch(text):
        raise BadPublicKey("mesh_public_key must be one 'NEBULA X25519 PUBLIC KEY' PEM block, as "
                           "`nebula-cert keygen` writes it")
    return text


class MeshCa:
    """The pool's Nebula CA, kept in `folder` (ca.key 0600, ca.crt); made on first use."""

    def __init__(self, folder: Path, name: str = "rma pool") -> None:
        self.folder = folder
        self.key, self.crt = folder / "ca.key", folder / "ca.crt"
        if not (self.key.exists() and self.crt.exists()):
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".ca-", dir=folder) as scratch:
                _run("ca", "-name", name, "-duration", f"{CA_DURATION_H}h", "-out-key", f"{scratch}/ca.key",
                     "-out-crt", f"{scratch}/ca.crt")
                write_private(self.key, Path(scratch, "ca.key").read_bytes())
                self.crt.write_bytes(Path(scratch, "ca.crt").read_bytes())
        self.certificate = self.crt.read_text()  # public: every node trusts it, and every membership carries it

    def sign(self, name: str, public_key: str, address: ipaddress.IPv4Interface, groups: Sequence[str],
             duration_s: int) -> Certificate:
        """A certificate for `public_key` as `name` at overlay `address` in `groups`, valid `duration_s`."""
        if not NAME.fullmatch(name):
            raise ValueError(f"a mesh name is letters, digits, '.', '_' or '-', at most 63: {name!r}")
        bad = [group for group in groups if not GROUP.fullmatch(group)]
        if bad:
            raise ValueError(f"mesh groups are lower-case letters, digits and '-': {bad}")
        with tempfile.TemporaryDirectory(prefix=".sign-", dir=self.folder) as scratch:
            Path(scratch, "host.pub").write_text(check_public_key(public_key))
            _run("sign", "-ca-key", str(self.key), "-ca-crt", str(self.crt), "-in-pub", f"{scratch}/host.pub",
                 "-name", name, "-ip", str(address), "-groups", ",".join(groups), "-duration", f"{duration_s}s",
                 "-out-crt", f"{scratch}/host.crt")
            return read_certificate(Path(scratch, "host.crt").read_text())
