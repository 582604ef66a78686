"""Privacy accounting counts every release (issue 26, item 7): training and pretraining uploads,
under every stop rule, across model-selection restarts; the bound is derived before Ray starts,
enforced by the driver, and the reported epsilon is checked against Opacus' own accountant."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

import fedsim.privacy
import fedsim.runner
from fedsim.cli import main
from fedsim.config import build_config
from fedsim.errors import ConfigError
from fedsim.privacy import plan_privacy, release_bounds
from fedsim.runner import run_experiment
from fedsim.runtime.callbacks import Callback
from fedsim.runtime.client import ClientActor
from fedsim.runtime.server import Snapshot, StoreEntry
from tests.conftest import SMALL_SYNTHETIC

EPSILON, DELTA = 8.0, 1e-5


def _cfg(*overrides: str, **changes):
    return build_config(
        {**SMALL_SYNTHETIC, **changes}, ["privacy.enabled=true", f"privacy.epsilon={EPSILON}", *overrides]
    )


def _opacus_epsilon(sigma: float, releases: int) -> float:
    accountant = RDPAccountant()
    accountant.history = [(sigma, 1.0, releases)]
    return accountant.get_epsilon(delta=DELTA)


# ---------------------------------------------------------------------------------------------
# The bound per stop rule (no Ray). Four clients; costs and speeds chosen by hand.

COSTS, PRETRAIN_COSTS = [300.0, 300.0, 600.0, 150.0], [100.0, 100.0, 200.0, 50.0]
SPEEDS = [3.0, 1.0, 3.0, 1.0]  # durations d = 100, 300, 200, 150


def _bounds(*overrides: str):
    return release_bounds(_cfg(*overrides), COSTS, PRETRAIN_COSTS, SPEEDS)


def test_rounds_rule_counts_designated_pretraining():
    b = _bounds("rounds=5", "pretrain.rounds=2")
    assert b.pretrain == (2, 0, 0, 0) and b.train == (5, 5, 5, 5) and b.total == (7, 5, 5, 5)


def test_chain_pretraining_and_restarts_multiply():
    b = _bounds(
        "rounds=5",
        "pretrain.rounds=2",
        "pretrain.schedule=chain",
        "model_selection.runs=3",
        "model_selection.criterion=acc",
    )
    assert b.pretrain == (2, 2, 2, 2) and b.total == (21, 21, 21, 21)


def test_group_rule_virtual_follows_the_slowest_group_member():
    # group odd = clients 1 and 3, the slowest of them takes 300 per round: the run ends at
    # 4 x 300 = 1200 after pretraining, in which a client of duration d fits floor(1200 / d) rounds
    b = _bounds("stop.rule=group", "stop.group=odd", "stop.group_rounds=4", "pretrain.enabled=false")
    assert b.train == (12, 4, 6, 8) and b.pretrain == (0, 0, 0, 0)
    assert _bounds("stop.rule=group", "stop.group=odd", "stop.group_rounds=4", "mode=async").train == (12, 4, 6, 8)
    assert _bounds("stop.rule=group", "stop.group=even", "stop.group_rounds=3").train == (6, 2, 3, 4)


def test_group_rule_sync_is_lock_step():
    assert _bounds("stop.rule=group", "stop.group_rounds=4", "mode=sync").train == (4, 4, 4, 4)


def test_sim_time_rule_subtracts_pretraining():
    # designated pretraining on client 0: 2 rounds of 100 / 3; the budget left is 1000 - 66.7
    b = _bounds("stop.rule=sim_time", "stop.sim_time_budget=1000", "pretrain.rounds=2")
    assert b.train == (9, 3, 4, 6) and b.total == (11, 3, 4, 6)
    # sync: every round lasts as long as the slowest client's (300)
    assert (
        _bounds("stop.rule=sim_time", "stop.sim_time_budget=1000", "pretrain.rounds=2", "mode=sync").train == (3,) * 4
    )
    # a budget the pretraining uses up leaves no training upload
    assert _bounds("stop.rule=sim_time", "stop.sim_time_budget=60", "pretrain.rounds=2").train == (0,) * 4


def test_each_client_is_calibrated_for_its_own_bound():
    plan = plan_privacy(
        _cfg("stop.rule=group", "stop.group=odd", "stop.group_rounds=4", "pretrain.enabled=false"),
        COSTS,
        PRETRAIN_COSTS,
        SPEEDS,
    )
    for total, sigma in zip(plan.bounds.total, plan.noise_multipliers):
        expected = get_noise_multiplier(target_epsilon=EPSILON, target_delta=DELTA, sample_rate=1.0, steps=total)
        assert sigma == pytest.approx(expected, rel=1e-12)
        assert _opacus_epsilon(sigma, total) <= EPSILON
    report = plan.account([12, 4, 5, 8])
    assert [c["epsilon"] for c in report["clients"]] == pytest.approx(
        [_opacus_epsilon(s, n) for s, n in zip(plan.noise_multipliers, [12, 4, 5, 8])]
    )
    assert report["epsilon_max"] <= EPSILON and report["releases_max"] == 12
    with pytest.raises(RuntimeError, match="void"):
        plan.account([13, 4, 5, 8])


def test_a_client_without_releases_still_gets_noise():
    """A budget the pretraining uses up: no training upload is committed, but the virtual clock
    still runs each client's first round (then drops it), so every client has a noise multiplier."""
    plan = plan_privacy(
        _cfg("stop.rule=sim_time", "stop.sim_time_budget=60", "pretrain.rounds=2"), COSTS, PRETRAIN_COSTS, SPEEDS
    )
    assert plan.bounds.total == (2, 0, 0, 0) and all(s > 0 for s in plan.noise_multipliers)
    report = plan.account([2, 0, 0, 0])
    assert [c["epsilon"] for c in report["clients"]][1:] == [0.0, 0.0, 0.0]


