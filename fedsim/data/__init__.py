"""Datasets (registry, loaders, synthetic generator) and client partitioning."""

from fedsim.data.datasets import (
    DATASETS,
    DatasetSpec,
    MultiViewDataset,
    dataset_names,
    load_dataset,
    search_paths,
)
from fedsim.data.partition import ClientSpec, client_kind_counts, parse_client_ratio, partition

__all__ = [
    "DATASETS",
    "ClientSpec",
    "DatasetSpec",
    "MultiViewDataset",
    "client_kind_counts",
    "dataset_names",
    "load_dataset",
    "parse_client_ratio",
    "partition",
    "search_paths",
]
