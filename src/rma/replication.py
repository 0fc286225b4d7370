"""What the coordinator and a replicated store's driver agree on: where the engine keeps its leader, and names.

postgres replicates under Patroni on the pool's etcd (the store coordinator replicas share): each replica
is a Patroni member named after its worker, and the member holding Patroni's leader key is the primary.
The coordinator reads that key to name the primary in discovery; the driver hands Patroni the same
namespace and scope.

redis replicates under Sentinel: each copy runs a Sentinel beside its server, and so does every coordinator
(the third voter when two storage workers hold the copies). A copy starts as a replica of the primary its
service config names; the Sentinels' majority promotes a replica when the primary is gone, and the
coordinator asks its own Sentinel which copy is primary.

S3 (SeaweedFS) replicates with `weed filer.sync`, both ways between a copy and the primary it started beside.
SeaweedFS elects nothing: the coordinator names the primary (the copy named longest, while it serves).

chromadb and neo4j (ArcadeDB) cannot replicate here (Chroma 1.x does so only in its Kubernetes distribution,
ArcadeDB with a plugin PyPI's wheel leaves out): each one's holder copies a consistent snapshot to the pool's
S3 every interval, with an S3 identity that reaches that one bucket, and a new holder restores the newest.
The coordinator waits a grace for a vanished holder before it places the store elsewhere, and the gap report
says how old the newest snapshot is.
"""

from __future__ import annotations

import hashlib
import hmac

# The replication (catalog.Service.replication) of stores whose engine elects the primary; the coordinator
# names the others'.
ELECTED = frozenset({"patroni", "sentinel"})

# The service config variables the coordinator adds for a replicated store's replicas.
STORE_URL_VARIABLE = "RMA_STORE_URL"  # the pool's etcd (etcd://host:port,…), which Patroni elects a leader in
REPLICA_NAME_VARIABLE = "RMA_REPLICA_NAME"  # the member's name: its worker id

PATRONI_NAMESPACE = "/rma-patroni/"  # outside the coordinator's own /rma/ prefix
PATRONI_SCOPE = "postgres"
PATRONI_API_PORT = 8008  # Patroni's REST API, which its members and the driver's health check ask
PATRONI_LEADER_KEY = f"{PATRONI_NAMESPACE}{PATRONI_SCOPE}/leader"  # its value: the primary member's name

PRIMARY_VARIABLE = "RMA_PRIMARY"  # host:port of the primary a new copy replicates from; unset: it is the first
SENTINEL_PORT = 26379  # a redis copy's Sentinel, on the copy's address
SENTINEL_MASTER = "rma"  # the name the Sentinels monitor the primary by
SENTINEL_QUORUM = 2  # Sentinels that must agree the primary is down
SENTINEL_DOWN_AFTER_MS = 1000
# A Sentinel elected to fail over while its view of the replica is older than 5 s gives up ("no good slave",
# about one try in two: it reads a replica's INFO only every 10 s until the primary is down) and tries again
# 2 x this later, by when it reads it every second.
SENTINEL_FAILOVER_TIMEOUT_MS = 2000

SNAPSHOT_BUCKET = "rma-snapshots"
SNAPSHOT_USER = "rma-snapshots"  # the S3 access key that may use SNAPSHOT_BUCKET and nothing else
SNAPSHOT_KEY_VARIABLE = "RMA_SNAPSHOT_KEY"  # its secret, in the service configs of the snapshotted stores only
SNAPSHOT_INTERVAL_VARIABLE = "RMA_SNAPSHOT_INTERVAL_S"  # seconds between snapshots (the coordinator's setting)
RESTORE_GRACE_VARIABLE = "RMA_RESTORE_GRACE_S"  # how long a vanished holder is waited for before a restore


def snapshot_key(s3_secret: str) -> str:
    """The snapshot identity's secret, derived from S3's: the S3 store and the coordinator compute it alike,
    and it gives away nothing of S3's own secret."""
    return hmac.new(s3_secret.encode(), SNAPSHOT_USER.encode(), hashlib.sha256).hexdigest()
