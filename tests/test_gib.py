"""GIB (../shared/papers/004_bdfb457f338739bc.txt): the granular balls (Eqs. 3-4, Fig. 3) against
hand computations and scikit-learn, the objective (Eqs. 2, 5-7) on MSDIB's released machinery, the
Table 2 switches, seeded training, and tiny runs through the real runtime."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from fedsim.methods.base import LocalData, RoundContext, flat_parameters
from fedsim.methods.ddc import ddc_loss
from fedsim.methods.gib import FUSED, GIB, GIBConfig
from fedsim.methods.granular_balls import (
    ball_centres,
    ball_purity,
    ball_radii,
    batch_ball_centres,
    generate_granular_balls,
    seeded_lloyd,
    split_ball,
    split_seeds,
)
from fedsim.methods.ib_common import all_balanced_ce, joint_mi, sample_compression

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models on a shared 2-core machine: extra intra-op threads only spin (a BatchNorm on
    32 rows took 80 ms with 2 threads under load); restored for other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Granular balls: Eqs. 3-4 and the splitting of Fig. 3


def test_purity_by_hand():  # Eq. 4
    assignment = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array([0, 0, 1, 2, 2, 1])
    # ball 0: labels {0, 0, 1} -> 2/3; ball 1: {2, 2} -> 1; ball 2: {1} -> 1
    assert np.allclose(ball_purity(assignment, labels, 3), [2 / 3, 1.0, 1.0])


def test_centres_and_radii_by_hand():  # Eq. 3
    points = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [5.0, 5.0], [7.0, 5.0]])
    assignment = torch.tensor([0, 0, 0, 1, 1])
    centres = ball_centres(points, assignment, 2)
    # ball 0: mean of (0,0), (2,0), (0,4) = (2/3, 4/3); ball 1: (6, 5)
    assert torch.allclose(centres, torch.tensor([[2 / 3, 4 / 3], [6.0, 5.0]]))
    c0 = np.array([2 / 3, 4 / 3])
    r0 = (
        np.linalg.norm([0 - c0[0], 0 - c0[1]])
        + np.linalg.norm([2 - c0[0], 0 - c0[1]])
        + np.linalg.norm([0 - c0[0], 4 - c0[1]])
    ) / 3
    assert torch.allclose(ball_radii(points, assignment, centres), torch.tensor([r0, 1.0], dtype=torch.float32))


# Three tight groups and one outlier; pseudo-labels: A = 0, B and C share label 1, the outlier 2.
HAND_POINTS = np.array(
    [
        [0.0, 0.0],
        [0.0, 1.0],
        [1.0, 0.0],
        [1.2, 1.1],  # A: 0-3
        [10.0, 0.0],
        [10.0, 1.0],
        [11.0, 0.0],
        [11.2, 1.1],  # B: 4-7
        [10.0, 10.0],
        [10.0, 11.0],
        [11.0, 10.0],
        [11.2, 11.1],  # C: 8-11
        [3.0, 3.5],  # outlier: 12
    ],
    dtype=np.float32,
)
HAND_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2])


def _partition(assignment: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(assignment == b).tolist()) for b in np.unique(assignment)}


@pytest.mark.parametrize("seeding", ["centroid", "member"])
def test_splitting_hand_made_points_purity_only(seeding):
    # The whole set (purity 8/13 < 0.9) splits with one seed per label: A, B+C and the outlier.
    # Every part is pure and smaller than the cap n_th = 13, so splitting stops there.
    balls = generate_granular_balls(HAND_POINTS, HAND_LABELS, purity_threshold=0.9, max_size=13, seeding=seeding)
    assert _partition(balls.assignment) == {frozenset({0, 1, 2, 3}), frozenset(range(4, 12)), frozenset({12})}
    assert balls.n_balls == 3 and np.allclose(balls.purity, 1.0)


@pytest.mark.parametrize("seeding", ["centroid", "member"])
def test_splitting_hand_made_points_with_size_cap(seeding):
    # With n_th = 6, B+C (8 points, one label) is split again for its size into B and C
    # (seeded with its two farthest-apart members, (11.2, 11.1) and then (10, 0)).
    balls = generate_granular_balls(HAND_POINTS, HAND_LABELS, purity_threshold=0.9, max_size=6, seeding=seeding)
    expected = {frozenset({0, 1, 2, 3}), frozenset({4, 5, 6, 7}), frozenset({8, 9, 10, 11}), frozenset({12})}
    assert _partition(balls.assignment) == expected
    for b in range(balls.n_balls):
        members = HAND_POINTS[balls.assignment == b]
        centre = members.mean(axis=0)
        assert np.allclose(balls.centres[b], centre, atol=1e-6)
        assert balls.radii[b] == pytest.approx(np.linalg.norm(members - centre, axis=1).mean(), rel=1e-5)
        assert balls.sizes[b] == len(members)
    ball_of_a = balls.assignment[0]
    assert np.allclose(balls.centres[ball_of_a], [(0 + 0 + 1 + 1.2) / 4, (0 + 1 + 0 + 1.1) / 4])


def test_splitting_an_impure_ball_and_the_purity_boundary():
    # A ball of 10 points with 9 of one label has purity 0.9: retained only if purity > theta.
    points = np.array([[float(i), 0.0] for i in range(9)] + [[20.0, 0.0]], dtype=np.float32)
    labels = np.array([0] * 9 + [1])
    kept = generate_granular_balls(points, labels, purity_threshold=0.85, max_size=11)
    assert kept.n_balls == 1
    split = generate_granular_balls(points, labels, purity_threshold=0.9, max_size=11)
    assert _partition(split.assignment) == {frozenset(range(9)), frozenset({9})}


def test_split_seeds_by_hand():
    points = np.array([[0.0, 0.0], [2.0, 0.0], [0.9, 0.0], [10.0, 10.0], [12.0, 10.0]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1])
    # label 0: mean (2.9/3, 0) -> nearest member (0.9, 0); label 1: mean (11, 10) -> tie, first
    assert np.allclose(split_seeds(points, labels, "centroid"), [[2.9 / 3, 0.0], [11.0, 10.0]])
    assert np.allclose(split_seeds(points, labels, "member"), [[0.9, 0.0], [10.0, 10.0]])
    # one label (a split for size): farthest from the centre (12, 10), then farthest from it (0, 0)
    assert np.allclose(split_seeds(points, np.zeros(5, dtype=np.int64)), [[12.0, 10.0], [0.0, 0.0]])


def test_centroid_seeding_keeps_a_converged_kmeans_partition():
    # Seeded with the pseudo-label means of a converged k-means, the first split is a fixed point:
    # the balls are the k-means clusters (all pure), nothing more to split when n_th = n.
    rng = np.random.default_rng(3)
    points = np.concatenate([c + rng.normal(size=(40, 5)) for c in rng.normal(scale=4, size=(4, 5))]).astype(np.float32)
    labels = KMeans(4, n_init=3, random_state=0).fit_predict(points)
    balls = generate_granular_balls(points, labels, 0.9, max_size=len(points), seeding="centroid")
    assert _partition(balls.assignment) == _partition(labels) and balls.n_balls == 4


def test_identical_points_cannot_split():
    points = np.zeros((5, 3), dtype=np.float32)
    balls = generate_granular_balls(points, np.array([0, 1, 2, 0, 1]), purity_threshold=0.9, max_size=2)
    assert balls.n_balls == 1  # nothing to split: the loop stops instead of spinning
    assert np.all(split_ball(points, np.array([0, 1, 2, 0, 1])) == 0)


def test_seeded_lloyd_matches_scikit_learn():
    rng = np.random.default_rng(0)
    groups, seeds = [], []
    for _ in range(3):
        centres = rng.normal(scale=5.0, size=(3, 4))
        pts = np.concatenate([c + rng.normal(size=(20, 4)) for c in centres]).astype(np.float32)
        groups.append(pts)
        seeds.append(pts[[0, 25, 50]])
    points = torch.from_numpy(np.concatenate(groups))
    group = torch.repeat_interleave(torch.arange(3), 60)
    got = seeded_lloyd(points, group, torch.from_numpy(np.stack(seeds)), torch.ones(3, 3, dtype=torch.bool)).numpy()
    for g in range(3):
        expected = KMeans(3, init=seeds[g], n_init=1).fit_predict(groups[g])
        assert np.array_equal(got[g * 60 : (g + 1) * 60], expected)


def test_batch_ball_centres_use_the_batch_members():
    h = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [0.0, 0.0]])
    ids = torch.tensor([7, 7, 2, 7])
    expected = torch.tensor([[4 / 3, 2 / 3], [4 / 3, 2 / 3], [5.0, 5.0], [4 / 3, 2 / 3]])
    assert torch.allclose(batch_ball_centres(h, ids), expected)


# ---------------------------------------------------------------------------------------------
# The objective and training

SMALL = {"widths": [16, 8], "mu_dim": 4, "head_hidden": 6, "batch_size": 30}


def make(views=(5, 7, 6), k=3, **cfg) -> GIB:
    return GIB(GIBConfig(**{**SMALL, **cfg}), views, k, 1)


def data_for(method: GIB, n: int = 90, seed: int = 0) -> LocalData:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, method.n_clusters, n)
    views = {
        v: torch.from_numpy((rng.normal(size=(n, d)) + 2.0 * labels[:, None]).astype(np.float32))
        for v, d in enumerate(method.view_dims)
    }
    return LocalData(0, views, labels, np.arange(n))


def batch_inputs(method: GIB, data: LocalData, n: int = 30):
    model = method.build_model(0)
    balls = method.balls_per_space(model, data, seed=0)
    ids = {key: torch.from_numpy(b.assignment[:n]) for key, b in balls.items()}
    g = torch.Generator().manual_seed(0)
    noise = {k: torch.randn(n, method.cfg.mu_dim, generator=g) for k in [*data.modalities, FUSED]}
    return model, {v: t[:n] for v, t in data.views.items()}, ids, noise


def test_defaults_follow_the_paper_and_msdibs_code():
    cfg = GIBConfig()
    assert (cfg.alpha, cfg.beta, cfg.purity_threshold, cfg.max_ball_fraction) == (0.8, 0.6, 0.9, 1.0)
    assert (cfg.widths, cfg.mu_dim, cfg.clip_norm, cfg.lr_step, cfg.keep_best) == ([512, 512, 256], 128, 5.0, 50, True)


def test_readings_settings():
    tuned = GIBConfig()
    assert tuned.reading == "tuned"  # MSDIB's tuned lr and CE, its code's batch, Eq. 6's pairs on H
    assert [tuned.setting(k) for k in ("lr", "ce_logits", "sample_pairs", "batch_size")] == [1e-3, "log_p", "h", 100]
    printed = GIBConfig(reading="printed")  # Sec. 3.1's lr and batch, Eq. 6 and the code's CE as printed
    assert [printed.setting(k) for k in ("lr", "ce_logits", "sample_pairs", "batch_size")] == [
        1e-4,
        "softmax_p",
        "y",
        256,
    ]
    assert GIBConfig(reading="printed", lr=3e-3).setting("lr") == 3e-3  # a key set explicitly wins


@pytest.mark.parametrize("reading,logits", [("tuned", "log_p"), ("printed", "softmax_p")])
def test_each_reading_takes_its_cross_entropy(reading, logits):
    m = make(reading=reading)
    data = data_for(m)
    model, x, ids, noise = batch_inputs(m, data)
    _, terms = m.loss(model, x, ids, noise)
    out = model(x)
    assert terms["balanced_ce"].item() == pytest.approx(
        all_balanced_ce(out["y"], out["y_fused"], logits).item(), rel=1e-5
    )
    other = "softmax_p" if logits == "log_p" else "log_p"
    assert terms["balanced_ce"].item() != pytest.approx(
        all_balanced_ce(out["y"], out["y_fused"], other).item(), rel=1e-3
    )


@pytest.mark.parametrize("reading", ["tuned", "printed"])
def test_loss_is_eq2_on_the_shared_machinery(reading):
    m = make(reading=reading)
    data = data_for(m)
    model, x, ids, noise = batch_inputs(m, data)
    model.train()
    total, terms = m.loss(model, x, ids, noise)
    out = model(x)
    h, hf, y, yf = out["h"], out["h_fused"], out["y"], out["y_fused"]
    c = {v: batch_ball_centres(h[v], ids[v]) for v in h}
    cf = batch_ball_centres(hf, ids[FUSED])
    mean_pairs = lambda d: (joint_mi(d[0], d[1]) + joint_mi(d[0], d[2]) + joint_mi(d[1], d[2])) / 3  # noqa: E731
    balls = 0.8 * mean_pairs(c) - 0.6 * sum(joint_mi(c[v], cf) for v in c)
    ce = all_balanced_ce(y, yf, m.cfg.setting("ce_logits"))
    pairs = mean_pairs(h if reading == "tuned" else y)  # Eq. 6's pair term: on H (tuned) or as printed
    comp = sample_compression(model.critic, h, hf, noise, 4)["total"] + ce + pairs
    samples = 0.8 * comp - 0.6 * sum(joint_mi(y[v], yf) for v in y)
    expected = ddc_loss(yf, out["hidden"])["total"] + balls + samples
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("use_balls,use_samples", [(False, False), (True, False), (False, True), (True, True)])
def test_ablation_switches_match_table2_rows(use_balls, use_samples):
    m = make(use_balls=use_balls, use_samples=use_samples)
    data = data_for(m)
    model, x, ids, noise = batch_inputs(m, data)
    total, terms = m.loss(model, x, ids, noise)
    assert ("mi_cc" in terms) == use_balls and ("balanced_ce" in terms) == use_samples
    if not (use_balls or use_samples):
        assert total.item() == pytest.approx(terms["ddc"].item(), rel=1e-6)


def test_balls_are_built_per_view_and_fused_and_are_pure():
    m = make()
    data = data_for(m)
    balls = m.balls_per_space(m.build_model(0), data, seed=0)
    assert set(balls) == {0, 1, 2, FUSED}
    for b in balls.values():
        assert b.assignment.shape == (90,) and (b.purity > 0.9).all()


def test_training_is_seeded_and_keeps_the_best_epoch():
    data = data_for(make())

    def run():
        method = make()
        model = method.build_model(0)
        opt = method.make_optimizer(model)
        logs = [
            method.train_round(model, opt, data, torch.Generator().manual_seed(r), RoundContext(r, "train", 3))
            for r in (1, 2, 3)
        ]
        return method, model, logs

    m1, model1, logs1 = run()
    _, model2, logs2 = run()
    assert torch.equal(flat_parameters(model1), flat_parameters(model2)) and logs1 == logs2
    best = min(range(3), key=lambda i: logs1[i]["epoch_ddc1"])
    assert logs1[-1]["best_round"] == best + 1
    assert m1.selection_loss(model1, data) == pytest.approx(logs1[best]["epoch_ddc1"], rel=1e-6)
    assert all(math.isfinite(v) for log in logs1 for v in log.values())


def test_single_view_client_reuses_its_balls_for_the_fusion():
    m = make(views=(5,))
    data = data_for(m, 60)
    balls = m.balls_per_space(m.build_model(0), data, seed=0)
    assert balls[FUSED] is balls[0]
    model = m.build_model(0)
    out = m.train_round(model, m.make_optimizer(model), data, torch.Generator().manual_seed(0))
    assert out["mi_cc"] == 0.0 and out["mi_pairs"] == 0.0


def test_evaluation_is_the_fused_heads_argmax():
    m = make()
    data = data_for(m)
    model = m.build_model(0)
    p = m.soft_assignments(model, data)
    model.train()
    with torch.no_grad():
        expected = model(data.views)["y_fused"].numpy()
    assert np.allclose(p, expected, atol=1e-6) and np.allclose(p.sum(1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Configs, grids and the runtime


def test_configs_and_grids_build():
    from fedsim.config import load_config
    from fedsim.sweeps.grid import load_grid
    from fedsim.sweeps.tune_runner import plan_sweep

    names = sorted(p.stem for p in (ROOT / "configs" / "gib").glob("*.yaml"))
    assert {"hdigit", "scene15", "cub", "bdgp", "mnist_usps", "reuters", "handwritten", "bdgp_federated"} <= set(names)
    for name in names:
        cfg = load_config(ROOT / "configs" / "gib" / f"{name}.yaml")
        assert cfg.method == "gib"
    alpha_beta = load_grid("gib", "alpha_beta")
    assert len(alpha_beta.trials) == 100
    table2 = load_grid("gib", "table2")
    assert len(table2.trials) == 12 and table2.paper["caltech_2v"]["ddc_only"]["acc"] == 63.5
    assert load_grid("gib", "table1").trials
    for grid in ("alpha_beta", "table1", "table2"):  # every trial's config builds (as test_sweep.py)
        assert plan_sweep("gib", "synthetic-bdgp", grid, [], trial_cpus=2).actors_per_trial >= 1


def test_targets_grid_printed_row_resets_a_configs_learning_rate():
    """configs/gib/cub.yaml sets lr 3e-3 for the default reading; the grid's printed row must
    still run Sec. 3.1's 1e-4 (its variant sets gib.lr=null), the tuned row the config's value."""
    from fedsim.config import load_config, method_config
    from fedsim.sweeps.grid import load_grid

    grid = load_grid("gib", "targets")
    lrs = {}
    for trial in grid.trials:
        if trial["seed"] == 0:
            cfg = load_config(ROOT / "configs" / "gib" / "cub.yaml", grid.trial_overrides(trial))
            lrs[trial["gib.reading"]] = method_config(cfg).setting("lr")
    assert lrs == {"tuned": 3e-3, "printed": 1e-4}


GIB_SMALL = {
    "method": "gib",
    "dataset": "synthetic",
    "synthetic": {"view_dims": [12, 16, 20], "n_clusters": 3, "n_samples": 180, "noise": 0.2},
    "seed": 0,
    "kmeans_n_init": 3,
    "tracking": {"enabled": False, "progress": False},
    "gib": {"widths": [32, 16], "mu_dim": 8, "head_hidden": 16, "batch_size": 64, "lr": 0.001},
}


def test_centralised_run_through_the_runtime(ray_session):
    from fedsim.config import build_config
    from fedsim.runner import run_experiment

    cfg = build_config(
        {
            **GIB_SMALL,
            "num_clients": 1,
            "client_ratio": "1:0",
            "mode": "sync",
            "rounds": 2,
            "eval_every": 0,
            "evaluation": "argmax",
            "pretrain": {"enabled": False},
        }
    )
    outcome = run_experiment(cfg)
    assert outcome.federation.rounds_done == [2]
    assert 0.0 <= outcome.summary["acc"] <= 1.0 and "nmi" in outcome.summary
    losses = [i["losses"] for i in outcome.federation.upload_log["info"]]
    assert all(math.isfinite(entry["loss"]) for entry in losses)


def test_federated_run_through_the_runtime(ray_session):
    from fedsim.config import build_config
    from fedsim.runner import run_experiment

    cfg = build_config(
        {
            **GIB_SMALL,
            "num_clients": 4,
            "client_ratio": "1:1",
            "mode": "virtual",
            "rounds": 2,
            "eval_every": 0,
            "evaluation": "fmcsc",
            "pretrain": {"enabled": True, "rounds": 0},
        }
    )
    outcome = run_experiment(cfg)
    assert outcome.federation.rounds_done == [2, 2, 2, 2]
    assert 0.0 <= outcome.summary["acc"] <= 1.0
    log = outcome.federation.upload_log
    train = log[log["phase"] == "train"]
    # single-modality clients (the last two) report no modality-pair term and reuse their balls
    for info, cid in zip(train["info"], train["client_id"]):
        if cid >= 2:
            assert info["losses"]["mi_cc"] == 0.0
