"""When the front door runs, with which certificate and limits, and how clients verify a private CA."""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CA_FILE_VARIABLE = "RMA_CA_FILE"
# What the coordinator's and the routers' processes are handed: their certificate, and the front door's limits.
TLS_VARIABLES = ("RMA_TLS_CERT", "RMA_TLS_KEY", "RMA_HEADER_TIMEOUT_S", "RMA_IDLE_TIMEOUT_S", "RMA_MAX_HEADER_KB")

# The front door's limits an operator may change: variable → (field, type, unit in the field's terms).
LIMIT_VARIABLES: dict[str, tuple[str, type, int]] = {
    "RMA_HEADER_TIMEOUT_S": ("header_timeout_s", float, 1),
    "RMA_IDLE_TIMEOUT_S": ("idle_timeout_s", float, 1),
    "RMA_MAX_HEADER_KB": ("max_header_bytes", int, 1024),
}


@dataclass(frozen=True)
class FrontSettings:
    """The public listener's TLS certificate (with its chain) and key, and the limits Caddy enforces.

    The front door runs whenever a certificate is given, or the listener binds an address other
    than loopback: no hand-written HTTP code faces the network. On loopback without a certificate
    nothing leaves the machine, and the engine listens itself.
    """

    cert: Path | None = None
    key: Path | None = None
    header_timeout_s: float = 10.0  # a client has this long to send its request's head (slow-loris)
    idle_timeout_s: float = 60.0  # a keep-alive connection with no request is closed after this long
    max_header_bytes: int = 64 * 1024  # request line and headers together; past it: 431

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS needs both a certificate (RMA_TLS_CERT) and its key (RMA_TLS_KEY)")
        for path in (self.cert, self.key):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file not found: {path}")
        if min(self.header_timeout_s, self.idle_timeout_s) <= 0 or self.max_header_bytes < 1024:
            raise ValueError("the front door's timeouts must be above 0 s and its header limit at least 1 KB")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, cert: str | None = None,
                 key: str | None = None) -> FrontSettings:
        """Flags first, then RMA_TLS_CERT / RMA_TLS_KEY; the limits from RMA_HEADER_TIMEOUT_S,
        RMA_IDLE_TIMEOUT_S and RMA_MAX_HEADER_KB."""
        cert = cert or env.get(TLS_VARIABLES[0]) or None
        key = key or env.get(TLS_VARIABLES[1]) or None
        limits = {field: kind(env[variable]) * scale for variable, (field, kind, scale) in LIMIT_VARIABLES.items()
                  if env.get(variable)}
        return cls(Path(cert).resolve() if cert else None, Path(key).resolve() if key else None, **limits)

    @property
    def tls(self) -> bool:
        return self.cert is not None

    def needed(self, host: str) -> bool:
        """Does a listener on `host` go behind the front door?"""
        return self.tls or not _loopback(host)

    def scheme(self) -> str:
        return "https" if self.tls else "http"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_context(env: Mapping[str, str] = os.environ) -> ssl.SSLContext | bool:
    """How an rma client verifies https URLs: the private CA in RMA_CA_FILE, else the system's CAs.

    Always verified, hostname included; httpx takes the answer as `verify=`.
    """
    ca_file = env.get(CA_FILE_VARIABLE)
    if not ca_file:
        return True
    if not Path(ca_file).is_file():
        raise ValueError(f"{CA_FILE_VARIABLE} names no file: {ca_file}")
    return ssl.create_default_context(cafile=ca_file)


@dataclass(frozen=True)
class TlsCheck:
    """How a worker checks the TLS listener of a service it runs, on a loopback address.

    The chain is verified (RMA_CA_FILE, else the system's CAs) but not the name, since a loopback
    address is not the certificate's public name; the served certificate must instead be exactly
    the one the service was given.
    """

    context: ssl.SSLContext
    certificate: bytes  # DER of the certificate the service serves

    @classmethod
    def of(cls, cert: Path, env: Mapping[str, str] = os.environ) -> TlsCheck:
        verify = client_context(env)
        context = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
        context.check_hostname = False
        return cls(context, ssl.PEM_cert_to_DER_cert(first_certificate(cert.read_text())))

    def served(self, connection: ssl.SSLObject | None) -> bool:
        return connection is not None and connection.getpeercert(binary_form=True) == self.certificate


def first_certificate(pem: str) -> str:
    """The first PEM certificate of a chain file: the server's own."""
    end = "-----END CERTIFICATE-----"
    start = pem.find("-----BEGIN CERTIFICATE-----")
    if start < 0 or end not in pem[start:]:
        raise ValueError("no PEM certificate in the TLS certificate file")
    return pem[start:pem.index(end, start) + len(end)] + "\n"
