"""Placement of simulated clients onto actors, and that a run never leaves actors behind.

Actors asking for more CPUs than the cluster has pend forever without an error, and a call on
a pending actor blocks inside Ray's C++ core where no signal handler runs: these tests guard
the two ways that happened (a stale availability report, and actors leaked by a failed run)."""

from __future__ import annotations

import time

import pytest
import ray

from fedsim.runtime import cluster
from fedsim.runtime.cluster import Placement, compute_slots, plan_placement


def test_placement_never_asks_for_more_cpus_than_given(small_config):
    cfg = small_config("num_clients=48", "client_ratio=2:1")
    p = plan_placement(
        cfg, param_bytes=10_000, shard_bytes=10_000, available_cpus=2, available_gpus=0, available_memory=24 * 2**30
    )
    assert len(p.groups) == 2 and p.num_cpus * len(p.groups) <= 2 and p.num_gpus == 0
    assert sorted(c for g in p.groups for c in g) == list(range(48))
    # memory bounds the actor count: ~350 MB each, 60% of 1 GiB holds one
    p = plan_placement(
        cfg, param_bytes=10_000, shard_bytes=10_000, available_cpus=16, available_gpus=0, available_memory=2**30
    )
    assert len(p.groups) == 1
    # GPUs: at most clients_per_gpu clients share one GPU, no actor asks for more than one
    p = plan_placement(
        cfg, param_bytes=10_000, shard_bytes=10_000, available_cpus=16, available_gpus=4, available_memory=64 * 2**30
    )
    assert len(p.groups) == 16 and p.device == "cuda" and 0 < p.num_gpus <= 1
    assert p.num_gpus * len(p.groups) <= 4 + 1e-9 and p.num_cpus * len(p.groups) <= 16


def test_an_actor_computes_as_many_rounds_at_once_as_its_cpus_allow(small_config):
    def slots(num_cpus: float, *overrides: str) -> int:
        return compute_slots(small_config(*overrides), Placement(groups=[[0, 1, 2]], num_cpus=num_cpus, num_gpus=0.0))

    assert slots(0.25) == 1 and slots(1.0) == 1 and slots(1.9) == 1
    assert slots(2.0) == 2 and slots(4.0, "runtime.torch_threads=2") == 2


def test_placement_uses_the_cluster_total_when_the_availability_report_lags(ray_session, small_config, monkeypatch):
    # Right after a run's actors are killed, Ray's report can lack "CPU" for about a second;
    # os.cpu_count() may then be the host's count, more than Ray was given (here 2).
    monkeypatch.setattr(cluster.ray, "available_resources", lambda: {})
    monkeypatch.setattr(cluster.os, "cpu_count", lambda: 64)
    p = plan_placement(small_config(), param_bytes=10_000, shard_bytes=10_000)
    assert p.num_cpus * len(p.groups) <= ray.cluster_resources()["CPU"]


def _cpus_back(expected: float, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0.0) >= expected:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("where", ["start-up", "mid-run"])
def test_a_failed_run_leaves_no_actors_holding_cpus(ray_session, small_config, monkeypatch, where):
    from ray.exceptions import RayActorError

    from fedsim import runner
    from fedsim.runtime.orchestrator import Federation

    seen: list = []  # the run's client actors; holding their handles keeps them alive unless stopped
    if where == "start-up":
        real = runner.start_client_actors

        def start_then_fail(*args, **kwargs):
            seen.extend(real(*args, **kwargs).values())
            raise RuntimeError("injected failure after the actors were created")

        monkeypatch.setattr(runner, "start_client_actors", start_then_fail)
    else:

        def fail(self):
            seen.extend(self.actor_of.values())
            raise RuntimeError("injected failure in the middle of a run")

        monkeypatch.setattr(Federation, "run", fail)
    with pytest.raises(RuntimeError, match="injected"):
        runner.run_experiment(small_config())
    assert seen
    for actor in seen:  # stopped before run_experiment returned, not merely garbage-collected later
        with pytest.raises(RayActorError):
            ray.get(actor.__ray_ready__.remote(), timeout=30)
    seen.clear()  # drop the handles (not `del`: the closures above refer to the name)
    assert _cpus_back(ray.cluster_resources()["CPU"], within_s=10), ray.available_resources()
    monkeypatch.undo()
    # and the next run gets its actors scheduled and finishes
    out = runner.run_experiment(small_config("rounds=1")).summary
    assert out["rounds"] == {str(c): 1 for c in range(4)}


def test_placement_waits_out_a_lagging_availability_report(small_config, monkeypatch):
    # The report lacks "CPU" for a moment after a kill; planning from the total then would ask
    # for CPUs a dying actor still holds. Here one CPU is really free once the report settles.
    reports = iter([{}, {}, {"CPU": 1.0}])
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(cluster.ray, "available_resources", lambda: next(reports, {"CPU": 1.0}))
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 2.0})
    p = plan_placement(small_config(), param_bytes=10_000, shard_bytes=10_000, available_memory=8 * 2**30)
    assert len(p.groups) == 1 and p.num_cpus == 1.0


def test_actors_that_cannot_start_fail_the_run_with_what_is_free(ray_session, small_config):
    from fedsim import runner
    from fedsim.errors import ConfigError

    # 4 actors asking 3 CPUs each on a 2-CPU cluster: infeasible, they would pend forever
    with pytest.raises(
        ConfigError, match=r"not running after 5 s \(runtime.start_timeout_s\); Ray has \{'CPU': 2"
    ) as err:
        runner.run_experiment(small_config("runtime.num_cpus=12", "runtime.start_timeout_s=5"))
    assert "free of {'CPU': 2" in str(err.value)
    assert _cpus_back(ray.cluster_resources()["CPU"], within_s=10), ray.available_resources()
