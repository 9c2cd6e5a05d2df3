"""Resource checks against what the cluster can become, not only what is up now (autoscaling clusters start small)."""

from __future__ import annotations

import pytest

from dia_ray.distributed import runtime
from dia_ray.errors import ClusterError

pytestmark = pytest.mark.integration


def test_capacity_counts_the_nodes_an_autoscaler_may_add(ray_cluster, monkeypatch):
    monkeypatch.delenv(runtime.MAX_NODES_ENV, raising=False)
    now = runtime.cluster_capacity()
    assert now.source == "nodes up now" and now.nodes == 1 and now.resources["CPU"] == 2
    with pytest.raises(ClusterError, match=r"4 worker\(s\) x 1 CPU need 4 CPUs but the cluster has 2 \(nodes up now\)"):
        runtime.check_train_resources(4, False, 1.0)
    monkeypatch.setenv(runtime.MAX_NODES_ENV, "3")  # set by the shipped cluster configs: head + 2 workers at most
    grown = runtime.cluster_capacity()
    assert grown.nodes == 3 and grown.resources["CPU"] == 6 and grown.source == "$DIA_RAY_MAX_NODES"
    monkeypatch.setenv(runtime.WORKER_RESOURCES_ENV, '{"CPU": 96, "GPU": 8}')  # a head-only cluster of 8-GPU nodes
    assert runtime.cluster_capacity().resources["GPU"] == 16
    runtime.check_train_resources(2, True, 8.0, 0.25)
    monkeypatch.delenv(runtime.WORKER_RESOURCES_ENV)
    runtime.check_train_resources(4, False, 1.0)  # fits once the autoscaler has added the nodes: no error now
    with pytest.raises(ClusterError, match="GPU"):
        runtime.check_train_resources(1, True, 1.0)  # no node type has a GPU: never schedulable
