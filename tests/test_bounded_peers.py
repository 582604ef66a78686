"""Peer aggregation over a bounded number of peers (``Learner.max_peers``, AFMCC's
``afmcc.peers``): a round reads its own upload and the most recent other uploads, so what it
downloads does not grow with the federation."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fedsim.runtime.server import Snapshot, StoreEntry
from fedsim.tracking import write_upload_log


def _snapshot(commits: list[int]) -> Snapshot:
    return Snapshot(tuple(StoreEntry(c, 1, (0,), None, 10, commit) for c, commit in enumerate(commits)), 9)


def test_a_round_reads_its_own_and_the_most_recent_uploads():
    snapshot = _snapshot([3, -1, 7, 5, -1, 1])
    ids = [e.client_id for e in snapshot.round_inputs(1, pretrain=False, max_peers=2)]
    assert ids == [1, 2, 3]  # own, then commits 7 and 5; in client order
    assert [e.client_id for e in snapshot.round_inputs(2, pretrain=False, max_peers=3)] == [0, 2, 3, 5]
    # unbounded, or a bound of U - 1 or more: every client's (the paper's Eq. 6)
    assert len(snapshot.round_inputs(1, pretrain=False)) == 6
    assert len(snapshot.round_inputs(1, pretrain=False, max_peers=5)) == 6
    # pretraining and server-averaged rounds read their own upload only
    assert [e.client_id for e in snapshot.round_inputs(4, pretrain=True, max_peers=2)] == [4]


def test_among_seeded_entries_the_next_clients_in_cyclic_order_are_read():
    snapshot = _snapshot([-1] * 5)
    assert [e.client_id for e in snapshot.round_inputs(3, pretrain=False, max_peers=2)] == [0, 3, 4]


def test_what_a_round_is_sent_is_its_inputs_without_refs_and_reads_the_same():
    full = Snapshot(tuple(StoreEntry(c, 2, (0,), object(), 10, c) for c in range(6)), 6)
    inputs = full.round_inputs(2, pretrain=False, max_peers=2)
    part = full.part(inputs)
    assert all(e.ref is None for e in part.entries)
    assert [e.client_id for e in part.round_inputs(2, pretrain=False, max_peers=2)] == [2, 4, 5]
    assert part.entry(5).client_id == 5


def test_an_upload_log_with_bounded_rounds_is_written_as_parquet(tmp_path):
    """Pretraining rounds record every version (a list), bounded rounds {client: version}: no
    one parquet type holds both, so the column is written as JSON."""
    log = pd.DataFrame({"client_id": [0, 1], "versions_read": [[0, 0, 0], {0: 1, 2: 3}], "info": [{}, {"a": 1}]})
    write_upload_log(log, tmp_path / "log.parquet")
    back = pd.read_parquet(tmp_path / "log.parquet")
    assert [json.loads(v) for v in back["versions_read"]] == [[0, 0, 0], {"0": 1, "2": 3}]


@pytest.mark.timeout(300)
def test_afmcc_with_two_peers_downloads_three_models_a_round(ray_session, small_config, tmp_path) -> None:
    from fedsim.runner import run_experiment

    outcome = run_experiment(
        small_config(
            "rounds=2",
            "eval_every=1",
            "afmcc.peers=2",
            "num_clients=6",
            "tracking.enabled=true",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        )
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    artifacts = {a.path for a in client.list_artifacts(outcome.summary["mlflow_run_id"])}
    assert "upload_log.parquet" in artifacts
    log = outcome.federation.upload_log
    train = log[log["phase"] == "train"]
    assert len(train) == 6 * 2
    assert {info["downloaded_models"] for info in train["info"]} == {3}
    for cid, info, read in zip(train["client_id"], train["info"], train["versions_read"]):
        assert cid in info["aggregation_weights"] and len(info["aggregation_weights"]) == 3
        # the log records what the round read: {client: version} of its three entries
        assert set(read) == set(info["aggregation_weights"])
    assert 0.0 <= outcome.summary["acc"] <= 1.0
