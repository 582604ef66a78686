"""Granular balls (GIB, ../shared/papers/004_bdfb457f338739bc.txt, Sec. 2.4.1, Eqs. 3-4, Fig. 3;
splitting rule from ../shared/papers/PROTOCOLS.md "Granular balls (GIB)").

One ball starts with all points; while some ball is not retained (retained = Pseudo-Purity > theta
and size < n_th) it is split by k-means seeded with one point per pseudo-label present in it (the
label's mean, ``seeding="centroid"``, or its member nearest that mean, ``"member"``), or, for a
ball split only for its size (one label), by 2-means seeded with two far-apart members; the loop
stops when the ball count stops changing. Centre = mean of the members, radius = mean distance to
the centre (Eq. 3). Pseudo-labels come from scikit-learn k-means.

Cost. All splits of one iteration run as one batched Lloyd k-means (``seeded_lloyd``,
scikit-learn's Lloyd with its stopping rule, checked against ``sklearn.cluster.KMeans`` in
tests/test_gib.py): one scikit-learn call per ball costs 5-40 ms of overhead and an epoch can
split hundreds of balls.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits


@dataclass
class GranularBalls:
    """A cover of n points by balls: ball id per point, and per ball centre, radius, purity, size."""

    assignment: np.ndarray  # (n,) int64 ball id of every point
    centres: np.ndarray  # (B, d)
    radii: np.ndarray  # (B,)
    purity: np.ndarray  # (B,)
    sizes: np.ndarray  # (B,)

    @property
    def n_balls(self) -> int:
        return int(self.sizes.shape[0])


def _fit_predict(model: KMeans, points: np.ndarray) -> np.ndarray:
    # Duplicate points (e.g. a collapsed latent space) make k-means warn; the balls stay valid.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit_predict(points).astype(np.int64)


def pseudo_labels(
    points: np.ndarray, n_clusters: int, seed: int, n_init: int = 1, init: np.ndarray | None = None
) -> np.ndarray:
    """Pseudo-labels of Sec. 2.4.1: scikit-learn k-means (k-means++, ``n_init`` seeded restarts),
    or started from given centres ``init`` (one run).

    Run on one thread: on a shared machine OpenMP's default (all cores) made it ~8x slower, and
    inside a Ray actor one thread is what the client is given anyway."""
    k = max(1, min(n_clusters, points.shape[0]))
    if init is not None and init.shape == (k, points.shape[1]):
        model = KMeans(n_clusters=k, init=init, n_init=1, random_state=seed)
    else:
        model = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed)
    with threadpool_limits(limits=1):
        return _fit_predict(model, points)


def ball_purity(assignment: np.ndarray, labels: np.ndarray, n_balls: int) -> np.ndarray:
    """Eq. 4 for every ball at once: max_i Count(i) / n_j, Count(i) = members with pseudo-label i."""
    counts = np.zeros((n_balls, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (assignment, labels), 1)
    sizes = counts.sum(axis=1)
    return counts.max(axis=1) / np.maximum(sizes, 1)


def ball_centres(points: torch.Tensor, assignment: torch.Tensor, n_balls: int) -> torch.Tensor:
    """Eq. 3, c_j = (1/n_j) sum_{x in GB_j} x, for every ball (differentiable in ``points``)."""
    sums = points.new_zeros(n_balls, points.shape[1]).index_add_(0, assignment, points)
    counts = torch.bincount(assignment, minlength=n_balls).clamp_min(1).to(points.dtype)
    return sums / counts[:, None]


def ball_radii(points: torch.Tensor, assignment: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Eq. 3, r_j = (1/n_j) sum_{x in GB_j} ||x - c_j||_2."""
    n_balls = centres.shape[0]
    distances = torch.linalg.vector_norm(points - centres[assignment], dim=1)
    sums = distances.new_zeros(n_balls).index_add_(0, assignment, distances)
    return sums / torch.bincount(assignment, minlength=n_balls).clamp_min(1).to(points.dtype)


