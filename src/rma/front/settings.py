"""When the front door runs, with which certificate and limits, and how clients verify a private CA."""

from __future__ import annotations

import functools
import ipaddress
import os
import shutil
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CA_FILE_VARIABLE = "RMA_CA_FILE"
# What the coordinator's and the routers' processes are handed for their front door: the certificate (or the
# public name to get one for by ACME, and from which CA), its limits, its server, and Go's runtime settings for Caddy.
GO_RUNTIME_VARIABLES = ("GOMAXPROCS", "GOGC", "GOMEMLIMIT")  # Caddy's runtime, e.g. a heap cap on a small machine
FRONT_DOOR_VARIABLES = ("RMA_FRONT_ENGINE", "RMA_TLS_CERT", "RMA_TLS_KEY", "RMA_TLS_DOMAIN", "RMA_ACME_CA",
                        "RMA_ACME_CA_ROOT", "RMA_ACME_EMAIL", "RMA_ACME_STORAGE", "RMA_HEADER_TIMEOUT_S",
                        "RMA_IDLE_TIMEOUT_S", "RMA_MAX_HEADER_KB", "RMA_MAX_CLIENT_CONNECTIONS",
                        *GO_RUNTIME_VARIABLES)

# The front door's limits an operator may change: variable → (field, type, unit in the field's terms).
LIMIT_VARIABLES: dict[str, tuple[str, type, int]] = {
    "RMA_HEADER_TIMEOUT_S": ("header_timeout_s", float, 1),
    "RMA_IDLE_TIMEOUT_S": ("idle_timeout_s", float, 1),
    "RMA_MAX_HEADER_KB": ("max_header_bytes", int, 1024),
    "RMA_MAX_CLIENT_CONNECTIONS": ("max_client_connections", int, 1),
}
ENGINES = ("haproxy", "caddy")  # the servers the front door can run (rma.front.haproxy, rma.front.caddy)


@dataclass(frozen=True)
class FrontSettings:
    """The public listener's TLS certificate (with its chain) and key, or the public DNS name Caddy gets one
    for by ACME, the limits the front door enforces, and which server it runs.

    The front door runs whenever TLS is configured, or the listener binds an address other than
    loopback: no hand-written HTTP code faces the network. On loopback without TLS nothing leaves
    the machine, and the engine listens itself.
    """

    cert: Path | None = None
    key: Path | None = None
    domain: str | None = None  # ACME: Caddy obtains and renews this name's certificate (TLS-ALPN on port 443)
    acme: Acme | None = None
    header_timeout_s: float = 10.0  # a client has this long to send its request's head (slow-loris)
    idle_timeout_s: float = 60.0  # a keep-alive connection with no request is closed after this long
    max_header_bytes: int = 64 * 1024  # request line and headers together; past it: 400 (HAProxy) or 431 (Caddy)
    # One client address may hold this many connections at once (HAProxy only; Caddy has no such limit): a
    # slow-loris from one address cannot take the slots every other client needs.
    max_client_connections: int = 1000
    front_engine: str | None = None  # RMA_FRONT_ENGINE: "haproxy" or "caddy"; unset, see `engine`

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS needs both a certificate (RMA_TLS_CERT) and its key (RMA_TLS_KEY)")
        if self.cert is not None and self.domain:
            raise ValueError("TLS takes a certificate (RMA_TLS_CERT) or a name to get one for (RMA_TLS_DOMAIN), "
                             "not both")
        for path in (self.cert, self.key):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file not found: {path}")
        if self.front_engine is not None and self.front_engine not in ENGINES:
            raise ValueError(f"RMA_FRONT_ENGINE is one of {', '.join(ENGINES)}, not {self.front_engine!r}")
        if self.front_engine == "haproxy" and self.domain:
            raise ValueError("HAProxy obtains no certificates: RMA_TLS_DOMAIN (ACME) needs RMA_FRONT_ENGINE=caddy")
        if min(self.header_timeout_s, self.idle_timeout_s) <= 0 or self.max_header_bytes < 1024:
            raise ValueError("the front door's timeouts must be above 0 s and its header limit at least 1 KB")
        if self.max_client_connections < 1:
            raise ValueError("RMA_MAX_CLIENT_CONNECTIONS must be at least 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, cert: str | None = None,
                 key: str | None = None) -> FrontSettings:
        """Flags first, then RMA_TLS_CERT / RMA_TLS_KEY; the limits from RMA_HEADER_TIMEOUT_S,
        RMA_IDLE_TIMEOUT_S, RMA_MAX_HEADER_KB and RMA_MAX_CLIENT_CONNECTIONS; the server from RMA_FRONT_ENGINE."""
        cert = cert or env.get("RMA_TLS_CERT") or None
        key = key or env.get("RMA_TLS_KEY") or None
        limits = {field: kind(env[variable]) * scale for variable, (field, kind, scale) in LIMIT_VARIABLES.items()
                  if env.get(variable)}
        domain = env.get("RMA_TLS_DOMAIN") or None
        return cls(Path(cert).resolve() if cert else None, Path(key).resolve() if key else None, domain,
                   Acme.from_env(env) if domain else None, front_engine=env.get("RMA_FRONT_ENGINE") or None,
                   **limits)

    @property
    def engine(self) -> str:
        """The server the front door runs: RMA_FRONT_ENGINE, else Caddy for an ACME name (HAProxy 2.6 has
        no ACME), else HAProxy where it is installed (it relays twice as fast), else Caddy (a pip package)."""
        if self.front_engine is not None:
            return self.front_engine
        return "caddy" if self.domain or haproxy_path() is None else "haproxy"

    @property
    def tls(self) -> bool:
        return self.cert is not None or bool(self.domain)

    def needed(self, host: str) -> bool:
        """Does a listener on `host` go behind the front door?"""
        return self.tls or not _loopback(host)

    def scheme(self) -> str:
        return "https" if self.tls else "http"


