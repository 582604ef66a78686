"""Client partitioning: the FMCSC equal split, Dirichlet label skew and F/M/S client kinds."""

from __future__ import annotations

import numpy as np
import pytest

import fedsim.data.partition as partition_module
from fedsim.data.partition import ClientSpec, client_kind_counts, parse_client_ratio, partition
from fedsim.errors import ConfigError, DataError

# Sorted by class like most benchmark files (MANIFEST.md); 10 classes of unequal size, N = 2035.
LABELS = np.repeat(np.arange(10), [200 + 3 * k for k in range(10)] + np.array([0] * 9 + [-100]))


def assert_disjoint_cover(clients: list[ClientSpec], n_samples: int) -> None:
    everything = np.concatenate([client.indices for client in clients])
    assert np.array_equal(np.sort(everything), np.arange(n_samples))
    for client in clients:
        assert client.indices.dtype == np.int64
        assert np.all(np.diff(client.indices) > 0)


def mean_max_class_share(clients: list[ClientSpec], labels: np.ndarray) -> float:
    return float(np.mean([np.bincount(labels[c.indices]).max() / c.indices.size for c in clients]))


# -------------------------------------------------------------------------------------- split


def test_iid_split_is_equal_disjoint_and_complete() -> None:
    clients = partition(LABELS, 2, 24, seed=0)
    assert [client.client_id for client in clients] == list(range(24))
    assert_disjoint_cover(clients, LABELS.size)
    sizes = {client.indices.size for client in clients}
    assert sizes == {LABELS.size // 24, LABELS.size // 24 + 1}


def test_iid_split_is_class_stratified() -> None:
    clients = partition(LABELS, 2, 12, seed=1)
    per_client = np.array([np.bincount(LABELS[c.indices], minlength=10) for c in clients])
    assert (per_client.max(axis=0) - per_client.min(axis=0)).max() <= 1


def test_split_is_determined_by_the_seed_and_independent_of_the_ratio() -> None:
    first = partition(LABELS, 3, 12, "2:1", seed=7)
    again = partition(LABELS, 3, 12, "2:1", seed=7)
    other_ratio = partition(LABELS, 3, 12, "1:1:1", seed=7)
    other_seed = partition(LABELS, 3, 12, "2:1", seed=8)
    for a, b, c in zip(first, again, other_ratio, strict=True):
        assert np.array_equal(a.indices, b.indices) and a.views == b.views
        assert np.array_equal(a.indices, c.indices)
    assert any(not np.array_equal(a.indices, d.indices) for a, d in zip(first, other_seed, strict=True))


def test_remainder_clients_vary_with_the_seed() -> None:
    base = LABELS.size // 24
    larger = {
        frozenset(c.client_id for c in partition(LABELS, 2, 24, seed=seed) if c.indices.size > base)
        for seed in range(5)
    }
    assert len(larger) > 1


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    skewed = partition(LABELS, 2, 10, scheme="dirichlet", dirichlet_alpha=0.1, seed=0)
    mild = partition(LABELS, 2, 10, scheme="dirichlet", dirichlet_alpha=100.0, seed=0)
    for clients in (skewed, mild):
        assert_disjoint_cover(clients, LABELS.size)
    assert mean_max_class_share(skewed, LABELS) > 0.4
    assert mean_max_class_share(mild, LABELS) < 0.2


def test_dirichlet_respects_min_client_size() -> None:
    # About 3 in 4 single draws leave some client below 15 samples here: resampling is needed.
    clients = partition(LABELS, 2, 16, scheme="dirichlet", dirichlet_alpha=0.1, seed=3, min_client_size=15)
    assert_disjoint_cover(clients, LABELS.size)
    assert min(client.indices.size for client in clients) >= 15


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"num_clients": 0}, ConfigError),
        ({"num_clients": LABELS.size + 1}, DataError),
        ({"num_clients": 100, "min_client_size": 30}, DataError),
        ({"num_clients": 4, "scheme": "shards"}, ConfigError),
        ({"num_clients": 4, "scheme": "dirichlet", "dirichlet_alpha": 0.0}, ConfigError),
    ],
)
def test_impossible_partitions_are_refused(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        partition(LABELS, 2, **kwargs)


def test_dirichlet_gives_up_with_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partition_module, "MAX_DIRICHLET_TRIES", 20)
    with pytest.raises(DataError, match="raise dirichlet_alpha"):
        partition(LABELS, 2, 200, scheme="dirichlet", dirichlet_alpha=0.01, min_client_size=10)


