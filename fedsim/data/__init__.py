"""Datasets (``fedsim.data.datasets``: registry, loaders, synthetic generator) and client
partitioning (``fedsim.data.partition``)."""
