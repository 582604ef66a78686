"""A federation whose clients run on two Ray nodes (a two-node cluster on this machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("multinode_probe.py")


@pytest.mark.timeout(300)
def test_clients_run_on_both_nodes_of_a_two_node_cluster() -> None:
    done = subprocess.run(
        [sys.executable, str(PROBE)], capture_output=True, text=True, timeout=280, cwd=PROBE.parent.parent
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cluster_nodes = set(result["cluster_nodes"])
    used = result["client_nodes"]
    assert len(cluster_nodes) == 2
    assert set(used) == cluster_nodes, (used, cluster_nodes)  # both nodes host clients
    assert sorted(c for clients in used.values() for c in clients) == [0, 1, 2, 3]
    assert result["uploads"] == 4 * 2 and 0.0 <= result["acc"] <= 1.0