def test_an_unboundable_count_is_refused():
    with pytest.raises(ConfigError, match="cannot bound"):
        release_bounds(
            _cfg("stop.rule=sim_time", "stop.sim_time_budget=10"), [1.0, 0.0, 1.0, 1.0], PRETRAIN_COSTS, SPEEDS
        )


@pytest.fixture
def no_ray(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(fedsim.runner, "ensure_ray", refuse)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.filterwarnings("ignore:Optimal order is the")
def test_an_unreachable_budget_is_one_line_exit_2_before_ray(no_ray, capsys):
    """A sim_time budget of 10^14 work units allows ~10^11 uploads: no noise multiplier up to 1e6
    gives epsilon 1 over them. Refused in the driver, naming the fix."""
    import yaml

    path = no_ray / "cfg.yaml"
    path.write_text(yaml.safe_dump({**SMALL_SYNTHETIC, "runtime": {}}))
    code = main(
        [
            "run",
            str(path),
            "--set",
            "privacy.enabled=true",
            "--set",
            "privacy.epsilon=0.01",
            "--set",
            "stop.rule=sim_time",
            "--set",
            "stop.sim_time_budget=1e12",
        ]
    )
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and len(lines[0]) <= 300, err
    assert "out of reach" in lines[0] and "stop.sim_time_budget" in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------
# Fresh noise for every release (no Ray: the actor class as a plain class)


def _release(actor: ClientActor, pretrain: bool, round_: int, seq: int, params: np.ndarray, state=None):
    """Client 0's round from ``params`` (every peer too) at noise multiplier 1e6: the noise
    vector divided by its std (the clipped update is 1e-6 of it), and the state after it."""
    own = actor.clients[0].data
    u = actor.cfg.num_clients
    snapshot = Snapshot(
        tuple(StoreEntry(c, 0, tuple(own.modalities), None, own.n_samples) for c in range(u)), 0, ((seq, None),) * u
    )
    passed = None if state is None else pickle.loads(pickle.dumps(state))
    out, info, after = actor.run_round(
        0, round_, snapshot, pretrain, 1.0, seq, passed, *[params] * (1 if pretrain else u), noise_multiplier=1e6
    )
    assert info["privacy"]["noise_multiplier"] == 1e6
    return (out.astype(np.float64) - params) / info["privacy"]["noise_std"], after


def test_every_release_draws_fresh_noise():
    """Pretraining rounds all have round 0, so their noise must differ by the client's round
    count; a model-selection restart's by its index. A re-run of the same round (its actor was
    lost) draws the same noise, so it releases the same vector again."""
    raw = _cfg("privacy.clip_norm=0.001").model_dump(mode="json")
    actor = ClientActor(raw, [0])
    params = actor.initial_parameters(0)
    first, _ = _release(actor, True, 0, 0, params)
    second, after_second = _release(actor, True, 0, 1, params)
    train, _ = _release(actor, False, 1, 2, params)
    restarted, _ = _release(ClientActor({**raw, "restart": 1}, [0]), False, 1, 2, params, after_second)
    noises = [first, second, train, restarted]
    assert noises[0].size > 1000
    for i in range(4):
        for j in range(i):
            assert abs(np.corrcoef(noises[i], noises[j])[0, 1]) < 0.1, (i, j)
    again, _ = _release(actor, False, 1, 2, params, after_second)
    np.testing.assert_allclose(again, train, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# End to end against Opacus (Ray, virtual mode)


class Releases(Callback):
    """Counts every committed upload per client, over every restart: the releases."""

    def __init__(self, u: int) -> None:
        self.count = [0] * u
        self.sigma: dict[int, set[float]] = {}

    def on_upload(self, record, progress) -> None:
        self.count[record.client_id] += 1
        self.sigma.setdefault(record.client_id, set()).add(record.info["privacy"]["noise_multiplier"])


def _check_against_opacus(report: dict, seen: Releases, cfg) -> None:
    assert [c["releases"] for c in report["clients"]] == seen.count
    for row in report["clients"]:
        assert seen.sigma[row["client"]] == {row["noise_multiplier"]}  # what the actor used for each upload
        expected_sigma = get_noise_multiplier(
            target_epsilon=cfg.privacy.epsilon,
            target_delta=cfg.privacy.delta,
            sample_rate=1.0,
            steps=max(row["bound"], 1),
        )
        assert row["noise_multiplier"] == pytest.approx(expected_sigma, rel=1e-12)
        assert row["releases"] <= row["bound"]
        assert row["epsilon"] == pytest.approx(_opacus_epsilon(row["noise_multiplier"], row["releases"]), rel=1e-9)
        assert row["epsilon"] <= cfg.privacy.epsilon
    assert report["epsilon_max"] == max(c["epsilon"] for c in report["clients"])
    assert report["capped_clients"] == []  # virtual mode: the stop rule ends every client first


@pytest.mark.timeout(600)
def test_group_rule_uneven_uploads_match_opacus(ray_session, tmp_path):
    """Fast (even) clients upload ~3x as often as the odd group; client 0 also pretrains. Each
    client's reported epsilon is Opacus' for its actual releases and noise multiplier."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = _cfg(
        "speed_profile=eo:3:1",
        "stop.rule=group",
        "stop.group=odd",
        "stop.group_rounds=2",
        "eval_every=0",
        "client_ratio=1:0",
        "tracking.enabled=true",
        f"tracking.tracking_uri={uri}",
    )
    seen = Releases(cfg.num_clients)
    outcome = run_experiment(cfg, callbacks=[seen])
    report = outcome.summary["privacy"]
    _check_against_opacus(report, seen, cfg)
    counts = seen.count
    assert counts[1] == counts[3] == 2 and counts[0] > counts[2] >= 5, counts  # pretraining on client 0
    pretrain = outcome.federation.upload_log.query("phase == 'pretrain'")
    assert list(pretrain["client_id"]) == [0] and all("noise_std" in i["privacy"] for i in pretrain["info"])
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(outcome.summary["mlflow_run_id"])
    metrics = run.data.metrics
    assert metrics["privacy_epsilon_max"] == pytest.approx(report["epsilon_max"])
    for row in report["clients"]:
        assert metrics[f"privacy_epsilon/client_{row['client']}"] == pytest.approx(row["epsilon"])
        assert metrics[f"privacy_releases/client_{row['client']}"] == row["releases"]
    artifacts = {a.path for a in mlflow.MlflowClient(tracking_uri=uri).list_artifacts(run.info.run_id)}
    assert "privacy_accounting.json" in artifacts


@pytest.mark.timeout(600)
def test_sim_time_rule_with_restarts_counts_every_restart(ray_session):
    """Chained pretraining (every client pretrains) and two model-selection restarts: the
    releases of both restarts add up, and the bound was calibrated for both."""
    cfg = _cfg(
        "speed_profile=eo:3:1",
        "stop.rule=sim_time",
        "stop.sim_time_budget=8000",
        "eval_every=0",
        "pretrain.schedule=chain",
        "model_selection.runs=2",
        "model_selection.criterion=acc",
    )
    seen = Releases(cfg.num_clients)
    report = run_experiment(cfg, callbacks=[seen]).summary["privacy"]
    _check_against_opacus(report, seen, cfg)
    assert report["runs"] == 2 and all(c["releases"] % 2 == 0 for c in report["clients"])
    assert len(set(seen.count)) > 1, seen.count  # unequal uploads
    # the sim_time bound is exact here: every client fits exactly its bound
    assert seen.count == [c["bound"] for c in report["clients"]]


@pytest.mark.timeout(600)
def test_the_driver_enforces_the_bound(ray_session, monkeypatch):
    """A client whose bound is spent starts no more rounds, and the record names it (what keeps
    async runs under the group rule within their bound when real timing outruns the plan)."""
    real = fedsim.privacy.release_bounds

    def tighter(*args, **kwargs):
        bounds = real(*args, **kwargs)
        return replace(bounds, train=(bounds.train[0], 1, *bounds.train[2:]))

    monkeypatch.setattr(fedsim.privacy, "release_bounds", tighter)
    cfg = _cfg("eval_every=0")
    seen = Releases(cfg.num_clients)
    outcome = run_experiment(cfg, callbacks=[seen])
    report = outcome.summary["privacy"]
    assert seen.count == [4, 1, 3, 3] and report["capped_clients"] == [1]
    assert outcome.federation.rounds_done == [3, 1, 3, 3]
    assert report["clients"][1]["bound"] == 1 and report["clients"][1]["epsilon"] <= EPSILON


def test_state_pickles():  # the plan crosses no process boundary, but the report goes to JSON
    import json

    plan = plan_privacy(_cfg(), COSTS, PRETRAIN_COSTS, SPEEDS)
    json.dumps(plan.account([1, 1, 1, 1]))
    pickle.dumps(plan)
