"""Faults from outside: client actors killed with SIGKILL while a run goes on. A restarted client
continues exactly where it was (its state is kept with its uploads), so a virtual run's result is
identical to the unfaulted run's, and no upload is lost or doubled."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.runner import run_experiment
from tests.faults import ActorKiller, assert_gap_free

COLUMNS = ["client_id", "round", "phase", "versions_read", "version_written", "sim_start", "sim_end", "staleness"]


def _compare(a, b) -> None:
    (a_out, a), (b_out, b) = a, b
    for key in ("acc", "nmi", "ari", "purity", "simulated_time"):
        assert a_out[key] == b_out[key], key
    assert a.upload_log[COLUMNS].astype(str).equals(b.upload_log[COLUMNS].astype(str))
    assert [i["losses"] for i in a.upload_log["info"]] == [i["losses"] for i in b.upload_log["info"]]
    assert a.assignments.equals(b.assignments)
    assert [h.metrics for h in a.history] == [h.metrics for h in b.history]


@pytest.mark.timeout(900)
def test_virtual_run_with_client_kills_equals_the_unfaulted_run(ray_session, small_config):
    cfg = small_config("speed_profile=eo:3:1", "rounds=5", "runtime.clients_per_actor=1", "eval_every=2")
    clean = run_experiment(cfg)
    killer = ActorKiller(kills=4, every=3)
    faulted = run_experiment(cfg, callbacks=[killer])
    assert killer.done == 4 and len(set(killer.pids)) == 4
    assert faulted.summary["actor_restarts"] >= 1
    assert_gap_free(faulted.federation.upload_log, faulted.federation.rounds_done)
    _compare((clean.summary, clean.federation), (faulted.summary, faulted.federation))


@pytest.mark.timeout(900)
def test_sequential_sync_run_with_client_kills_equals_the_unfaulted_run(ray_session, small_config):
    """FMCSC's configs run the code's client loop (``round_order: sequential``): each client reads
    what its predecessors of the round uploaded. A client killed mid-round restarts from its
    kept state and the round goes on as if nothing happened."""
    cfg = small_config("mode=sync", "round_order=sequential", "rounds=4", "runtime.clients_per_actor=1", "eval_every=2")
    clean = run_experiment(cfg)
    killer = ActorKiller(kills=3, every=3)
    faulted = run_experiment(cfg, callbacks=[killer])
    assert killer.done == 3 and faulted.summary["actor_restarts"] >= 1
    assert_gap_free(faulted.federation.upload_log, faulted.federation.rounds_done)
    _compare((clean.summary, clean.federation), (faulted.summary, faulted.federation))


@pytest.mark.timeout(900)
def test_async_run_survives_client_kills(ray_session, small_config):
    cfg = small_config("mode=async", "rounds=5", "runtime.clients_per_actor=2", "eval_every=0")
    killer = ActorKiller(kills=3, every=3)
    outcome = run_experiment(cfg, callbacks=[killer])
    assert killer.done == 3
    res = outcome.federation
    assert res.rounds_done == [5, 5, 5, 5]
    assert_gap_free(res.upload_log, res.rounds_done)
    assert 0.0 <= outcome.summary["acc"] <= 1.0


@pytest.mark.timeout(900)
def test_virtual_run_with_server_and_client_kills_equals_the_unfaulted_run(ray_session, small_config):
    """The parameter server checkpoints every commit to the run's folder; killed, it restarts from
    there (its buffers put back into the object store by the driver) and the run goes on."""
    cfg = small_config("speed_profile=eo:3:1", "rounds=4", "runtime.clients_per_actor=2", "eval_every=2")
    clean = run_experiment(cfg)
    server_killer = ActorKiller(kills=3, every=4, server=True)
    client_killer = ActorKiller(kills=2, every=5)
    faulted = run_experiment(cfg, callbacks=[server_killer, client_killer])
    assert server_killer.done == 3 and client_killer.done == 2
    assert faulted.summary["server_restarts"] >= 1
    assert_gap_free(faulted.federation.upload_log, faulted.federation.rounds_done)
    _compare((clean.summary, clean.federation), (faulted.summary, faulted.federation))
    # a finished run leaves no checkpoint behind
    assert not (Path(cfg.runtime.checkpoint_dir) / faulted.summary["federation"]["run_tag"]).exists()
