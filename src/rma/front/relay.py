"""What the front door and the engine behind it agree on, whichever server the front door runs.

The front door sets X-Forwarded-For/-Proto from the connection, ignoring what the client sent;
what the client sent as X-Forwarded-For travels as X-Rma-Relayed, so the engine can still tell
a relayed request (see rma.routing.server). An answer the engine marks X-Rma-Close-Client closes
the client's connection after it: Connection is hop-by-hop and would stop at the front door.
"""

from __future__ import annotations

RELAYED_HEADER = "X-Rma-Relayed"
CLOSE_CLIENT_HEADER = "X-Rma-Close-Client"


def listen_address(host: str, port: int) -> str:
    """host:port as both servers' configs (and logs) write it, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
