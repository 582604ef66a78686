"""GIB: Granular Information Bottleneck for deep multi-modal clustering.

Paper: ../shared/papers/004_bdfb457f338739bc.txt (Sec. 2.3-2.7, Eqs. 2-10, App. A.4-A.6,
Tables 1-2, Fig. 4). What the paper leaves out is taken from ../shared/papers/PROTOCOLS.md,
sections "DDC loss" and "Granular balls (GIB)". The DDC head and loss are shared with MSDIB and
live in ``fedsim.methods.ddc``.

What is implemented, equation by equation:

- Sec. 3.1 "Backbones": per modality an MLP Input-512-512-256, ReLU after every layer. Theorem 2
  makes it a variational IB encoder: the 256-d output is the mean mu(x) and a parallel linear
  head (from the 512-d trunk) gives log sigma^2; in training h = mu + sigma * theta,
  theta ~ N(0, I) (reparameterisation, App. A.3 / Eq. 22); in evaluation h = mu.
- App. A.6, Eq. 27: fused representation S = sum_i w^i H^i; w^i = softmax of one learnable
  logit per modality, all logits 0 at the start, so w^i = 1/m initially and sum_i w^i = 1
  always, updated by back-propagation through the clustering objective.
- Sec. 2.4.1: granular balls in latent space, per modality and for the fused representation:
  pseudo-labels from k-means with k = the number of clusters; Pseudo-Purity (Eq. 4); a ball is
  kept when its purity > theta and its size < n_th, else it is split; centre = mean of its
  points, radius = mean distance to the centre (Eq. 3). See "Granular balls" below.
- Eq. 5: L_Balls = alpha sum_{i<j} I(C^i, C^j) - beta sum_i I(C^i, C^s).
- Eq. 6: L_Samples = alpha {sum_i I(X^i, H^i) + sum_{i<j} I(Y^i, Y^j)} - beta sum_i I(Y^i, Y^s).
- Eq. 7: L_DDC, the DDC loss (``fedsim.methods.ddc.ddc_loss``) on the fused assignment Y^s.
- Eq. 2: L_Total = L_Balls + L_Samples + L_DDC.
- Eqs. 10 / 24-26 (Proposition 1): I(A, B) between two batches of non-negative vectors:
  P = sum_n a_n b_n^T, symmetrised (P + P^T) / 2, normalised to sum 1, marginals the row and
  column sums, I = sum P log(P / (p_a p_b)).
- Theorem 2 / Eq. 23: I(X^i, H^i) ~ (1/M) sum_n KL[. || q], q uniform with sum_n q = M/k
  (which KL: see ``compression`` below).
- Fig. 1 and Sec. 2.5 ("we cluster the granular balls and then map the results back to the
  samples"): the ball structures are processed by the (one, shared) DDC module, Y^i = DDC(C^i)
  and Y^s = DDC(C^s), every sample carrying the centre of its ball.
- Sec. 3.1: Adam, learning rate 1e-4, batch 256, 100 epochs, theta = 0.9, n_th = 1.0.
- Table 2 ablations: ``use_balls`` and ``use_samples`` (L_DDC is always on).

Granular balls (Sec. 2.4.1, Fig. 3; splitting rule from PROTOCOLS.md). One ball starts with all
points; while some ball is not retained it is split by k-means seeded with one point per
pseudo-label present in it, or, for a ball split only for its size (one label), by 2-means
seeded with two far-apart members; the loop stops when the ball count stops changing. They are
rebuilt once per epoch (= round) from the current latents mu of the client's own samples; the
paper's Alg. 1 generates them inside its training loop without saying how often. In a
mini-batch the centre of a ball is the mean of that ball's members in the batch (so L_Balls has
gradients); ball membership is fixed for the epoch.

Cost. Generation is vectorised: all splits of one iteration run as one batched Lloyd k-means
(``seeded_lloyd``, scikit-learn's Lloyd with its stopping rule, checked against
``sklearn.cluster.KMeans`` in the tests; one scikit-learn call per ball costs 5-40 ms of
overhead and an epoch can split hundreds of balls), grouped by seed count so no distance is
computed in vain; the pseudo-label k-means is scikit-learn's, one thread, ``kmeans_n_init`` = 1 restart, and
with ``warm_start`` (default) it starts from the previous round's pseudo-label centres of the
same space (k-means++ in the first round; an actor restart loses this state and simply starts
cold). ``self.timing`` holds the last round's seconds (latents, pseudo-labels, splitting, round).
Measured with the defaults (one torch thread, a 2-core machine shared with other jobs, load
7-13): balls took 33% of the epoch on scene15 (2.4 s of 7.2 s, mean of 8 epochs) and 39% on
hdigit (5.3 s of 13.8 s, 5 epochs), mostly the latents' forward pass and the pseudo-label
k-means; the splitting itself took 0.35 s / 0.56 s.

Where the paper is ambiguous or looks wrong, the printed version is the default and the
alternative is a switch:

- alpha and beta: the paper gives no values, only alpha, beta in (0, 1) and the Fig. 4 grid
  0..1 in steps of 0.1; the default 0.5 / 0.5 is ours (see tune/grids/gib/alpha_beta.yaml).
- n_th = 1.0 "maximum sample number threshold": a count of 1 would make every ball a single
  point, which Sec. 1 criticises, so it is read as a fraction of the client's samples
  (``max_ball_fraction``; 1.0 = the whole data set, so only the initial ball splits for size).
- Retention as printed: purity > theta and size < n_th (PROTOCOLS.md words it "split while
  purity < theta or size exceeds the cap"; the two differ only at equality).
- "One point per label" (PROTOCOLS.md) seeds a split: ``split_seeding="centroid"`` (default)
  takes the mean of the label's members in the ball, ``"member"`` the member nearest that
  mean. With "member" every epoch's first split (the whole data set, k seeds) is a second full
  k-means that lands on another local optimum than the pseudo-labels; their disagreement makes
  impure balls and hundreds of further splits. Measured on scene15 / hdigit (one thread, shared
  machine), "member" spent 48% / 60% of the epoch generating balls. With "centroid" the first
  split starts at the pseudo-label k-means' own fixed point and returns the pseudo-label
  clusters, so with n_th = the whole data set the balls are the k pseudo-label clusters and
  only a size cap (``max_ball_fraction`` < 1) splits further.
- "Weighted K-Means": the weights are never defined; pseudo-labels come from unweighted
  scikit-learn k-means (``kmeans_n_init`` restarts, seeded).
- Eq. 24 multiplies raw vectors, which is a probability only for non-negative entries; latents
  h = mu + sigma * theta can be negative, so ball centres are mapped by ``feature_map``:
  ``"relu"`` (default, the printed product on the non-negative part) or ``"softmax"`` over the
  feature dimension (cub, seed 0, 100 epochs, method called directly: ACC / NMI of Y^s 0.50 /
  0.59 with relu, 0.60 / 0.64 with softmax; one seed, not a tuned choice).
- Theorem 2 / Eq. 23 cannot be printed-as-is: it takes the KL of a Gaussian posterior
  p(. | h) = N(mu, sigma^2) against a q that is "uniformly distributed to enforce balanced
  cluster assignments", sum_i q(x_i) = M/k, a distribution over the k clusters. Two readings:
  ``compression="balanced"`` (default) keeps the printed q and its constraint ("each cluster
  receives M/k of the assignment mass"): KL(mean_n y_n^i || uniform(1/k)) on modality i's
  assignments; the encoder keeps its reparameterised noise. ``compression="vib"`` keeps the
  Gaussian and replaces q by N(0, I): KL(N(mu, sigma^2) || N(0, I)) summed over the 256
  dimensions and averaged over samples (the usual variational IB). On scene15 with alpha = 0.5
  the vib term pulled the latents to the prior within three epochs (ACC of Y^s 0.26 -> 0.12,
  measured), which is why it is not the default.
- Which assignments the DDC module sees: ``assignments_from="balls"`` (default, Fig. 1 / Sec.
  2.5) or ``"samples"`` (DDC on every sample's own latent, as in MSDIB). On cub (seed 0, 100
  epochs) "samples" collapsed every sample into one cluster within 40 epochs.
- Eq. 7 prints one assignment matrix A: ``ddc_on="fused"`` (default, Y^s, the clustering result)
  or ``"all"`` (Y^s and every Y^i).
- Fusion weights: ``fusion_weights="learned"`` (App. A.6) or ``"fixed"`` (1/m, not learned).
- Eq. 6 minimises I(Y^i, Y^j) (assignment agreement between modalities) and Eq. 5 minimises
  I(C^i, C^j); both are kept as printed.

Evaluation: ``embed`` gives the fused mean S(mu); ``soft_assignments`` gives Y^s (with
``assignments_from="balls"`` the balls are built on S(mu) with a fixed seed and each sample gets
the DDC assignment of its ball's centre); ``selection_loss`` is DDC1 of those assignments (the
label-free model-selection score, PROTOCOLS.md "DDC loss"). The DDC head's BatchNorm running
statistics are buffers, which the runtime never ships (it evaluates a fresh model loaded from
the flat parameter vector), so evaluation normalises with the statistics of the client's whole
data instead of running averages.

Federated use (no paper offers it). Each client runs GIB as its local learner for one epoch per
round; ``aggregate`` is the modality-aware FedAvg of ``fedsim.methods.base``: a modality's
encoder (trunk, mean and log-variance heads) and its fusion logit are averaged, weighted by
sample count, over the clients that hold that modality only; the DDC head is averaged over
every client; BatchNorm running statistics are buffers and stay local. Balls are built from the
client's own latent points only and are never shared; no sample, latent or ball leaves the
client. A client holding a subset of modalities fuses, pairs and balls over its own modalities
only (softmax over its own fusion logits). A single-modality client's fused representation is
its one modality, so I(C^i, C^s) and I(Y^i, Y^s) become entropies H(C^i), H(Y^i) and there is no
pair term; its fusion logit then gets no gradient and carries the federation's average.
"""

