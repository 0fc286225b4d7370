"""A real three-member etcd cluster per test module, for the tests of coordinators that share one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from etcd_cluster import EtcdCluster, etcd_cluster, skip_reason


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with etcd_cluster(tmp_path_factory.mktemp("etcd"), size=3) as running:
        yield running
