"""The driver's side of a run's checkpoint: what a virtual-mode federation needs to go on after its
driver was killed (``fedsim run CONFIG --resume RUN_ID``).

The parameter server checkpoints its store and upload log at every commit (``checkpoint.py``).
Beside it the driver writes ``driver.pkl`` at the top of every step of the virtual clock: its
counters, the evaluations so far, and every round in flight (client, round, simulated start and
end, and the versions its snapshot read; the server keeps those versions on disk while a round
in flight still reads them). A resumed run rebuilds those rounds from the checkpoint and re-runs
them on the same inputs; the one round that may have been committed after ``driver.pkl`` was
written is taken from the server's log instead of being run again. Every draw is seeded, so the
resumed run ends exactly as the uninterrupted one."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.runtime.callbacks import EvaluationRecord
from fedsim.runtime.checkpoint import atomic_write

DRIVER_FILE = "driver.pkl"
CONFIG_FILE = "config.json"


@dataclass
class InFlight:
    client_id: int
    round: int
    phase: str
    sim_start: float
    sim_end: float
    versions: list[int]
    commits: int
    # the commit that wrote each entry read (bounded peers choose by it); None in a checkpoint
    # written before entries recorded it, which then reads as never written (-1)
    entry_commits: list[int] | None = None

    def commits_read(self) -> list[int]:
        """The commit that wrote each entry read, -1 where the checkpoint did not record it."""
        return self.entry_commits if self.entry_commits is not None else [-1] * len(self.versions)


@dataclass
class DriverState:
    total_uploads: int
    train_uploads: int
    rounds_done: list[int]
    sim_time: float
    history: list[EvaluationRecord]
    latest: dict[str, float]
    inflight: list[InFlight]
    restarts: int = 0
    server_restarts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def save_driver_state(folder: str | os.PathLike[str], state: DriverState) -> None:
    atomic_write(Path(folder) / DRIVER_FILE, lambda f: pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL))


def load_driver_state(folder: str | os.PathLike[str]) -> DriverState | None:
    path = Path(folder) / DRIVER_FILE
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        state = pickle.load(f)
    if not isinstance(state, DriverState):
        raise ValueError(f"{path} is not a fedsim driver checkpoint")
    return state


def save_config(folder: str | os.PathLike[str], config: dict[str, Any]) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / CONFIG_FILE).write_text(json.dumps(config, sort_keys=True, default=str))


def load_config(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(folder) / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None
