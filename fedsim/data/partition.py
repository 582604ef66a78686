"""Splitting a dataset's samples over clients and choosing each client's modalities.

Client kinds (FMCSC / AFMCC): F clients hold every view, M clients (AFMCC's extension) hold
2..V-1 views, S clients hold one view. As in FMCSC (``shared/papers/PROTOCOLS.md``) the first
clients are the F clients and the last ones the S clients; a client only ever holds its own
samples. FMCSC draws the split and the view choice unseeded; fedsim draws both from ``seed``,
from separate streams, so changing the client ratio leaves the sample split unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedsim.data.rounding import apportion
from fedsim.errors import ConfigError, DataError

KINDS = ("F", "M", "S")
SCHEMES = ("iid", "dirichlet")
MAX_DIRICHLET_TRIES = 1000


@dataclass(frozen=True, eq=False)
class ClientSpec:
    """One client: its sample indices into the dataset (sorted int64) and its views (sorted).

    For the classification task ``indices`` are the client's training samples and
    ``test_indices`` its held-out ones (same modalities); clustering has no test split."""

    client_id: int
    indices: np.ndarray
    views: tuple[int, ...]
    kind: str
    test_indices: np.ndarray | None = None


def parse_client_ratio(ratio: str, n_views: int) -> tuple[int, int, int]:
    """Parse ``"F:S"`` (no M clients) or ``"F:M:S"`` into non-negative (F, M, S) weights.

    M clients hold 2..V-1 views, so a nonzero M weight needs ``n_views >= 3``.
    """
    example = "e.g. '2:1' (F:S) or '1:1:1' (F:M:S)"
    parts = str(ratio).replace(" ", "").split(":")
    if len(parts) not in (2, 3) or not all(part.isascii() and part.isdigit() for part in parts):
        raise ConfigError(f"client_ratio {ratio!r} is not 2 or 3 non-negative integers separated by ':'; {example}")
    weights = [int(part) for part in parts]
    full, mixed, single = (weights[0], 0, weights[1]) if len(weights) == 2 else tuple(weights)
    if full + mixed + single == 0:
        raise ConfigError(f"client_ratio {ratio!r} gives every client kind weight 0; {example}")
    if n_views < 1:
        raise ConfigError(f"a dataset needs at least 1 view, got n_views={n_views}")
    if mixed > 0 and n_views < 3:
        raise ConfigError(
            f"client_ratio {ratio!r} asks for M clients (2..V-1 views) but the dataset has "
            f"{n_views} views; use an F:S ratio such as '{full}:{single or 1}', or a dataset with "
            "3 or more views"
        )
    return full, mixed, single


def client_kind_counts(num_clients: int, ratio: str, n_views: int) -> tuple[int, int, int]:
    """Numbers of F, M and S clients: ``num_clients`` split by the ratio (largest remainder),
    with at least one client of every kind whose weight is nonzero."""
    weights = parse_client_ratio(ratio, n_views)
    needed = sum(weight > 0 for weight in weights)
    if num_clients < needed:
        raise ConfigError(
            f"client_ratio {ratio!r} needs at least {needed} clients (one of each kind with a nonzero "
            f"weight), got num_clients={num_clients}; raise num_clients or drop a kind from the ratio"
        )
    full, mixed, single = (int(count) for count in apportion(num_clients, weights, minimum=1))
    return full, mixed, single


def partition(
    labels: np.ndarray,
    n_views: int,
    num_clients: int,
    client_ratio: str = "1:1",
    *,
    scheme: str = "iid",
    dirichlet_alpha: float = 1.0,
    seed: int = 0,
    min_client_size: int = 2,
) -> list[ClientSpec]:
    """Split the samples over ``num_clients`` clients and assign each client its views.

    ``scheme="iid"`` is the FMCSC protocol (a per-class Dirichlet with alpha 9999, i.e. an equal
    split, PROTOCOLS.md) made exact: disjoint clients covering every sample, sizes N//U or
    N//U+1, class-stratified so class proportions are near-equal on every client.
    ``scheme="dirichlet"`` splits each class by Dirichlet(``dirichlet_alpha``) proportions
    (FedMultimodal-style label skew; 0.1 strong, 5 mild), redrawn until every client has
    ``min_client_size`` samples. Clients 0..F-1 are F clients, then M, then S.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise DataError(f"partition needs a non-empty 1-d label array, got shape {labels.shape}")
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown partition scheme {scheme!r}; one of {', '.join(SCHEMES)}")
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}")
    n_samples = labels.size
    if num_clients * min_client_size > n_samples or num_clients > n_samples:
        raise DataError(
            f"cannot give {num_clients} clients at least {max(min_client_size, 1)} samples each from "
            f"{n_samples} samples; lower num_clients or min_client_size"
        )
    kind_counts = client_kind_counts(num_clients, client_ratio, n_views)
    split_seed, kind_seed = np.random.SeedSequence(seed).spawn(2)
    split_rng = np.random.default_rng(split_seed)
    if scheme == "iid":
        owner = _stratified_owner(labels, num_clients, split_rng)
    else:
        if not dirichlet_alpha > 0:
            raise ConfigError(f"dirichlet_alpha must be > 0, got {dirichlet_alpha}")
        owner = _dirichlet_owner(labels, num_clients, dirichlet_alpha, min_client_size, split_rng)
    client_views = _assign_views(kind_counts, n_views, np.random.default_rng(kind_seed))
    # A stable sort by owner lists each client's samples in increasing index order.
    order = np.argsort(owner, kind="stable")
    client_indices = np.split(order, np.cumsum(np.bincount(owner, minlength=num_clients))[:-1])
    return [
        ClientSpec(client_id=client, indices=indices.astype(np.int64), views=views, kind=kind)
        for client, (indices, (kind, views)) in enumerate(zip(client_indices, client_views, strict=True))
    ]


