"""The k-means bar (fedsim.baselines): MinMax per view, concatenated, scikit-learn k-means."""

from __future__ import annotations

import numpy as np

from fedsim.baselines import concatenated_minmax, kmeans_baseline, main


def test_concatenated_minmax_scales_each_feature_to_unit_range():
    a = np.array([[0.0, 5.0], [10.0, 5.0], [5.0, 5.0]])
    b = np.array([[-1.0], [1.0], [0.0]])
    x = concatenated_minmax((a, b))
    assert x.shape == (3, 3)
    assert np.allclose(x[:, 0], [0, 1, 0.5]) and np.allclose(x[:, 1], 0) and np.allclose(x[:, 2], [0, 1, 0.5])


def test_kmeans_baseline_is_seeded_and_scores(capsys):
    runs = kmeans_baseline("synthetic", [0, 1])
    assert len(runs) == 2 and all(0.0 <= r["acc"] <= 1.0 for r in runs)
    assert kmeans_baseline("synthetic", [0]) == runs[:1]
    assert main(["synthetic", "--seeds", "0"]) == 0
    assert "synthetic: k-means on concatenated MinMax views" in capsys.readouterr().out