from __future__ import annotations

import itertools
import time
import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits
from torch import nn

from fedsim.methods.base import LocalData, PeerModel, RoundContext, RoundLosses, modality_aware_average
from fedsim.methods.ddc import DDCHead, ddc_loss

FUSED = "fused"  # key of the fused representation S beside the modality indices
EPSILON = 1e-10


class GIBConfig(BaseModel):
    """GIB hyper-parameters; defaults are Sec. 3.1's (alpha and beta: see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    hidden: list[int] = Field(default_factory=lambda: [512, 512], description="encoder trunk widths")
    latent_dim: int = Field(256, ge=1, description="output width of the encoder (Sec. 3.1)")
    ddc_hidden: int = Field(100, ge=1, description="hidden width of the DDC head")
    alpha: float = Field(0.5, ge=0, description="compression weight of Eqs. 5-6 (not given in the paper)")
    beta: float = Field(0.5, ge=0, description="preservation weight of Eqs. 5-6 (not given in the paper)")
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(256, ge=2)
    purity_threshold: float = Field(0.9, gt=0, le=1, description="theta of Sec. 2.4.1")
    max_ball_fraction: float = Field(1.0, gt=0, le=1, description="n_th as a fraction of the client's samples")
    pseudo_label_clusters: int | None = Field(None, ge=1, description="k of Eq. 4; None = number of clusters")
    kmeans_n_init: int = Field(1, ge=1, description="restarts of the pseudo-label k-means per space and epoch")
    warm_start: bool = Field(True, description="start each round's pseudo-label k-means from the last round's centres")
    max_split_iterations: int = Field(100, ge=1)
    split_seeding: Literal["centroid", "member"] = "centroid"
    use_balls: bool = True  # False: Table 2 rows (1) and (3)
    use_samples: bool = True  # False: Table 2 rows (1) and (2)
    feature_map: Literal["relu", "softmax"] = "relu"
    compression: Literal["balanced", "vib"] = "balanced"
    assignments_from: Literal["balls", "samples"] = "balls"
    ddc_on: Literal["fused", "all"] = "fused"
    fusion_weights: Literal["learned", "fixed"] = "learned"
    eval_seed: int = Field(0, ge=0, description="seed of the balls built for evaluation")
    selection_batch: int = Field(2048, ge=2, description="chunk size of DDC1 in selection_loss")


# ---------------------------------------------------------------------------------------------
# Granular balls (Sec. 2.4.1, Eqs. 3-4, Fig. 3)


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


def pseudo_labels(points: np.ndarray, n_clusters: int, seed: int, n_init: int = 1,
                  init: np.ndarray | None = None) -> np.ndarray:
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


def _nearest_centre(points: torch.Tensor, group: torch.Tensor, centres: torch.Tensor, k_max: int,
                    invalid: torch.Tensor, chunk: int) -> torch.Tensor:
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


def seeded_lloyd(points: torch.Tensor, group: torch.Tensor, seeds: torch.Tensor, valid: torch.Tensor,
                 max_iter: int = 300, tol: float = 1e-4, chunk: int = 2048) -> torch.Tensor:
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


def _split_seeds_of(points: np.ndarray, labels: np.ndarray, balls: np.ndarray, members_of: list[np.ndarray],
                    seeding: str) -> tuple[list[int], list[np.ndarray]]:
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


def generate_granular_balls(points: np.ndarray, labels: np.ndarray, purity_threshold: float,
                            max_size: float, max_iterations: int = 100, seeding: str = "centroid") -> GranularBalls:
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
            bucket_parts = seeded_lloyd(points_t[bucket_members], torch.from_numpy(bucket_group),
                                        torch.from_numpy(np.stack([seeds[i] for i in rows])),
                                        torch.ones(len(rows), k, dtype=torch.bool)).numpy()
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
    return GranularBalls(assignment, centres.numpy(), ball_radii(points_t, assign_t, centres).numpy(),
                         ball_purity(assignment, labels, n_balls), sizes)


def batch_ball_centres(h: torch.Tensor, ball_ids: torch.Tensor) -> torch.Tensor:
    """Each sample's ball centre (Eq. 3) over the ball members present in the batch: (B, d)."""
    unique, inverse = torch.unique(ball_ids, return_inverse=True)
    return ball_centres(h, inverse, unique.shape[0])[inverse]


