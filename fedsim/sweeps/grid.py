"""The grid spec: what one sweep runs, read from ``tune/grids/<method>/<grid>.yaml``.

A grid file names the paper table or figure it reproduces, the base config
(``configs/<method>/<dataset>.yaml``), the grid axes, fixed overrides, how to lay out the summary
table and the paper's numbers per dataset (the format: tune/README.md). ``GridSpec`` validates
the whole file when it is loaded: an unknown key or a value of the wrong type is one error line
naming the file and the key, not a failure hours into a sweep. A new grid or method needs no
code change.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator, model_validator

from fedsim.config import Strict, load_yaml
from fedsim.errors import ConfigError, shorten, shorten_path

ROOT = Path(__file__).resolve().parents[2]
GRID_DIR = ROOT / "tune" / "grids"


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _paper_value(value: Any) -> Any:
    # Kept as written (an int stays an int): the sweep's own table prints the value verbatim.
    if value is None or _number(value) or (isinstance(value, list) and len(value) == 2 and all(map(_number, value))):
        return value
    raise ValueError("a paper value is a number or [mean, std]")


PaperValue = Annotated[Any, AfterValidator(_paper_value)]


class LinePlot(Strict):
    """Every table metric (mean +- std over seeds) against axis ``x``: one line per ``lines``
    value, one panel per ``panels`` value (e.g. FedRecon: accuracy against the missing rate)."""

    x: str
    lines: str | None = None
    panels: str | None = None


class TableSpec(Strict):
    """The summary table: a row per value of the ``rows`` axes (split by the ``columns`` axis),
    each metric as mean +- std over the axes left out (the seeds)."""

    rows: list[str] = []
    columns: str | None = None
    metrics: list[str] = ["acc", "nmi", "ari"]
    plot: LinePlot | None = None

    @property
    def keys(self) -> list[str]:
        """The axes a table row is keyed by: the row axes, then the column axis."""
        return self.rows + ([self.columns] if self.columns else [])


class ReportSpec(Strict):
    """The grid in the reproduction report: our datasets to run it on beyond those with paper
    values, the paper's datasets we do not hold (name -> why; listed rather than omitted), and
    ``skip`` for a grid with no paper table (for tests and laptops)."""

    datasets: list[str] = []
    not_held: dict[str, str] = {}
    skip: bool = False

    @field_validator("not_held", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class TimeToReach(Strict):
    """Table 3d: the simulated time each run needs to reach the final ACC of the reference run of
    its seed and row; ``reference`` names that run by one axis value, e.g. ``{mode: sync}``."""

    reference: dict[str, Any]

    @field_validator("reference")
    @classmethod
    def _one_axis(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) != 1:
            raise ValueError("names the reference run by one axis value, e.g. {mode: sync}")
        return value

    @property
    def axis_value(self) -> tuple[str, Any]:
        return next(iter(self.reference.items()))


class GridSpec(Strict):
    """One grid file; ``name`` and ``method`` are its file name and folder, not keys in it."""

    name: str
    method: str
    reproduces: str
    config: str  # path template with {dataset}
    grid: dict[str, list[Any]]
    fixed: dict[str, Any] = Field(default={}, alias="set")
    table: TableSpec = TableSpec()
    paper: dict[str, dict[str, dict[str, PaperValue]]] = {}  # dataset -> row key -> metric -> value
    time_to_reach: TimeToReach | None = None
    datasets: dict[str, dict[str, Any]] = {}  # per-dataset extra overrides
    # Named axis values (the ablations' variants): axis -> value -> overrides.
    variants: dict[str, dict[Any, dict[str, Any]]] = {}
    # Table rows read off each trial rather than trained per row: axis -> row value -> metric
    # prefix, e.g. {"selection": {"label_free": "selected_by_loss"}}: that row's ACC is the trial's
    # ``selected_by_loss/acc`` (the restart the label-free criterion keeps; runner.selected_by).
    derived_rows: dict[str, dict[str, str]] = {}
    report: ReportSpec = ReportSpec()
    # Grid points that are another grid's trials under the same config (CMMC Table 3's full model
    # is Table 1): axis -> value -> that grid's name. Where this grid has no run of such a point,
    # the report takes the other grid's run of the same seed, once their resolved configs agree
    # (fedsim/sweeps/records.py, borrow_rows); the sweep still runs the point when asked.
    borrow: dict[str, dict[str, str]] = {}

    @field_validator("fixed", "paper", "datasets", "variants", "derived_rows", "borrow", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("borrow", mode="before")
    @classmethod
    def _values_as_text(cls, value: Any) -> Any:
        # Grid values are compared as text (a YAML key 1 and an axis value 1 both read "1").
        if isinstance(value, dict) and all(isinstance(m, dict) for m in value.values()):
            return {axis: {str(v): str(g) for v, g in m.items()} for axis, m in value.items()}
        return value

    @field_validator("grid")
    @classmethod
    def _axes_have_values(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not value:
            raise ValueError("needs at least one axis, e.g. {seed: [0, 1, 2]}")
        empty = [axis for axis, values in value.items() if not values]
        if empty:
            raise ValueError(f"axis '{empty[0]}' has no values")
        return value

    @model_validator(mode="after")
    def _axes_exist(self) -> GridSpec:
        axes = [*self.grid, *self.derived_rows]
        named = [("table.rows", axis) for axis in self.table.rows]
        if self.table.columns:
            named.append(("table.columns", self.table.columns))
        plot = self.table.plot
        if plot is not None:
            named += [
                (f"table.plot.{k}", v) for k, v in (("x", plot.x), ("lines", plot.lines), ("panels", plot.panels)) if v
            ]
        if self.time_to_reach is not None:
            named.append(("time_to_reach.reference", self.time_to_reach.axis_value[0]))
        named += [(f"borrow.{a}", a) for a in self.borrow]
        for key, axis in named:
            if axis not in axes:
                raise ValueError(f"{key} names '{axis}', which is no axis of the grid ({', '.join(axes)})")
        for axis, variants in self.variants.items():
            missing = [v for v in self.grid.get(axis, []) if isinstance(v, (list, dict)) or v not in variants]
            if missing:
                raise ValueError(
                    f"grid.{axis} value {missing[0]!r} is not one of variants.{axis} ({', '.join(map(str, variants))})"
                )
        return self

    def trial_overrides(self, params: dict[str, Any]) -> list[str]:
        """A trial's overrides: ``key=value`` per axis, or a named variant's overrides."""
        out: list[str] = []
        for key, value in params.items():
            if key in self.variants:
                out += override_strings(self.variants[key][value])
            else:
                out += override_strings({key: value})
        return out

    @property
    def trials(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]


def override_strings(values: dict[str, Any]) -> list[str]:
    """``key=value`` overrides (``build_config``'s syntax), a non-string value as JSON."""
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


def grid_names(method: str) -> list[str]:
    return sorted(p.stem for p in (GRID_DIR / method).glob("*.yaml"))


def load_grid(method: str, grid: str) -> GridSpec:
    """The grid ``tune/grids/<method>/<grid>.yaml``."""
    path = GRID_DIR / method / f"{grid}.yaml"
    if not path.is_file():
        known = ", ".join(grid_names(method)) or "none"
        raise ConfigError(f"no grid '{grid}' for method '{method}' (looked for {path}); available: {known}")
    return read_grid(path)


def read_grid(path: str | Path) -> GridSpec:
    """The grid file at ``path``: its folder names the method, its stem the grid."""
    path = Path(path)
    raw = load_yaml(path)
    shown = os.path.relpath(path.resolve(), ROOT) if path.resolve().is_relative_to(ROOT) else str(path)
    where = f"grid file '{shorten_path(shown, 100)}'"
    method, name = path.resolve().parent.name, path.stem
    for key in ("name", "method"):
        if key in raw:
            raise ConfigError(f"{where}: unknown key '{key}' (a grid's method and name are its folder and file name)")
    try:
        return GridSpec.model_validate(
            {"config": f"configs/{method}/{{dataset}}.yaml", **raw, "name": name, "method": method}
        )
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_first_problem(exc)}; see tune/README.md for the format") from None


