"""The parameter server's state on disk, in the run's folder, so a restarted server (and a resumed
run) continues from its last commit.

Layout of ``<runtime.checkpoint_dir>/<run>/`` (one sub-folder ``r<k>`` per model-selection
restart k > 0):

- ``server.pkl``: the state (commit count, per client: the version and file of its latest
  parameters and of its latest client state). Written to a temporary file and renamed, so a
  crash leaves the old state or the new one, never half of one.
- ``arrays/``: one ``.npy`` per stored model and one ``.pkl`` per stored client state, each
  written the same way before ``server.pkl`` names it; files no longer named are removed.
- ``uploads.pkl``: the upload log, appended one record at a time. ``server.pkl`` records how
  many bytes of it are committed; a torn record after a crash is cut off on load."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1


def atomic_write(path: Path, write: Any) -> None:
    """Write ``path`` through a temporary file and a rename: a crash leaves the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ServerCheckpoint:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.arrays = self.folder / "arrays"
        self.meta_path = self.folder / "server.pkl"
        self.log_path = self.folder / "uploads.pkl"

    def exists(self) -> bool:
        return self.meta_path.is_file()

    def create(self) -> None:
        self.arrays.mkdir(parents=True, exist_ok=True)

    # -- writing --------------------------------------------------------------------------------
    def save_array(self, name: str, array: np.ndarray) -> None:
        atomic_write(self.arrays / name, lambda f: np.save(f, np.asarray(array), allow_pickle=False))

    def save_object(self, name: str, value: Any) -> None:
        atomic_write(self.arrays / name, lambda f: pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL))

    def append_record(self, record: dict[str, Any], offset: int) -> int:
        """Append one upload record at byte ``offset`` (the committed length: anything after it
        is a torn write); returns the new committed length."""
        mode = "r+b" if self.log_path.exists() else "wb"
        with open(self.log_path, mode) as f:
            f.seek(offset)
            f.truncate()
            pickle.dump(record, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
            return f.tell()

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Make ``meta`` the checkpoint (atomically), then remove the array files it no longer names."""
        atomic_write(self.meta_path, lambda f: pickle.dump({"format": FORMAT, **meta}, f))
        named = {name for name in meta["files"] if name}
        for path in self.arrays.iterdir():
            if path.name not in named and not path.name.startswith("."):
                path.unlink(missing_ok=True)

    # -- reading --------------------------------------------------------------------------------
    def load_meta(self) -> dict[str, Any]:
        with open(self.meta_path, "rb") as f:
            meta = pickle.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.meta_path}: checkpoint format {meta.get('format')}, expected {FORMAT}")
        return dict(meta)

    def load_records(self, length: int) -> list[dict[str, Any]]:
        records = []
        if length:
            with open(self.log_path, "rb") as f:
                data = f.read(length)
            import io

            buffer = io.BytesIO(data)
            while buffer.tell() < length:
                records.append(pickle.load(buffer))
        return records

    def load_array(self, name: str) -> np.ndarray:
        return np.load(self.arrays / name, allow_pickle=False)

    def load_object(self, name: str) -> Any:
        with open(self.arrays / name, "rb") as f:
            return pickle.load(f)
