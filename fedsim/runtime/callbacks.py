"""Run callbacks: how tracking, progress and metrics export hook into a federation.

The orchestrator calls these at fixed points; methods never see them. Implementations live in
``fedsim.tracking`` (MLflow, terminal progress) and can be added without touching the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedsim.runtime.server import UploadRecord


@dataclass
class Progress:
    """The federation's state after an upload, for progress lines and live metrics."""

    mode: str
    rounds_done: list[int]
    uploads: int
    expected_uploads: int | None
    sim_time: float
    wall_time: float
    latest_metrics: dict[str, float] = field(default_factory=dict)
    phase: str = "train"  # "pretrain" while Alg. 1's designated client trains alone
    pretrain_rounds: tuple[int, int] = (0, 0)  # done, planned


@dataclass
class EvaluationRecord:
    step: int  # evaluation index
    uploads: int
    sim_time: float
    wall_time: float
    metrics: dict[str, float]
    final: bool = False
    duration_s: float = 0.0  # wall time the evaluation itself took


class Callback:
    """No-op base; override what you need."""

    def on_run_start(self, info: dict[str, Any]) -> None: ...

    def on_restart(self, restart: int, runs: int) -> None:
        """Model selection: restart ``restart`` (0-based) of ``runs`` begins."""

    def on_upload(self, record: UploadRecord, progress: Progress) -> None: ...

    def on_evaluation(self, record: EvaluationRecord, progress: Progress) -> None: ...

    def on_run_end(self, result: Any) -> None: ...

    def on_run_failed(self, error: BaseException) -> None: ...


class CallbackList(Callback):
    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = callbacks

    def on_run_start(self, info: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_run_start(info)

    def on_restart(self, restart: int, runs: int) -> None:
        for cb in self.callbacks:
            cb.on_restart(restart, runs)

    def on_upload(self, record: UploadRecord, progress: Progress) -> None:
        for cb in self.callbacks:
            cb.on_upload(record, progress)

    def on_evaluation(self, record: EvaluationRecord, progress: Progress) -> None:
        for cb in self.callbacks:
            cb.on_evaluation(record, progress)

    def on_run_end(self, result: Any) -> None:
        for cb in self.callbacks:
            cb.on_run_end(result)

    def on_run_failed(self, error: BaseException) -> None:
        for cb in self.callbacks:
            cb.on_run_failed(error)
