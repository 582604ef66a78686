"""Tests for fedsim.metrics against hand computations."""

import numpy as np
import pytest

from fedsim.metrics import cluster_accuracy, clustering_metrics, purity


def test_permuted_labelling_is_perfect() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([5, 5, 3, 3, 9, 9, 9])  # a relabelling of y_true
    scores = clustering_metrics(y_true, y_pred)
    assert scores == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0, "purity": 1.0})


def test_hand_computed_accuracy_and_purity() -> None:
    # contingency (rows = true 0,1; columns = predicted 0,1,2):
    #   true 0: [3, 1, 0]
    #   true 1: [0, 2, 2]
    # Best one-to-one matching: 0->0 (3) and 1->1 or 2 (2): ACC = 5/8.
    # Purity: column maxima 3 + 2 + 2 = 7: 7/8.
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(5 / 8)
    assert purity(y_true, y_pred) == pytest.approx(7 / 8)


def test_accuracy_uses_best_matching_not_greedy() -> None:
    y_true = np.array([0] * 7 + [1] * 3)
    y_pred = np.array([0] * 4 + [1] * 3 + [0] * 3)
    # contingency: true 0: [4, 3]; true 1: [3, 0]. Greedy (largest cell first) would take
    # 4 + 0 = 4; the optimal matching true 0 -> pred 1, true 1 -> pred 0 takes 3 + 3 = 6.
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(6 / 10)


def test_more_clusters_than_classes() -> None:
    # Every cluster is pure, but only two of the four clusters can be matched to the two classes.
    y_true = np.array([0, 0, 0, 1, 1, 1])
    y_pred = np.array([0, 0, 1, 2, 2, 3])
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    assert purity(y_true, y_pred) == pytest.approx(1.0)


def test_fewer_clusters_than_classes() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 0, 1, 1])
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    assert purity(y_true, y_pred) == pytest.approx(4 / 6)


def test_nmi_and_ari_match_hand_values() -> None:
    # One cluster for two balanced classes carries no information: NMI 0, ARI 0.
    scores = clustering_metrics([0, 0, 1, 1], [0, 0, 0, 0])
    assert scores["nmi"] == pytest.approx(0.0)
    assert scores["ari"] == pytest.approx(0.0)
    assert scores["acc"] == pytest.approx(0.5)
    assert all(isinstance(value, float) for value in scores.values())


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [([0, 1, 2], [0, 1]), ([], []), ([[0, 1]], [[0, 1]])],
)
def test_bad_shapes_raise(y_true: list, y_pred: list) -> None:
    with pytest.raises(ValueError):
        clustering_metrics(y_true, y_pred)


def test_classification_metrics_match_hand_counts():
    from fedsim.metrics import classification_metrics

    true = [0, 0, 0, 0, 1, 1, 2, 2]
    pred = [0, 0, 0, 1, 1, 0, 2, 1]
    m = classification_metrics(true, pred)
    assert m["accuracy"] == pytest.approx(5 / 8)
    # recalls 3/4, 1/2, 1/2 -> UAR 7/12; F1 per class: 2*3/(4+4)=0.75, 2*1/(2+3)=0.4, 2*1/(2+1)=2/3
    assert m["uar"] == pytest.approx((3 / 4 + 1 / 2 + 1 / 2) / 3)
    assert m["macro_f1"] == pytest.approx((0.75 + 0.4 + 2 / 3) / 3)
