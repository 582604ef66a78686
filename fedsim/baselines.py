"""The bar a clustering method must clear: k-means on the concatenated views.

    python -m fedsim.baselines hdigit scene15 cub --seeds 0 1 2

Each view is MinMax-scaled to [0, 1] per feature (on top of the registry's own preprocessing,
which it leaves unchanged where that is already MinMax), the views are concatenated, and
scikit-learn's k-means (k-means++, ``n_init`` restarts, ``random_state`` = seed) clusters all
samples centrally. This is the baseline the AFMCC issue asks every default to beat by 5 ACC points
(reports/findings/afmcc_transfer.md). It is centralised on purpose: the strongest simple method
with every sample in one place, not a federated one.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.cluster import KMeans

from fedsim.data.datasets import load_dataset
from fedsim.metrics import clustering_metrics


def concatenated_minmax(views: tuple[np.ndarray, ...]) -> np.ndarray:
    parts = []
    for view in views:
        low, span = view.min(axis=0), np.ptp(view, axis=0)
        parts.append((view - low) / np.where(span > 0, span, 1.0))
    return np.concatenate(parts, axis=1).astype(np.float32)


def kmeans_baseline(
    dataset: str, seeds: list[int], n_init: int = 10, data_dir: str | None = None
) -> list[dict[str, float]]:
    """Clustering metrics of k-means on the concatenated MinMax-scaled views, one dict per seed."""
    data = load_dataset(dataset, data_dir)
    x = concatenated_minmax(data.views)
    return [
        clustering_metrics(data.labels, KMeans(data.n_clusters, n_init=n_init, random_state=seed).fit_predict(x))
        for seed in seeds
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedsim.baselines", description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-init", type=int, default=10)
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    for name in args.datasets:
        runs = kmeans_baseline(name, args.seeds, args.n_init, args.data_dir)
        acc = np.array([r["acc"] for r in runs]) * 100
        nmi = np.array([r["nmi"] for r in runs]) * 100
        print(
            f"{name}: k-means on concatenated MinMax views (n_init {args.n_init}, seeds {args.seeds}): "
            f"ACC {acc.mean():.1f} ± {acc.std():.1f} ({' / '.join(f'{a:.1f}' for a in acc)}), NMI {nmi.mean():.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
