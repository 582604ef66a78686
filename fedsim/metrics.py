"""Clustering metrics (ACC, NMI, ARI, purity) and the classification task's (accuracy, macro-F1, UAR).

Definitions follow the FMCSC evaluation protocol that AFMCC (Sec. 5, "Clustering results")
says it follows, as recorded in ``PROTOCOLS.md`` (sections FMCSC and CMMC):

* ACC: the best one-to-one matching of predicted clusters to true classes (the Hungarian
  algorithm on the contingency matrix), as a fraction of all samples;
* NMI: scikit-learn's normalised mutual information with arithmetic normalisation (its default);
* ARI: scikit-learn's adjusted Rand index;
* purity (CMMC): every predicted cluster takes its majority true label.

All scores are fractions (ACC, NMI and purity in [0, 1]; ARI at most 1 and slightly negative for
worse-than-chance labellings); the papers print them as percentages.
"""

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def _contingency(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Counts of (true class, predicted cluster) pairs, rows = classes, columns = clusters."""
    true = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if true.ndim != 1 or pred.ndim != 1:
        raise ValueError(
            f"labels must be 1-D, got shapes {true.shape} (true) and {pred.shape} (predicted)"
        )
    if true.shape != pred.shape:
        raise ValueError(
            f"{true.size} true labels but {pred.size} predicted labels; they must match"
        )
    if true.size == 0:
        raise ValueError("cannot score an empty labelling")
    return contingency_matrix(true, pred)


def _accuracy(counts: np.ndarray) -> float:
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def _purity(counts: np.ndarray) -> float:
    return float(counts.max(axis=0).sum() / counts.sum())


def cluster_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Clustering accuracy: the share of samples correct under the best one-to-one relabelling.

    The Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) picks the matching of
    predicted clusters to true classes that maximises the matched counts. With more clusters than
    classes (or fewer) the contingency matrix is rectangular; the surplus clusters (or classes)
    stay unmatched and their samples count as errors.
    """
    return _accuracy(_contingency(y_true, y_pred))


def purity(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Purity (CMMC): every predicted cluster is labelled with its majority true class."""
    return _purity(_contingency(y_true, y_pred))


def clustering_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """ACC, NMI (arithmetic), ARI and purity of a predicted labelling, keyed acc/nmi/ari/purity."""
    true = np.asarray(y_true)
    pred = np.asarray(y_pred)
    counts = _contingency(true, pred)
    return {
        "acc": _accuracy(counts),
        "nmi": float(normalized_mutual_info_score(true, pred)),
        "ari": float(adjusted_rand_score(true, pred)),
        "purity": _purity(counts),
    }


def classification_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """Supervised task (FedRecon, FedMultimodal): accuracy, macro-F1 and unweighted average
    recall (UAR: the mean of the per-class recalls, scikit-learn's ``balanced_accuracy_score``),
    keyed accuracy/macro_f1/uar. Classes absent from ``y_true`` do not enter UAR; macro-F1 counts
    every class seen in either labelling (scikit-learn's default)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    true = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if true.shape != pred.shape or true.ndim != 1 or true.size == 0:
        raise ValueError(f"need two equal-length, non-empty 1-D labellings; got {true.shape} and {pred.shape}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        uar = float(balanced_accuracy_score(true, pred))
    return {
        "accuracy": float(accuracy_score(true, pred)),
        "macro_f1": float(f1_score(true, pred, average="macro", zero_division=0)),
        "uar": uar,
    }
