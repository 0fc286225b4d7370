"""The front door: what faces the network in front of the coordinator and the routers.

HAProxy (or Caddy, which obtains certificates by ACME; both well-kept servers: TLS, HTTP/2, strict
parsing, header and idle timeouts) listens on the public address and relays to the rma engine on
a private unix socket; `FrontSettings` says when it runs, which server, and with which
certificate; `client_context` is how workers, routers and tools verify the coordinator's
certificate, and `local_ca` makes a private CA for one-machine pools and tests.
"""

from rma.front.caddy import caddy_config
from rma.front.door import FrontDoor
from rma.front.haproxy import haproxy_config
from rma.front.settings import FrontSettings, client_context

__all__ = ["FrontDoor", "FrontSettings", "caddy_config", "client_context", "haproxy_config"]