def split_seeds(points: np.ndarray, labels: np.ndarray, seeding: str = "centroid") -> np.ndarray:
    """Initial centres for splitting one ball, one per pseudo-label present: the mean of that
    label's members (``seeding="centroid"``) or the member nearest that mean (``"member"``).
    When the ball holds one label (a split for size): two far-apart members (the farthest from
    the centre, then the farthest from it). A single row means the ball cannot be split."""
    present = np.unique(labels)
    if present.size >= 2:
        seeds = []
        for label in present:
            members = points[labels == label]
            mean = members.mean(axis=0)
            seeds.append(mean if seeding == "centroid" else members[np.argmin(((members - mean) ** 2).sum(axis=1))])
        return np.stack(seeds).astype(points.dtype)
    first = int(np.argmax(((points - points.mean(axis=0)) ** 2).sum(axis=1)))
    second = int(np.argmax(((points - points[first]) ** 2).sum(axis=1)))
    if np.array_equal(points[first], points[second]):
        return points[[first]]
    return points[[first, second]]


def _nearest_centre(
    points: torch.Tensor, group: torch.Tensor, centres: torch.Tensor, k_max: int, invalid: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Index (0..k_max-1) of the nearest of each point's own group's centres."""
    n_slots, dim = centres.shape
    grouped = centres.reshape(-1, k_max, dim)
    sq_centres = (grouped * grouped).sum(dim=2)[group]  # (m, k_max)
    if n_slots <= 256:  # few centres: one BLAS product against all of them
        columns = group[:, None] * k_max + torch.arange(k_max)[None, :]
        cross = (points @ centres.T).gather(1, columns)
    else:
        cross = torch.empty(points.shape[0], k_max, dtype=points.dtype)
        for start in range(0, points.shape[0], chunk):  # bounds the (chunk, k_max, d) gather
            rows = slice(start, start + chunk)
            cross[rows] = torch.einsum("md,mkd->mk", points[rows], grouped[group[rows]])
    # ||x||^2 is the same for all of a point's centres: it does not change the argmin
    return (sq_centres - 2.0 * cross).masked_fill(invalid, float("inf")).argmin(dim=1)


def seeded_lloyd(
    points: torch.Tensor,
    group: torch.Tensor,
    seeds: torch.Tensor,
    valid: torch.Tensor,
    max_iter: int = 300,
    tol: float = 1e-4,
    chunk: int = 2048,
) -> torch.Tensor:
    """Lloyd's k-means from given initial centres, for many balls at once: point i moves only
    among the centres of its own ball ``group[i]``; ``seeds`` (G, k_max, d) holds each ball's
    initial centres, ``valid`` (G, k_max) which of them exist. Returns each point's centre index.

    This is scikit-learn's ``KMeans(init=seeds, n_init=1, tol=tol)`` (Lloyd) on every ball, in
    one batched computation: per ball it stops at strict convergence (no label changed) or when
    the squared centre shift is <= tol x the mean feature variance of the ball's points, followed
    then by a last assignment step, as scikit-learn does. One scikit-learn call per ball costs
    5-40 ms of overhead, which for the hundreds of balls an epoch can split would dominate the
    epoch (tests/test_gib.py checks the two agree). An emptied centre stays where it was
    (scikit-learn relocates it; with centres seeded on members this is rare)."""
    n_groups, k_max, dim = seeds.shape
    centres = seeds.clone().reshape(n_groups * k_max, dim)
    invalid = ~valid[group]
    sizes = torch.bincount(group, minlength=n_groups).clamp_min(1).to(points.dtype)
    means = torch.zeros(n_groups, dim, dtype=points.dtype).index_add_(0, group, points) / sizes[:, None]
    variance = torch.zeros(n_groups, dim, dtype=points.dtype).index_add_(0, group, (points - means[group]) ** 2)
    tolerance = tol * (variance / sizes[:, None]).mean(dim=1)
    labels = torch.full((points.shape[0],), -1, dtype=torch.long)
    active = torch.ones(n_groups, dtype=torch.bool)
    strictly = torch.zeros(n_groups, dtype=torch.bool)  # balls whose labels stopped changing
    for _ in range(max_iter):
        rows = torch.nonzero(active[group]).squeeze(1)  # points of balls still iterating
        g = group[rows]
        new = _nearest_centre(points[rows], g, centres, k_max, invalid[rows], chunk)
        changed = torch.zeros(n_groups, dtype=torch.bool)
        changed[g[new != labels[rows]]] = True
        labels[rows] = new
        slots = g * k_max + new
        sums = torch.zeros_like(centres).index_add_(0, slots, points[rows])
        counts = torch.bincount(slots, minlength=centres.shape[0])
        updated = centres.clone()
        filled = counts > 0
        updated[filled] = sums[filled] / counts[filled, None].to(points.dtype)
        shift = ((updated - centres) ** 2).sum(dim=1).reshape(n_groups, k_max).sum(dim=1)
        centres = updated
        strict = active & ~changed
        strictly |= strict
        by_tolerance = active & changed & (shift <= tolerance)
        active = active & ~strict & ~by_tolerance
        if not bool(active.any()):
            break
    # Balls that stopped without strict convergence take one last assignment to their centres.
    last = torch.nonzero(~strictly[group]).squeeze(1)
    if last.numel():
        labels[last] = _nearest_centre(points[last], group[last], centres, k_max, invalid[last], chunk)
    return labels


def split_ball(points: np.ndarray, labels: np.ndarray, seeding: str = "centroid") -> np.ndarray:
    """Split one ball (see ``split_seeds``, ``seeded_lloyd``): a part id per member; a single
    part means the ball cannot be split."""
    seeds = split_seeds(points, labels, seeding)
    if seeds.shape[0] < 2:
        return np.zeros(points.shape[0], dtype=np.int64)
    group = torch.zeros(points.shape[0], dtype=torch.long)
    valid = torch.ones(1, seeds.shape[0], dtype=torch.bool)
    return seeded_lloyd(torch.from_numpy(points), group, torch.from_numpy(seeds)[None], valid).numpy()


def _split_seeds_of(
    points: np.ndarray, labels: np.ndarray, balls: np.ndarray, members_of: list[np.ndarray], seeding: str
) -> tuple[list[int], list[np.ndarray]]:
    """``split_seeds`` for many balls at once: the balls that can split and their seeds.

    Balls with two or more labels are handled in one vectorised pass (per (ball, label): the
    label's mean, or its nearest member with ties to the lowest index as ``np.argmin`` does);
    single-label balls (splits for size) go through ``split_seeds`` one by one."""
    sizes = np.array([members_of[b].size for b in balls])
    members = np.concatenate([members_of[b] for b in balls]) if len(balls) else np.zeros(0, np.int64)
    row = np.repeat(np.arange(len(balls)), sizes)
    n_labels = int(labels.max()) + 1 if labels.size else 1
    key = row * n_labels + labels[members]
    keys, inverse = np.unique(key, return_inverse=True)
    means = ball_centres(torch.from_numpy(points[members]), torch.from_numpy(inverse), keys.size).numpy()
    if seeding == "centroid":
        seed_points = means  # one per key, in key order
    else:
        distance = ((points[members] - means[inverse]) ** 2).sum(axis=1)
        order = np.lexsort((distance, inverse))  # stable: equal distances keep member order
        first = order[np.r_[True, inverse[order][1:] != inverse[order][:-1]]]  # one per key, key order
        seed_points = points[members[first]]
    labels_per_row = np.bincount(keys // n_labels, minlength=len(balls))
    starts = np.r_[0, np.cumsum(labels_per_row)[:-1]]
    out_balls: list[int] = []
    out_seeds: list[np.ndarray] = []
    for r, ball in enumerate(balls):
        if labels_per_row[r] >= 2:
            ball_seeds = seed_points[starts[r] : starts[r] + labels_per_row[r]]
        elif sizes[r] >= 2:
            ball_seeds = split_seeds(points[members_of[ball]], labels[members_of[ball]], seeding)
        else:
            continue
        if ball_seeds.shape[0] >= 2:
            out_balls.append(int(ball))
            out_seeds.append(ball_seeds)
    return out_balls, out_seeds


def generate_granular_balls(
    points: np.ndarray,
    labels: np.ndarray,
    purity_threshold: float,
    max_size: float,
    max_iterations: int = 100,
    seeding: str = "centroid",
) -> GranularBalls:
    """Fig. 3: start from one ball holding every point; every ball that is not retained
    (retained = purity > ``purity_threshold`` and size < ``max_size``) is split, all of one
    iteration's splits in one batched k-means; repeat until the ball count stops changing (or
    ``max_iterations``). Balls that cannot split are kept as they are. Deterministic."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    points_t = torch.from_numpy(points)
    n = points.shape[0]
    assignment = np.zeros(n, dtype=np.int64)
    n_balls = 1
    final = np.zeros(1, dtype=bool)  # balls that cannot be split any further
    for _ in range(max_iterations):
        sizes = np.bincount(assignment, minlength=n_balls)
        purity = ball_purity(assignment, labels, n_balls)
        to_split = np.flatnonzero(~final & ~((purity > purity_threshold) & (sizes < max_size)))
        if to_split.size == 0:
            break
        order = np.argsort(assignment, kind="stable")
        members_of = np.split(order, np.cumsum(sizes)[:-1])
        balls, seeds = _split_seeds_of(points, labels, to_split, members_of, seeding)
        final[np.setdiff1d(to_split, balls)] = True  # nothing to split them by
        if not balls:
            break
        # One batched k-means per seed count: no padding, so no distance is computed in vain.
        parts_of: dict[int, np.ndarray] = {}
        for k in sorted({s.shape[0] for s in seeds}):
            rows = [i for i, s in enumerate(seeds) if s.shape[0] == k]
            bucket_members = np.concatenate([members_of[balls[i]] for i in rows])
            bucket_group = np.repeat(np.arange(len(rows)), [members_of[balls[i]].size for i in rows])
            bucket_parts = seeded_lloyd(
                points_t[bucket_members],
                torch.from_numpy(bucket_group),
                torch.from_numpy(np.stack([seeds[i] for i in rows])),
                torch.ones(len(rows), k, dtype=torch.bool),
            ).numpy()
            start = 0
            for i in rows:
                size = members_of[balls[i]].size
                parts_of[i] = bucket_parts[start : start + size]
                start += size
        k_max = max(s.shape[0] for s in seeds)
        members = np.concatenate([members_of[b] for b in balls])
        group = np.repeat(np.arange(len(balls)), [members_of[b].size for b in balls])
        parts = np.concatenate([parts_of[i] for i in range(len(balls))])
        # Renumber: within a ball, its first non-empty part keeps the ball's id, the others get
        # new ids at the end, in (ball, part) order.
        key = group * k_max + parts
        used = np.unique(key)
        used_group = used // k_max
        first_of_group = np.r_[True, used_group[1:] != used_group[:-1]]
        new_ids = np.empty(used.size, dtype=np.int64)
        new_ids[first_of_group] = np.asarray(balls)[used_group[first_of_group]]
        added = int((~first_of_group).sum())
        new_ids[~first_of_group] = n_balls + np.arange(added)
        assignment[members] = new_ids[np.searchsorted(used, key)]
        unsplit = np.asarray(balls)[np.bincount(used_group, minlength=len(balls)) < 2]
        final[unsplit] = True  # k-means put every member in one part: cannot split
        if added == 0:
            break
        n_balls += added
        final = np.concatenate([final, np.zeros(added, dtype=bool)])
    sizes = np.bincount(assignment, minlength=n_balls)
    assign_t = torch.from_numpy(assignment)
    centres = ball_centres(points_t, assign_t, n_balls)
    return GranularBalls(
        assignment,
        centres.numpy(),
        ball_radii(points_t, assign_t, centres).numpy(),
        ball_purity(assignment, labels, n_balls),
        sizes,
    )


def batch_ball_centres(h: torch.Tensor, ball_ids: torch.Tensor) -> torch.Tensor:
    """Each sample's ball centre (Eq. 3) over the ball members present in the batch: (B, d)."""
    unique, inverse = torch.unique(ball_ids, return_inverse=True)
    return ball_centres(h, inverse, unique.shape[0])[inverse]