def _first_problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = shorten(".".join(str(p) for p in err["loc"]), 60)
    msg = shorten(err["msg"].removeprefix("Value error, "), 200)
    if err["type"] == "extra_forbidden":
        holder = _model_at(err["loc"][:-1])
        known = [f.alias or n for n, f in holder.model_fields.items() if n not in ("name", "method")] if holder else []
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known here: {', '.join(known)}"
        return f"unknown key '{loc}' ({hint})"
    if err["type"] == "missing":
        return f"key '{loc}' is missing"
    got = err.get("input")
    shown = "" if isinstance(got, (dict, BaseModel)) or got is None else f" (got {shorten(repr(got), 60)})"
    return f"key '{loc}': {msg}{shown}" if loc else msg


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model holding the key at ``path`` (an error's loc without its last part)."""
    model: type[BaseModel] | None = GridSpec
    for part in path:
        field = model.model_fields.get(str(part)) if model is not None else None
        if field is None:
            return None
        candidates = [field.annotation, *get_args(field.annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def restrict_grid(spec: GridSpec, only: list[str]) -> GridSpec:
    """The grid with some axes cut to the listed values: ``only`` holds ``axis=v1,v2`` strings
    (e.g. ``client_ratio=1:1`` runs Table 2's F/S 1:1 row with all its seeds)."""
    grid = dict(spec.grid)
    for item in only:
        axis, sep, values = item.partition("=")
        if not sep or axis not in grid:
            raise ConfigError(
                f"--only '{item}': expected axis=value[,value...] with an axis of grid "
                f"'{spec.name}' ({', '.join(grid)})"
            )
        wanted = values.split(",")
        kept = [v for v in grid[axis] if str(v) in wanted]
        if len(kept) != len(wanted):
            raise ConfigError(
                f"--only '{item}': axis '{axis}' of grid '{spec.name}' has values {[str(v) for v in spec.grid[axis]]}"
            )
        grid[axis] = kept
    return spec.model_copy(update={"grid": grid})
