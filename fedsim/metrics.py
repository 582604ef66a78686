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

Data without labels (a user's own file, ``fedsim.data.datasets.load_user_dataset``) carries the
label ``UNLABELED`` for every sample. ``clustering_metrics`` then returns only label-free scores
of the predicted clustering (``label_free_metrics``), and ACC and purity are NaN: nothing in the
runtime needs to know whether the data had labels.
"""

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

UNLABELED = -1
"""The label of every sample of a dataset without labels."""

LABEL_FREE_METRICS = ("clusters_found", "largest_cluster_share", "cluster_balance")


def is_unlabelled(y_true: ArrayLike) -> bool:
    """Whether ``y_true`` is the labelling of data without labels (every entry ``UNLABELED``)."""
    true = np.asarray(y_true)
    return bool(true.size) and bool(np.all(true == UNLABELED))


def label_free_metrics(y_pred: ArrayLike, n_clusters: int | None = None) -> dict[str, float]:
    """Scores of a clustering that need no labels, keyed as ``LABEL_FREE_METRICS``.

    * ``clusters_found``: how many clusters received at least one sample;
    * ``largest_cluster_share``: the largest cluster's share of the samples (1 = everything in one);
    * ``cluster_balance``: the entropy of the cluster sizes over its maximum, log(n_clusters)
      (``n_clusters`` defaults to the clusters found): 1 = equal sizes, 0 = one cluster.
    """
    pred = np.asarray(y_pred)
    if pred.ndim != 1 or pred.size == 0:
        raise ValueError(f"need a non-empty 1-D labelling, got shape {pred.shape}")
    sizes = np.unique(pred, return_counts=True)[1]
    shares = sizes / sizes.sum()
    k = int(n_clusters) if n_clusters else int(sizes.size)
    entropy = float(-(shares * np.log(shares)).sum())
    return {
        "clusters_found": float(sizes.size),
        "largest_cluster_share": float(shares.max()),
        "cluster_balance": entropy / float(np.log(k)) if k > 1 else 1.0,
    }


def _contingency(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Counts of (true class, predicted cluster) pairs, rows = classes, columns = clusters."""
    true = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if true.ndim != 1 or pred.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shapes {true.shape} (true) and {pred.shape} (predicted)")
    if true.shape != pred.shape:
        raise ValueError(f"{true.size} true labels but {pred.size} predicted labels; they must match")
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
    stay unmatched and their samples count as errors. NaN for data without labels.
    """
    counts = _contingency(y_true, y_pred)
    return float("nan") if is_unlabelled(y_true) else _accuracy(counts)


def purity(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Purity (CMMC): every predicted cluster is labelled with its majority true class. NaN for data
    without labels."""
    counts = _contingency(y_true, y_pred)
    return float("nan") if is_unlabelled(y_true) else _purity(counts)


def clustering_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """ACC, NMI (arithmetic), ARI and purity of a predicted labelling, keyed acc/nmi/ari/purity;
    for data without labels (every true label ``UNLABELED``) the label-free scores instead."""
    true = np.asarray(y_true)
    pred = np.asarray(y_pred)
    counts = _contingency(true, pred)
    if is_unlabelled(true):
        return label_free_metrics(pred)
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
