"""Who may call what: join token to register, a per-worker token after that, admin token for /api/admin,
store keys for stores' credentials; and which address a worker may register as.

With no join or admin token configured, those doors open to loopback callers only.
Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import psutil
from starlette.requests import Request

from rma.protocol import Forbidden, Unauthorized

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# A DNS name as a vouched worker may advertise it: labels of letters, digits and hyphens, the last one
# starting with a letter, so nothing a resolver reads as a number ("127.1", "0x7f000001") passes.
DNS_NAME = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?\.?$")


def bearer(request: Request) -> str | None:
    return bearer_value(request.headers.get("authorization", ""))


def bearer_value(header: str) -> str | None:
    """The token of an 'Authorization: Bearer <token>' header value; None for anything else."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_secret(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def require_secret(request: Request, secret: str | None, what: str, env: str) -> None:
    """Check a shared secret sent as a bearer token; without one configured, allow loopback only."""
    if secret:
        if not same_secret(bearer(request), secret):
            raise Unauthorized(f"{what} needs a valid bearer token ({env})")
    elif not is_loopback(request):
        raise Forbidden(f"{what} is open to loopback callers only while {env} is unset")


def is_admin(request: Request, admin_token: str | None) -> bool:
    """The caller holds the admin token (or, with none configured, calls from loopback)."""
    if admin_token:
        return same_secret(bearer(request), admin_token)
    return is_loopback(request)


def has_store_key(request: Request, keys: tuple[str, ...]) -> bool:
    """The caller sends one of the coordinator's store keys (RMA_STORE_KEYS) as X-API-Key."""
    presented = request.headers.get("x-api-key")
    return any(same_secret(presented, key) for key in keys)


def parse_networks(value: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (a bare address is a network of one); ValueError names the one that is not."""
    networks = []
    for part in (p.strip() for p in value.split(",")):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"not a network (CIDR such as 10.8.0.0/16) or an address: {part!r}") from None
    return tuple(networks)


def machine_addresses() -> frozenset[Address]:
    """This machine's own interface addresses."""
    found = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            ip = _address(address.address.split("%", 1)[0])
            if ip is not None:
                found.add(ip)
    return frozenset(found)


# Headers a proxy adds when it relays a request: a loopback peer that sends one is not the worker's machine.
RELAY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


@dataclass(frozen=True)
class Admission:
    """Which host a registering worker may give the routers to connect to.

    Routers connect to the host a worker registers with, so it must be the worker's own: the
    address its connection comes from. Behind NAT or a tunnel that address is not the one to
    reach the worker at, so the operator vouches for those peers' networks
    (RMA_VOUCHED_NETWORKS): a worker there may advertise another address or a DNS name.

    Loopback reads as every router's own machine, so only a worker on the coordinator's own
    machine may register as loopback, which is the single-machine pool (`rma up`, a worker
    beside its coordinator): a loopback peer whose request was not relayed (no proxy's
    forwarding header, not in a vouched network). Such a worker may also advertise any of the
    machine's own addresses. Link-local, unspecified and multicast addresses are never a
    worker's address (169.254.169.254 is a cloud's metadata service).
    """

    vouched: tuple[Network, ...] = ()
    # This machine's addresses, read only when a loopback peer advertises another one.
    this_machine: Callable[[], Collection[Address]] = field(default=machine_addresses, compare=False)

    def host(self, advertised: str | None, peer: str, relayed: bool = False) -> str:
        """The host routers will use for this worker: `advertised`, else the peer; Forbidden says why not.

        `relayed`: the request carries a proxy's forwarding header (see RELAY_HEADERS).
        """
        peer_ip = _address(peer)
        local_peer = peer_ip is not None and peer_ip.is_loopback and not relayed and not self._vouched(peer_ip)
        host = (advertised or peer).strip().lower().removeprefix("[").removesuffix("]")
        ip = _address(host)
        if ip is None:
            return self._name(host, peer, peer_ip)
        if ip.is_loopback:
            if local_peer:
                return str(ip)
            raise Forbidden(f"advertised host {ip} is a loopback address, which every router reads as its own "
                            "machine: only a worker on the coordinator's own machine may use it (a single-machine "
                            "pool, as `rma up` runs it, connecting straight to the coordinator's loopback); "
                            "advertise this machine's address on the network (ADVERTISE_HOST) and reach the "
                            "coordinator there")
        if ip.is_link_local or ip.is_unspecified or ip.is_multicast:
            raise Forbidden(f"advertised host {ip} is a link-local, unspecified or multicast address, not one "
                            "routers can reach a worker at: advertise this machine's address (ADVERTISE_HOST)")
        if ip == peer_ip or self._vouched(peer_ip) or (local_peer and ip in self.this_machine()):
            return str(ip)
        raise Forbidden(f"advertised host {ip} is not your address {peer}: routers connect to the address a worker "
                        f"registers from. Behind NAT or a tunnel, the operator can vouch for {peer}'s network with "
                        "RMA_VOUCHED_NETWORKS (rma coordinator --vouched-networks CIDR,...)")

    def _name(self, host: str, peer: str, peer_ip: Address | None) -> str:
        if not DNS_NAME.match(host) or host.rstrip(".") == "localhost" or host.rstrip(".").endswith(".localhost"):
            raise Forbidden(f"advertised host {host!r} is not an IP address or a DNS name of another machine")
        if not self._vouched(peer_ip):
            raise Forbidden(f"advertised host {host} is not your address {peer} but a name: only workers in "
                            "networks the operator vouches for (RMA_VOUCHED_NETWORKS, rma coordinator "
                            "--vouched-networks CIDR,...) may advertise a name")
        return host

    def _vouched(self, peer: Address | None) -> bool:
        return peer is not None and any(peer in network for network in self.vouched)


def relayed(request: Request) -> bool:
    """The request says a proxy relayed it (so its peer address is the proxy's)."""
    headers = request.headers
    return any(name in headers for name in RELAY_HEADERS)


def _address(text: str) -> Address | None:
    """An IP address (an IPv4-mapped IPv6 one as IPv4), or None for anything else."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip

