"""The dataset and its partition into clients, rebuilt identically wherever it is needed.

The driver calls this to validate the data before any actor starts; each client actor calls it
again and keeps only its own shards. Both get the same split because every draw is seeded.
Order: the partition (samples and F/M/S modalities), the Fig. 5a subsample, the Bernoulli
missing modalities (a client can only lose modalities it has), then the classification task's
per-client train/test split.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedsim.config import ExperimentConfig
from fedsim.data.datasets import MultiViewDataset, load_dataset
from fedsim.data.partition import ClientSpec, partition, split_train_test


def load_federation(cfg: ExperimentConfig) -> tuple[MultiViewDataset, list[ClientSpec]]:
    dataset = load_dataset(
        cfg.dataset,
        cfg.data_dir,
        seed=cfg.data_seed,
        synthetic=cfg.synthetic,
        preprocessing=cfg.preprocessing,
        n_clusters=cfg.n_clusters,
    )
    clients = partition(
        dataset.labels,
        dataset.n_views,
        cfg.num_clients,
        cfg.client_ratio,
        scheme=cfg.partition,
        dirichlet_alpha=cfg.dirichlet_alpha,
        seed=cfg.seed,
    )
    if cfg.samples_per_client is not None:
        # AFMCC Fig. 5a varies the samples per client: each client keeps a seeded random subset
        # of its shard (the samples it drops belong to nobody and are not evaluated).
        rng = np.random.default_rng([cfg.seed, 0x5A3])
        clients = [
            replace(c, indices=np.sort(rng.choice(c.indices, cfg.samples_per_client, replace=False)))
            if c.indices.size > cfg.samples_per_client
            else c
            for c in clients
        ]
    if cfg.missing_rate:
        from fedsim.data.missing import apply_missing_modalities

        clients = apply_missing_modalities(clients, dataset.n_views, cfg.missing_rate, seed=cfg.seed)
    if cfg.task == "classification":
        clients = split_train_test(clients, dataset.labels, cfg.test_fraction, seed=cfg.seed)
    return dataset, clients