def _stratified_owner(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> np.ndarray:
    """Owner client of every sample: each class shuffled, classes laid end to end, and the
    sequence dealt round-robin to a random permutation of the clients (so which clients get one
    sample more is random, and every class is spread as evenly as possible)."""
    classes = np.unique(labels)
    dealt = np.concatenate([rng.permutation(np.flatnonzero(labels == label)) for label in classes])
    client_order = rng.permutation(num_clients)
    owner = np.empty(labels.size, dtype=np.int64)
    owner[dealt] = client_order[np.arange(labels.size) % num_clients]
    return owner


def _dirichlet_owner(
    labels: np.ndarray, num_clients: int, alpha: float, min_client_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Owner client of every sample under per-class Dirichlet(alpha) proportions, redrawn until
    every client has at least ``min_client_size`` samples."""
    members = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    owner = np.empty(labels.size, dtype=np.int64)
    for _ in range(MAX_DIRICHLET_TRIES):
        for indices in members:
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * indices.size).astype(np.int64)
            counts = np.diff(np.concatenate(([0], cuts, [indices.size])))
            owner[rng.permutation(indices)] = np.repeat(np.arange(num_clients), counts)
        if np.bincount(owner, minlength=num_clients).min() >= min_client_size:
            return owner
    raise DataError(
        f"dirichlet split (alpha={alpha}) left a client with fewer than {min_client_size} samples "
        f"in {MAX_DIRICHLET_TRIES} draws ({labels.size} samples, {num_clients} clients); raise "
        "dirichlet_alpha, or lower num_clients or min_client_size"
    )


def _assign_views(
    kind_counts: tuple[int, int, int], n_views: int, rng: np.random.Generator
) -> list[tuple[str, tuple[int, ...]]]:
    """(kind, views) per client in client order: F all views; M a subset whose size is uniform
    in 2..V-1, then uniform among subsets of that size; S one uniformly drawn view."""
    full, mixed, single = kind_counts
    assigned: list[tuple[str, tuple[int, ...]]] = [("F", tuple(range(n_views)))] * full
    for _ in range(mixed):
        size = int(rng.integers(2, n_views))
        assigned.append(("M", tuple(sorted(int(v) for v in rng.choice(n_views, size, replace=False)))))
    assigned += [("S", (int(rng.integers(n_views)),)) for _ in range(single)]
    return assigned


def split_train_test(specs: list[ClientSpec], labels: np.ndarray, test_fraction: float, seed: int) -> list[ClientSpec]:
    """Hold out ``test_fraction`` of every client's samples as its test split (FedRecon's
    "dedicated" setting: each client is tested on its own distribution and its own missing
    modalities). Stratified per class where a class has at least two samples on the client;
    seeded per client; at least one training and one test sample per client."""
    out = []
    for spec in specs:
        rng = np.random.default_rng([seed, 0x7E57, spec.client_id])
        test: list[np.ndarray] = []
        client_labels = labels[spec.indices]
        for label in np.unique(client_labels):
            members = spec.indices[client_labels == label]
            if members.size < 2:
                continue
            k = int(round(members.size * test_fraction))
            test.append(rng.permutation(members)[: min(max(k, 0), members.size - 1)])
        held = np.sort(np.concatenate(test)) if test else np.empty(0, dtype=np.int64)
        if held.size == 0 or held.size == spec.indices.size:
            if spec.indices.size < 2:
                raise DataError(
                    f"client {spec.client_id} holds {spec.indices.size} sample(s): it cannot have both a "
                    "training and a test split; use fewer clients"
                )
            held = np.sort(rng.permutation(spec.indices)[:1]) if held.size == 0 else held[:-1]
        train = np.setdiff1d(spec.indices, held, assume_unique=True)
        out.append(replace(spec, indices=train.astype(np.int64), test_indices=held.astype(np.int64)))
    return out