# -------------------------------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    ("num_clients", "ratio", "n_views", "expected"),
    [
        (12, "2:1", 2, (8, 0, 4)),
        (12, "1:1", 2, (6, 0, 6)),
        (12, "1:2", 2, (4, 0, 8)),
        (24, "1:1:1", 5, (8, 8, 8)),
        (5, "10:1", 2, (4, 0, 1)),  # every nonzero kind keeps a client
        (7, "1:0", 2, (7, 0, 0)),
    ],
)
def test_client_kind_counts(num_clients: int, ratio: str, n_views: int, expected: tuple[int, int, int]) -> None:
    assert client_kind_counts(num_clients, ratio, n_views) == expected


def test_kinds_and_views_follow_fmcsc_order() -> None:
    clients = partition(LABELS, 5, 12, "1:1:1", seed=0)
    assert [client.kind for client in clients] == ["F"] * 4 + ["M"] * 4 + ["S"] * 4
    for client in clients:
        assert list(client.views) == sorted(set(client.views))
        if client.kind == "F":
            assert client.views == (0, 1, 2, 3, 4)
        elif client.kind == "M":
            assert 2 <= len(client.views) <= 4
        else:
            assert len(client.views) == 1 and 0 <= client.views[0] < 5


def test_two_to_one_gives_eight_full_and_four_single_view_clients() -> None:
    clients = partition(LABELS, 2, 12, "2:1", seed=0)
    assert [client.kind for client in clients] == ["F"] * 8 + ["S"] * 4
    assert {client.views for client in clients[8:]} <= {(0,), (1,)}


def test_single_view_choice_is_random_across_seeds() -> None:
    drawn = {client.views for seed in range(5) for client in partition(LABELS, 3, 12, "1:1", seed=seed)[6:]}
    assert drawn == {(0,), (1,), (2,)}


def test_m_clients_need_three_views() -> None:
    with pytest.raises(ConfigError, match="3 or more views"):
        partition(LABELS, 2, 12, "1:1:1")


@pytest.mark.parametrize("ratio", ["a:b", "0:0", "0:0:0", "1:2:3:4", "-1:2", "2", "1.5:1", ""])
def test_bad_ratios_are_config_errors(ratio: str) -> None:
    with pytest.raises(ConfigError, match="client_ratio"):
        parse_client_ratio(ratio, 3)


def test_too_few_clients_for_the_ratio() -> None:
    with pytest.raises(ConfigError, match="needs at least 3 clients"):
        client_kind_counts(2, "1:1:1", 5)


def test_train_test_split_is_disjoint_stratified_and_seeded():
    from fedsim.data.partition import split_train_test

    labels = np.repeat(np.arange(4), 50)
    specs = partition(labels, 2, 5, "1:1", scheme="dirichlet", dirichlet_alpha=0.5, seed=3)
    a = split_train_test(specs, labels, 0.2, seed=1)
    b = split_train_test(specs, labels, 0.2, seed=1)
    for spec, s, t in zip(specs, a, b):
        assert np.array_equal(s.test_indices, t.test_indices)
        assert np.intersect1d(s.indices, s.test_indices).size == 0
        assert np.array_equal(np.sort(np.concatenate([s.indices, s.test_indices])), spec.indices)
        assert s.test_indices.size >= 1 and s.indices.size >= 1 and s.views == spec.views
        for label in np.unique(labels[spec.indices]):
            n = int((labels[spec.indices] == label).sum())
            if n >= 5:  # stratified: ~20% of every class that has enough samples
                assert abs(int((labels[s.test_indices] == label).sum()) - 0.2 * n) <= 1
