"""Clustering evaluation protocols (pure numpy / scikit-learn).

The default is the FMCSC protocol that AFMCC follows (AFMCC Sec. 5, "Clustering results";
``PROTOCOLS.md``, section FMCSC): after a round every client embeds its own samples; k-means
(k-means++, several initialisations) on client 0's features gives the reference centres; every
other client runs k-means on its own features started from those centres, so cluster ids agree
across clients without any client sharing its features; the labels of all clients are then
concatenated and scored over all N samples (transductive: there is no held-out test set).

The steps are separate functions because in the Ray runtime they run in different places:
:func:`reference_kmeans` in client 0's actor, :func:`kmeans_from_centres` in every other client's
actor (only the centres travel), the scoring on the driver. :func:`evaluate_fmcsc` runs the whole
protocol in one process. Two alternatives are offered: :func:`global_kmeans` (one k-means on all
embeddings concatenated at the evaluator, which a real federation could not do) and
:func:`argmax_assignments` (the argmax of a soft cluster assignment p, as in CMMC's prediction).

k-means is scikit-learn's ``KMeans`` (Lloyd), seeded through ``random_state`` so that a seed gives
the same labels. Inside Ray actors it runs with the single OpenMP / torch thread each actor is
given, which changes its speed but not its result. Its ``ConvergenceWarning`` ("number of
distinct clusters found smaller than n_clusters") is silenced: collapsed embeddings are a real
outcome of contrastive training (the degeneration of AFMCC Fig. 1), visible in the scores, and
would otherwise print once per client per round.
"""

import warnings
from typing import TypedDict

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from fedsim.metrics import clustering_metrics


class FmcscResult(TypedDict):
    """Scores of one FMCSC evaluation plus what produced them."""

    acc: float
    nmi: float
    ari: float
    purity: float
    predictions: np.ndarray  # (N,) cluster ids, clients concatenated in order
    centres: np.ndarray  # (n_clusters, d) client 0's reference centres


def _as_features(features: np.ndarray) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim != 2:
        raise ValueError(f"features must be a 2-D (samples x dims) array, got shape {array.shape}")
    return array


def _fit_kmeans(features: np.ndarray, model: KMeans) -> KMeans:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(features)


def reference_kmeans(
    features: np.ndarray, n_clusters: int, seed: int, n_init: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ with ``n_init`` restarts on one client's features: (labels, centres).

    FMCSC protocol, first step (run on client 0). Raises ``ValueError`` when the client holds
    fewer samples than clusters, since the reference centres would then be undefined.
    """
    features = _as_features(features)
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be at least 1, got {n_clusters}")
    if features.shape[0] < n_clusters:
        raise ValueError(
            f"the reference client holds {features.shape[0]} samples, fewer than the "
            f"{n_clusters} clusters; give it at least {n_clusters} samples"
        )
    model = KMeans(n_clusters=n_clusters, init="k-means++", n_init=n_init, random_state=seed)
    model = _fit_kmeans(features, model)
    return model.labels_.astype(np.int64), model.cluster_centers_


def kmeans_from_centres(features: np.ndarray, centres: np.ndarray, seed: int) -> np.ndarray:
    """k-means on one client's features started from the reference centres (one initialisation).

    FMCSC protocol, second step (run on every client but client 0); cluster ``j`` here continues
    reference cluster ``j``. A client with fewer samples than centres cannot run k-means; each of
    its samples then takes the id of its nearest reference centre.
    """
    features = _as_features(features)
    centres = _as_features(centres)
    if features.shape[1] != centres.shape[1]:
        raise ValueError(f"features have {features.shape[1]} dimensions but the centres have {centres.shape[1]}")
    if features.shape[0] < centres.shape[0]:
        distances = ((features[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        return distances.argmin(axis=1).astype(np.int64)
    model = KMeans(n_clusters=centres.shape[0], init=centres, n_init=1, random_state=seed)
    return _fit_kmeans(features, model).labels_.astype(np.int64)


def global_kmeans(features: np.ndarray, n_clusters: int, seed: int, n_init: int = 10) -> np.ndarray:
    """Labels of one k-means++ run over all clients' embeddings concatenated at the evaluator.

    An alternative to the FMCSC protocol: it needs every client's features in one place, which a
    real federation would not allow, but it removes the dependence on client 0's sample.
    """
    return reference_kmeans(features, n_clusters, seed, n_init)[0]


def argmax_assignments(probabilities: np.ndarray) -> np.ndarray:
    """Cluster ids as the argmax of soft assignments p (samples x clusters), as CMMC predicts."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] == 0:
        raise ValueError(f"probabilities must be a (samples x clusters) array, got shape {probabilities.shape}")
    return probabilities.argmax(axis=1).astype(np.int64)


def evaluate_fmcsc(
    client_features: list[np.ndarray],
    client_labels: list[np.ndarray],
    n_clusters: int,
    seed: int,
) -> FmcscResult:
    """Run the whole FMCSC protocol in one process and score it over all clients' samples.

    ``client_features[u]`` are client ``u``'s embeddings and ``client_labels[u]`` the true labels
    of the same samples in the same order. Client 0 must hold at least ``n_clusters`` samples.
    """
    if not client_features:
        raise ValueError("no clients to evaluate")
    if len(client_features) != len(client_labels):
        raise ValueError(f"{len(client_features)} clients have features but {len(client_labels)} have labels")
    for client, (features, labels) in enumerate(zip(client_features, client_labels)):
        if len(features) != len(labels):
            raise ValueError(f"client {client} has {len(features)} embedded samples but {len(labels)} labels")
    reference_labels, centres = reference_kmeans(client_features[0], n_clusters, seed)
    predictions = np.concatenate(
        [reference_labels] + [kmeans_from_centres(features, centres, seed) for features in client_features[1:]]
    )
    scores = clustering_metrics(np.concatenate(client_labels), predictions)
    return FmcscResult(
        acc=scores["acc"],
        nmi=scores["nmi"],
        ari=scores["ari"],
        purity=scores["purity"],
        predictions=predictions,
        centres=centres,
    )
