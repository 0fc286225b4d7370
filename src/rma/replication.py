"""What the coordinator and a replicated store's driver agree on: where the engine keeps its leader, and names.

postgres replicates under Patroni on the pool's etcd (the store coordinator replicas share): each replica
is a Patroni member named after its worker, and the member holding Patroni's leader key is the primary.
The coordinator reads that key to name the primary in discovery; the driver hands Patroni the same
namespace and scope.
"""

from __future__ import annotations

# The service config variables the coordinator adds for a replicated store's replicas.
STORE_URL_VARIABLE = "RMA_STORE_URL"  # the pool's etcd (etcd://host:port,…), which Patroni elects a leader in
REPLICA_NAME_VARIABLE = "RMA_REPLICA_NAME"  # the member's name: its worker id

PATRONI_NAMESPACE = "/rma-patroni/"  # outside the coordinator's own /rma/ prefix
PATRONI_SCOPE = "postgres"
PATRONI_API_PORT = 8008  # Patroni's REST API, which its members and the driver's health check ask
PATRONI_LEADER_KEY = f"{PATRONI_NAMESPACE}{PATRONI_SCOPE}/leader"  # its value: the primary member's name