# ---------------------------------------------------------------------------------------------
# Losses (module-level so the tests can check them against hand computations)


def mutual_information(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Proposition 1, Eqs. 24-26: I(A, B) for batches of non-negative vectors a_n, b_n (n, D).

    P = sum_n a_n b_n^T; P = (P + P^T) / 2; P = P / sum P; I = sum_ij P_ij log(P_ij / (p_i p_j))
    with p_i = sum_j P_ij, p_j = sum_i P_ij."""
    p = a.T @ b
    p = (p + p.T) / 2
    p = p / p.sum().clamp_min(EPSILON)
    p_row = p.sum(dim=1, keepdim=True)
    p_col = p.sum(dim=0, keepdim=True)
    p = p.clamp_min(EPSILON)
    return (p * (torch.log(p) - torch.log(p_row.clamp_min(EPSILON)) - torch.log(p_col.clamp_min(EPSILON)))).sum()


def map_features(c: torch.Tensor, feature_map: str = "relu") -> torch.Tensor:
    """Non-negative version of ball centres for Eq. 24 (see the module docstring)."""
    if feature_map == "softmax":
        return torch.softmax(c, dim=1)
    return torch.relu(c)


def vib_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Theorem 2 / Eq. 23 with q = N(0, I): (1/M) sum_n KL(N(mu_n, sigma_n^2) || N(0, I))
    = (1/M) sum_n 1/2 sum_d (mu^2 + sigma^2 - log sigma^2 - 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(dim=1).mean()


def balanced_kl(assignments: torch.Tensor) -> torch.Tensor:
    """Eq. 23's constraint sum_n q = M/k read on the assignments: KL(mean_n y_n || uniform(1/k))."""
    k = assignments.shape[1]
    mean = assignments.mean(dim=0).clamp_min(EPSILON)
    return (mean * (torch.log(mean) + np.log(k))).sum()


def fuse(h: dict[int, torch.Tensor], weights: torch.Tensor, modalities: tuple[int, ...]) -> torch.Tensor:
    """App. A.6, Eq. 27: S = sum_i w^i H^i over ``modalities`` (weights in the same order)."""
    return sum(w * h[v] for w, v in zip(weights, modalities))


def balls_loss(centres: dict[int, torch.Tensor], fused_centres: torch.Tensor, alpha: float, beta: float,
               feature_map: str = "relu") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 5: alpha sum_{i<j} I(C^i, C^j) - beta sum_i I(C^i, C^s) on mapped centres."""
    mapped = {v: map_features(c, feature_map) for v, c in centres.items()}
    fused = map_features(fused_centres, feature_map)
    zero = fused_centres.new_zeros(())
    mi_pairs = sum((mutual_information(mapped[i], mapped[j]) for i, j in itertools.combinations(sorted(mapped), 2)), zero)
    mi_fused = sum((mutual_information(mapped[i], fused) for i in sorted(mapped)), zero)
    return alpha * mi_pairs - beta * mi_fused, {"mi_cc": mi_pairs, "mi_cs": mi_fused}


def samples_loss(compression: dict[int, torch.Tensor], assignments: dict[int, torch.Tensor], fused_assignments: torch.Tensor,
                 alpha: float, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 6: alpha {sum_i I(X^i, H^i) + sum_{i<j} I(Y^i, Y^j)} - beta sum_i I(Y^i, Y^s);
    ``compression[i]`` is the estimate of I(X^i, H^i) (Theorem 2)."""
    zero = fused_assignments.new_zeros(())
    comp = sum((compression[v] for v in sorted(compression)), zero)
    mi_pairs = sum((mutual_information(assignments[i], assignments[j])
                    for i, j in itertools.combinations(sorted(assignments), 2)), zero)
    mi_fused = sum((mutual_information(assignments[i], fused_assignments) for i in sorted(assignments)), zero)
    return alpha * (comp + mi_pairs) - beta * mi_fused, {"compression": comp, "mi_yy": mi_pairs, "mi_ys": mi_fused}


def ddc_batch_statistics(head: DDCHead, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``head(x)`` with BatchNorm normalising by the statistics of ``x`` and never touching the
    running buffers (evaluation: see the module docstring)."""
    linear, activation, norm = head.hidden
    hidden = F.batch_norm(activation(linear(x)), None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
    return torch.softmax(head.output(hidden), dim=1), hidden


# ---------------------------------------------------------------------------------------------
# The model


class VariationalEncoder(nn.Module):
    """Input-512-512-256 with ReLU (Sec. 3.1) as the mean; a log-variance head (Theorem 2)."""

    def __init__(self, in_dim: int, hidden: list[int], latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise([in_dim, *hidden]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        width = hidden[-1] if hidden else in_dim
        self.mean = nn.Sequential(nn.Linear(width, latent_dim), nn.ReLU())
        self.logvar = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.trunk(x)
        return self.mean(t), self.logvar(t)


class GIBNetwork(nn.Module):
    """One variational encoder and one fusion logit per modality, one shared DDC head (Fig. 1)."""

    def __init__(self, view_dims: tuple[int, ...], hidden: list[int], latent_dim: int, n_clusters: int,
                 ddc_hidden: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(VariationalEncoder(d, hidden, latent_dim) for d in view_dims)
        self.fusion_logits = nn.ParameterList(nn.Parameter(torch.zeros(())) for _ in view_dims)
        self.ddc = DDCHead(latent_dim, n_clusters, ddc_hidden)

    def fusion_weights(self, modalities: tuple[int, ...], learned: bool = True) -> torch.Tensor:
        """App. A.6: w = softmax of the modalities' logits (1/m at the start, sum 1)."""
        logits = torch.stack([self.fusion_logits[v] for v in modalities])
        if not learned:
            return torch.full_like(logits, 1.0 / len(modalities)).detach()
        return torch.softmax(logits, dim=0)


# ---------------------------------------------------------------------------------------------
# The method


class GIB:
    """GIB on the fedsim method protocol (see ``fedsim.methods.base.Method``)."""

    name: ClassVar[str] = "gib"
    Config: ClassVar[type[BaseModel]] = GIBConfig

    def __init__(self, config: GIBConfig, view_dims: tuple[int, ...], n_clusters: int, num_clients: int) -> None:
        self.cfg = config
        self.view_dims = tuple(view_dims)
        self.n_clusters = n_clusters
        self.num_clients = num_clients
        # Last round's seconds: on balls (latents + pseudo-labels + splitting) and in total.
        self.timing: dict[str, float] = {}
        self._pseudo_centres: dict[int | str, np.ndarray] = {}  # warm start of the next round
        self._clock: dict[str, float] = {}

    # -- model ---------------------------------------------------------------------------------
    def build_model(self, seed: int) -> GIBNetwork:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return GIBNetwork(self.view_dims, list(self.cfg.hidden), self.cfg.latent_dim, self.n_clusters,
                              self.cfg.ddc_hidden)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.cfg.lr)

    @staticmethod
    def modality_of(name: str) -> int | None:
        """A modality's encoder and fusion logit belong to it; the DDC head is shared."""
        parts = name.split(".")
        return int(parts[1]) if parts[0] in ("encoders", "fusion_logits") else None

    @torch.no_grad()
    def aggregate(self, model: GIBNetwork, data: LocalData, peers: list[PeerModel]) -> tuple[torch.Tensor, dict[int, float]]:
        """Modality-aware FedAvg (``fedsim.methods.base.modality_aware_average``)."""
        return modality_aware_average(model, peers, self.modality_of)

    # -- granular balls --------------------------------------------------------------------------
    def _pseudo_k(self) -> int:
        return self.cfg.pseudo_label_clusters or self.n_clusters

    def build_balls(self, points: np.ndarray, seed: int, space: int | str | None = None) -> GranularBalls:
        """Pseudo-labels, then balls (Sec. 2.4.1), on one latent space of the client's samples.
        With ``warm_start`` and a ``space`` seen before, the pseudo-label k-means starts from that
        space's pseudo-label centres of the previous round (fewer Lloyd iterations)."""
        started = time.perf_counter()
        init = self._pseudo_centres.get(space) if self.cfg.warm_start and space is not None else None
        labels = pseudo_labels(points, self._pseudo_k(), seed, self.cfg.kmeans_n_init, init)
        if space is not None:
            k = int(labels.max()) + 1
            self._pseudo_centres[space] = ball_centres(torch.from_numpy(points), torch.from_numpy(labels), k).numpy()
        labelled = time.perf_counter()
        max_size = self.cfg.max_ball_fraction * points.shape[0]
        balls = generate_granular_balls(points, labels, self.cfg.purity_threshold, max_size,
                                        self.cfg.max_split_iterations, self.cfg.split_seeding)
        self._clock["pseudo_labels_s"] = self._clock.get("pseudo_labels_s", 0.0) + labelled - started
        self._clock["splitting_s"] = self._clock.get("splitting_s", 0.0) + time.perf_counter() - labelled
        return balls

    @torch.no_grad()
    def _latent_means(self, model: GIBNetwork, views: dict[int, torch.Tensor]) -> dict[int | str, torch.Tensor]:
        mods = tuple(sorted(views))
        mu = {v: model.encoders[v](views[v])[0] for v in mods}
        weights = model.fusion_weights(mods, self.cfg.fusion_weights == "learned")
        return {**mu, FUSED: fuse(mu, weights, mods)}

    def balls_per_space(self, model: GIBNetwork, data: LocalData, seed: int) -> dict[int | str, GranularBalls]:
        """Balls of every local modality and of the fused representation, from the current means.
        With one modality the fused space is that modality's (w = 1): its balls are reused."""
        started = time.perf_counter()
        spaces = self._latent_means(model, data.views)
        self._clock = {"latents_s": time.perf_counter() - started}
        out: dict[int | str, GranularBalls] = {}
        for index, (key, z) in enumerate(spaces.items()):
            if key == FUSED and len(data.modalities) == 1:
                out[key] = out[data.modalities[0]]
                continue
            out[key] = self.build_balls(z.detach().cpu().float().numpy(), seed + index, key)
        return out

    # -- the loss ---------------------------------------------------------------------------------
    def loss(self, model: GIBNetwork, x: dict[int, torch.Tensor], ball_ids: dict[int | str, torch.Tensor],
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 2 on one batch: ``ball_ids[space]`` is every sample's ball in that space. Noise theta
        of the reparameterisation is drawn from ``generator`` (None: h = mu, no noise)."""
        cfg = self.cfg
        mods = tuple(sorted(x))
        h: dict[int, torch.Tensor] = {}
        compression: dict[int, torch.Tensor] = {}
        for v in mods:
            mu, logvar = model.encoders[v](x[v])
            if generator is not None:
                theta = torch.randn(mu.shape, generator=generator).to(mu.device)
                h[v] = mu + torch.exp(0.5 * logvar) * theta
            else:
                h[v] = mu
            if cfg.compression == "vib":
                compression[v] = vib_kl(mu, logvar)
        weights = model.fusion_weights(mods, cfg.fusion_weights == "learned")
        s = fuse(h, weights, mods)
        centres = {v: batch_ball_centres(h[v], ball_ids[v]) for v in mods}
        fused_centres = batch_ball_centres(s, ball_ids[FUSED])
        by_balls = cfg.assignments_from == "balls"
        y = {v: model.ddc(centres[v] if by_balls else h[v]) for v in mods}
        y_s, hidden_s = model.ddc(fused_centres if by_balls else s)
        if cfg.compression == "balanced":
            compression = {v: balanced_kl(y[v][0]) for v in mods}

        ddc = ddc_loss(y_s, hidden_s)
        terms: dict[str, torch.Tensor] = {"loss_ddc": ddc["total"], "ddc1": ddc["ddc1"], "ddc2": ddc["ddc2"],
                                          "ddc3": ddc["ddc3"]}
        total = ddc["total"]
        if cfg.ddc_on == "all":
            for v in mods:
                extra = ddc_loss(*y[v])["total"]
                terms["loss_ddc"] = terms["loss_ddc"] + extra
                total = total + extra
        if cfg.use_balls:
            l_balls, parts = balls_loss(centres, fused_centres, cfg.alpha, cfg.beta, cfg.feature_map)
            terms.update(loss_balls=l_balls, **parts)
            total = total + l_balls
        if cfg.use_samples:
            l_samples, parts = samples_loss(compression, {v: y[v][0] for v in mods}, y_s, cfg.alpha, cfg.beta)
            terms.update(loss_samples=l_samples, **parts)
            total = total + l_samples
        return total, terms

    def train_round(self, model: GIBNetwork, optimizer: torch.optim.Optimizer, data: LocalData,
                    generator: torch.Generator, context: RoundContext | None = None) -> dict[str, float]:
        """One epoch (Alg. 1, one pass of the while loop over all batches): balls rebuilt from the
        current latents, then mini-batches of ``batch_size`` in a seeded random order."""
        started = time.perf_counter()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        balls = self.balls_per_space(model, data, seed)
        ball_seconds = time.perf_counter() - started
        device = next(iter(data.views.values())).device
        ids = {key: torch.from_numpy(b.assignment).to(device) for key, b in balls.items()}
        model.train()
        n = data.n_samples
        order = torch.randperm(n, generator=generator).to(device)
        losses = RoundLosses()
        for start in range(0, n, self.cfg.batch_size):
            batch = order[start : start + self.cfg.batch_size]
            if batch.numel() < 2:  # BatchNorm and DDC2's n (n - 1) need two samples
                continue
            x = {v: t[batch] for v, t in data.views.items()}
            total, terms = self.loss(model, x, {key: i[batch] for key, i in ids.items()}, generator)
            losses.step(optimizer, total, terms)
        out = losses.means()
        out.update({f"balls_{key}": float(b.n_balls) for key, b in balls.items()})
        self.timing = {"balls_s": ball_seconds, **self._clock, "round_s": time.perf_counter() - started}
        return out

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, model: GIBNetwork, data: LocalData) -> np.ndarray:
        """The fused mean S(mu) (Eq. 27 on the encoder means)."""
        model.eval()
        return self._latent_means(model, data.views)[FUSED].cpu().numpy()

    @torch.no_grad()
    def _fused_assignments(self, model: GIBNetwork, data: LocalData) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        s = self._latent_means(model, data.views)[FUSED]
        if self.cfg.assignments_from == "balls":
            balls = self.build_balls(s.cpu().float().numpy(), self.cfg.eval_seed)
            s = batch_ball_centres(s, torch.from_numpy(balls.assignment).to(s.device))
        return ddc_batch_statistics(model.ddc, s)

    def soft_assignments(self, model: GIBNetwork, data: LocalData) -> np.ndarray:
        """Y^s, the DDC assignment of the fused representation (of each sample's fused ball)."""
        return self._fused_assignments(model, data)[0].cpu().numpy()

    @torch.no_grad()
    def selection_loss(self, model: GIBNetwork, data: LocalData) -> float:
        """DDC1 of Y^s on the client's data (label-free model selection, PROTOCOLS.md), the mean
        over chunks of ``selection_batch`` samples in a fixed random order (the kernel is n x n)."""
        assignments, hidden = self._fused_assignments(model, data)
        order = torch.from_numpy(np.random.default_rng(0).permutation(assignments.shape[0])).to(assignments.device)
        values, weights = [], []
        for start in range(0, order.numel(), self.cfg.selection_batch):
            chunk = order[start : start + self.cfg.selection_batch]
            if chunk.numel() < 2:
                continue
            values.append(float(ddc_loss(assignments[chunk], hidden[chunk])["ddc1"]))
            weights.append(chunk.numel())
        return float(np.average(values, weights=weights))

    def round_cost(self, data: LocalData, num_peers: int) -> float:
        """Samples x forward-pass equivalents: one pass for the latents the balls are built on,
        3 for training (forward + backward), and one per k-means restart per latent space."""
        spaces = len(data.modalities) + (1 if len(data.modalities) > 1 else 0)
        return float(data.n_samples * (4 + spaces * self.cfg.kmeans_n_init))
