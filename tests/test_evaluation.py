"""Tests for fedsim.evaluation (FMCSC protocol and its alternatives)."""

import numpy as np
import pytest

from fedsim.evaluation import (
    argmax_assignments,
    evaluate_fmcsc,
    global_kmeans,
    kmeans_from_centres,
    reference_kmeans,
)

CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])


def _blobs(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated 2-D blobs, classes interleaved so order says nothing."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(3), n_per_class)
    features = CENTRES[labels] + rng.normal(scale=0.5, size=(labels.size, 2))
    return features.astype(np.float32), labels


def test_fmcsc_recovers_separated_blobs_across_clients() -> None:
    clients = [_blobs(10, seed) for seed in range(4)]
    result = evaluate_fmcsc([f for f, _ in clients], [y for _, y in clients], 3, seed=0)
    assert result["acc"] == pytest.approx(1.0)
    assert result["nmi"] == pytest.approx(1.0)
    assert result["ari"] == pytest.approx(1.0)
    assert result["purity"] == pytest.approx(1.0)
    assert result["predictions"].shape == (120,)
    assert result["centres"].shape == (3, 2)


def test_other_clients_keep_the_reference_cluster_ids() -> None:
    # Client 1's points around true centre j must get the id client 0 gave centre j; otherwise the
    # concatenated labelling is inconsistent and ACC over all clients falls.
    features0, labels0 = _blobs(10, 0)
    reference, centres = reference_kmeans(features0, 3, seed=0)
    features1, labels1 = _blobs(10, 1)
    predicted1 = kmeans_from_centres(features1, centres, seed=0)
    for true_class in range(3):
        reference_id = np.unique(reference[labels0 == true_class])
        assert reference_id.size == 1
        assert np.all(predicted1[labels1 == true_class] == reference_id[0])


def test_kmeans_from_centres_falls_back_to_nearest_centre() -> None:
    centres = CENTRES.astype(np.float32)
    features = np.array([[9.0, 1.0], [1.0, 9.0]], dtype=np.float32)  # 2 samples, 3 centres
    assert kmeans_from_centres(features, centres, seed=0).tolist() == [1, 2]


def test_reference_kmeans_needs_enough_samples() -> None:
    with pytest.raises(ValueError, match="fewer than the 3 clusters"):
        reference_kmeans(np.zeros((2, 2)), 3, seed=0)


def test_dimension_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        kmeans_from_centres(np.zeros((5, 3)), CENTRES, seed=0)


def test_seed_makes_kmeans_deterministic() -> None:
    rng = np.random.default_rng(7)
    features = rng.normal(size=(60, 4))  # no structure: the result depends on the initialisation
    first = reference_kmeans(features, 5, seed=3)
    second = reference_kmeans(features, 5, seed=3)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(global_kmeans(features, 5, seed=3), first[0])


def test_collapsed_features_are_quiet(recwarn: pytest.WarningsRecorder) -> None:
    collapsed = np.ones((10, 2))
    labels, centres = reference_kmeans(collapsed, 3, seed=0)
    assert labels.shape == (10,)
    assert kmeans_from_centres(collapsed, centres, seed=0).shape == (10,)
    assert len(recwarn) == 0


def test_argmax_assignments() -> None:
    p = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    assert argmax_assignments(p).tolist() == [1, 0]
    with pytest.raises(ValueError):
        argmax_assignments(np.array([0.1, 0.9]))


def test_evaluate_fmcsc_checks_inputs() -> None:
    features, labels = _blobs(4, 0)
    with pytest.raises(ValueError, match="client 1"):
        evaluate_fmcsc([features, features], [labels, labels[:-1]], 3, seed=0)
    with pytest.raises(ValueError, match="labels"):
        evaluate_fmcsc([features], [labels, labels], 3, seed=0)