@dataclass(frozen=True)
class Acme:
    """Where Caddy gets the certificate for RMA_TLS_DOMAIN: Let's Encrypt (or ZeroSSL) unless RMA_ACME_CA
    names another directory (a private CA, trusted through RMA_ACME_CA_ROOT). Its account and the
    certificates are kept in RMA_ACME_STORAGE across restarts, so a restart never asks for a new one."""

    storage: Path
    directory: str | None = None
    root: Path | None = None
    email: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Acme:
        home = Path(env.get("XDG_DATA_HOME") or Path(env.get("HOME") or Path.home()) / ".local" / "share")
        root = env.get("RMA_ACME_CA_ROOT") or None
        return cls(Path(env.get("RMA_ACME_STORAGE") or home / "rma" / "acme").resolve(),
                   env.get("RMA_ACME_CA") or None, Path(root).resolve() if root else None,
                   env.get("RMA_ACME_EMAIL") or None)


def haproxy_path() -> str | None:
    """Debian's haproxy: on PATH, or in /usr/sbin, which an ordinary user's PATH leaves out."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


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

    The chain is always verified (RMA_CA_FILE, else the system's CAs). With a certificate file the
    name is not, since a loopback address is not the certificate's public name; the served
    certificate must instead be exactly the one the service was given. With an ACME name the
    check asks for that name (SNI) and verifies it.
    """

    context: ssl.SSLContext
    certificate: bytes | None  # DER of the certificate the service serves, when it was given one
    server_name: str | None = None  # the ACME name, sent and verified

    @classmethod
    def of(cls, cert: Path, env: Mapping[str, str] = os.environ) -> TlsCheck:
        context = _verifying(env)
        context.check_hostname = False
        return cls(context, ssl.PEM_cert_to_DER_cert(first_certificate(cert.read_text())))

    @classmethod
    def named(cls, domain: str, env: Mapping[str, str] = os.environ) -> TlsCheck:
        return cls(_verifying(env), None, domain)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TlsCheck | None:
        """The check for a listener given RMA_TLS_CERT (pinned) or RMA_TLS_DOMAIN (named); None without TLS.

        Built once per settings and per version of the files it reads, not per check: a check runs
        every few seconds, and loading a verifying context costs ~40 ms of CPU.
        """
        cert, domain = env.get("RMA_TLS_CERT") or None, env.get("RMA_TLS_DOMAIN") or None
        if cert is None and domain is None:
            return None
        ca_file, acme_root = env.get(CA_FILE_VARIABLE) or None, env.get("RMA_ACME_CA_ROOT") or None
        return _cached_check(cert, domain, ca_file, acme_root, _version(cert), _version(ca_file), _version(acme_root))

    def served(self, connection: ssl.SSLObject | None) -> bool:
        if connection is None:
            return False
        return self.certificate is None or connection.getpeercert(binary_form=True) == self.certificate


@functools.lru_cache(maxsize=16)
def _cached_check(cert: str | None, domain: str | None, ca_file: str | None, acme_root: str | None,
                  *versions: int) -> TlsCheck:
    """`TlsCheck.from_env`'s checks; `versions` (the files' modification times) make a replaced file a new key."""
    env = {name: value for name, value in ((CA_FILE_VARIABLE, ca_file), ("RMA_ACME_CA_ROOT", acme_root)) if value}
    return TlsCheck.of(Path(cert), env) if cert else TlsCheck.named(str(domain), env)


def _version(path: str | None) -> int:
    try:
        return Path(path).stat().st_mtime_ns if path else 0
    except OSError:
        return 0


def _verifying(env: Mapping[str, str]) -> ssl.SSLContext:
    """A context that verifies the chain against RMA_CA_FILE, RMA_ACME_CA_ROOT (a private ACME CA), else the
    system's CAs."""
    verify = client_context(env)
    context = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
    if env.get("RMA_ACME_CA_ROOT"):
        context.load_verify_locations(cafile=env["RMA_ACME_CA_ROOT"])
    return context


def first_certificate(pem: str) -> str:
    """The first PEM certificate of a chain file: the server's own."""
    end = "-----END CERTIFICATE-----"
    start = pem.find("-----BEGIN CERTIFICATE-----")
    if start < 0 or end not in pem[start:]:
        raise ValueError("no PEM certificate in the TLS certificate file")
    return pem[start:pem.index(end, start) + len(end)] + "\n"
