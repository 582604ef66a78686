"""The federation's data as the driver and every actor rebuild it: identical, and subsampled
per client for AFMCC Fig. 5a."""

import numpy as np

from fedsim.config import build_config
from fedsim.runtime.federation_data import load_federation

RAW = {"dataset": "synthetic", "num_clients": 4, "client_ratio": "1:1"}


def test_rebuilt_identically():
    a = load_federation(build_config(RAW))[1]
    b = load_federation(build_config(RAW))[1]
    assert all(np.array_equal(x.indices, y.indices) and x.views == y.views for x, y in zip(a, b))


def test_samples_per_client_subsamples_each_shard_seeded():
    full = load_federation(build_config(RAW))[1]
    cut = load_federation(build_config(RAW, ["samples_per_client=40"]))[1]
    again = load_federation(build_config(RAW, ["samples_per_client=40"]))[1]
    for f, c, g in zip(full, cut, again):
        assert c.indices.size == 40 and set(c.indices) <= set(f.indices)
        assert np.array_equal(c.indices, g.indices) and c.views == f.views
