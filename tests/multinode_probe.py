"""Run a small federation on a two-node Ray cluster started on this machine; print JSON.

Used by tests/test_multinode.py in a process of its own: the test session holds its own local
Ray, and a process connects to one Ray at a time. Each node is a raylet with one CPU, so the two
one-CPU client actors the runtime plans cannot share a node: Ray puts one on each."""

from __future__ import annotations

import json
import sys
import tempfile

import ray
from ray.cluster_utils import Cluster

from fedsim.config import build_config
from fedsim.runner import run_experiment
from fedsim.runtime.cluster import free_port


def main() -> int:
    # every port the OS's pick: another Ray on this machine (a sweep, the test session's) keeps its own
    head = {
        "num_cpus": 1,
        "gcs_server_port": free_port("127.0.0.1", 0),
        "include_dashboard": False,
        "dashboard_port": free_port("127.0.0.1", 0),
    }
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        cluster.add_node(num_cpus=1)
        config = {
            "method": "afmcc",
            "dataset": "synthetic",
            "synthetic": {"view_dims": [12, 16], "n_clusters": 3, "n_samples": 240, "noise": 0.2},
            "num_clients": 4,
            "client_ratio": "1:1",
            "mode": "virtual",
            "rounds": 2,
            "eval_every": 0,
            "kmeans_n_init": 3,
            "pretrain": {"rounds": 1},
            "afmcc": {"d": 6, "hidden": [32, 16], "phi": 2},
            "tracking": {"enabled": False, "progress": False},
            "runtime": {
                "ray_address": cluster.address,
                "round_timeout_s": 120,
                "start_timeout_s": 120,
                "checkpoint_dir": tempfile.mkdtemp(prefix="fedsim-multinode-"),
            },
        }
        outcome = run_experiment(build_config(config))
        summary = outcome.summary
        print(
            json.dumps(
                {
                    "cluster_nodes": [n.node_id for n in [cluster.head_node, *cluster.worker_nodes]],
                    "client_nodes": summary["federation"]["client_nodes"],
                    "uploads": summary["uploads"],
                    "acc": summary["acc"],
                }
            )
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
