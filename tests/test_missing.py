"""Bernoulli missing modalities (fedsim.data.missing, FedRecon Sec. 5.1 / FedMultimodal protocol):
the realised rate, seeding, at least one modality per client, composition with F/M/S clients,
the test split missing the same modalities, and AFMCC (clustering) running with it."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.config import build_config
from fedsim.data.missing import apply_missing_modalities, realised_missing_rate
from fedsim.data.partition import ClientSpec, partition
from fedsim.errors import ConfigError
from fedsim.runtime.federation_data import load_federation


def _full_clients(n_clients: int, n_views: int) -> list[ClientSpec]:
    return [
        ClientSpec(c, np.arange(3 * c, 3 * c + 3, dtype=np.int64), tuple(range(n_views)), "F") for c in range(n_clients)
    ]


@pytest.mark.parametrize("n_views,rho", [(2, 0.3), (2, 0.7), (5, 0.5)])
def test_realised_rate_matches_bernoulli_with_one_kept(n_views, rho):
    """Each held modality is drawn absent with prob. rho; when all are, one is put back:
    P(a modality is missing) = rho - rho**V / V for a client holding V modalities."""
    specs = _full_clients(4000, n_views)
    out = apply_missing_modalities(specs, n_views, rho, seed=0)
    expected = rho - rho**n_views / n_views
    pairs = 4000 * n_views
    assert realised_missing_rate(specs, out) == pytest.approx(
        expected, abs=4 * np.sqrt(expected * (1 - expected) / pairs)
    )
    # every modality is hit at the same rate (no modality is favoured when one is put back)
    per_view = [np.mean([v not in s.views for s in out]) for v in range(n_views)]
    assert np.allclose(per_view, expected, atol=0.035)


def test_at_least_one_modality_kept_and_only_own_modalities():
    specs = partition(np.arange(600) % 3, n_views=4, num_clients=60, client_ratio="1:1:1", seed=3)
    out = apply_missing_modalities(specs, 4, 0.95, seed=1)
    for before, after in zip(specs, out):
        assert 1 <= len(after.views) and set(after.views) <= set(before.views)
        assert after.views == tuple(sorted(after.views))
        assert np.array_equal(after.indices, before.indices) and after.client_id == before.client_id
        assert after.kind == ("F" if len(after.views) == 4 else "S" if len(after.views) == 1 else "M")
    assert sum(len(s.views) == 1 for s in out) > 50  # at rho 0.95 nearly every client is down to one


def test_seeded_nested_and_rho_zero_is_a_no_op():
    specs = _full_clients(200, 3)
    a = apply_missing_modalities(specs, 3, 0.5, seed=7)
    b = apply_missing_modalities(specs, 3, 0.5, seed=7)
    c = apply_missing_modalities(specs, 3, 0.5, seed=8)
    assert [s.views for s in a] == [s.views for s in b]
    assert [s.views for s in a] != [s.views for s in c]
    # a modality missing at a lower rate is missing at every higher rate (same seed)
    low = apply_missing_modalities(specs, 3, 0.3, seed=7)
    high = apply_missing_modalities(specs, 3, 0.8, seed=7)
    for lo, mid, hi in zip(low, a, high):
        assert set(hi.views) <= set(mid.views) <= set(lo.views)
    assert [s.views for s in apply_missing_modalities(specs, 3, 0.0, seed=7)] == [s.views for s in specs]


def test_bad_rate_is_a_config_error():
    with pytest.raises(ConfigError, match="missing_rate"):
        apply_missing_modalities(_full_clients(2, 2), 2, 1.0, seed=0)
    with pytest.raises(ConfigError, match="missing_rate"):
        apply_missing_modalities(_full_clients(2, 2), 2, -0.1, seed=0)


RAW = {
    "dataset": "synthetic",
    "synthetic": {"view_dims": [6, 7, 8], "n_clusters": 3, "n_samples": 300},
    "num_clients": 12,
    "client_ratio": "1:1:1",
}


def test_federation_draw_composes_with_fms_and_leaves_the_split_alone():
    plain = load_federation(build_config(RAW))[1]
    missing = load_federation(build_config(RAW, ["missing_rate=0.6"]))[1]
    again = load_federation(build_config(RAW, ["missing_rate=0.6"]))[1]
    assert [s.views for s in missing] == [s.views for s in again]
    assert any(len(m.views) < len(p.views) for p, m in zip(plain, missing))
    for p, m in zip(plain, missing):
        assert set(m.views) <= set(p.views) and m.views
        assert np.array_equal(p.indices, m.indices)  # the sample split does not move


def test_classification_test_split_misses_the_same_modalities():
    specs = load_federation(build_config(RAW, ["missing_rate=0.6", "task=classification", "method=fedavg"]))[1]
    plain = load_federation(build_config(RAW, ["missing_rate=0.6"]))[1]
    for s, p in zip(specs, plain):
        assert s.views == p.views and s.test_indices is not None and s.test_indices.size >= 1
        assert not set(s.test_indices) & set(s.indices)


def test_afmcc_clustering_runs_with_missing_modalities(ray_session, small_config):
    """Deliverable 3: the Bernoulli option also serves the clustering methods."""
    from fedsim.runner import run_experiment

    cfg = small_config(
        "missing_rate=0.5",
        "client_ratio=1:0",
        "mode=sync",
        "pretrain.enabled=false",
        "rounds=2",
        "eval_every=0",
        "evaluation=global_kmeans",
    )
    expected = [s.views for s in load_federation(cfg)[1]]
    assert any(len(v) < 3 for v in expected)  # the draw really removed modalities
    out = run_experiment(cfg)
    summary, federation = out.summary, out.federation
    assert [tuple(v) for v in summary["federation"]["client_modalities"]] == expected
    assert 0.0 <= summary["acc"] <= 1.0 and {"nmi", "ari"} <= set(summary)
    log = federation.upload_log
    assert len(log[log["phase"] == "train"]) == 4 * 2
    assert all(np.isfinite(i["losses"]["loss"]) for i in log["info"])
