"""Experiment configuration: YAML files, ``--set key=value`` overrides, pydantic validation.

A config is one YAML mapping. Top-level keys describe the federation and the runtime; the
method's own hyper-parameters sit under the method's name (``afmcc.alpha``) and are validated by
that method's ``Config`` model, so adding a method never touches this file.

Every problem a user can cause (unknown key, wrong type, impossible value, malformed override)
becomes a one-line ``ConfigError`` naming the key and the fix.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import typing
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedsim.errors import ConfigError, shorten, shorten_path

# Bounds on what a config may be: a config is a few hundred bytes; these stop a hostile or
# broken file (an alias bomb, a 10^6-element value, a binary file) before it costs anything.
MAX_CONFIG_BYTES = 1 << 20  # a config file, and one --set value
MAX_YAML_NODES = 100_000  # values after expanding every alias (*a repeats what &a names)
MAX_YAML_DEPTH = 64  # nesting of mappings and lists
MAX_SEED = 2**32 - 1
# Counts (rounds, clients, uploads, restarts): far beyond any experiment, and small enough that
# no count overflows an int64 or a float's exact integers on its way through NumPy and JSON.
MAX_COUNT = 1_000_000
MAX_AMOUNT = 1e12  # simulated-time budgets and other amounts: finite, and far beyond any run


def ray_address_problem(address: str) -> str | None:
    """What is wrong with a Ray address (``runtime.ray_address`` or $RAY_ADDRESS), or None.

    Accepted as Ray takes them: ``auto`` (the cluster started on this machine by ``ray start``),
    ``local`` (a fresh local Ray), ``HOST:PORT`` (the head node's GCS), ``ray://HOST:PORT`` (Ray
    Client) or another ``SCHEME://HOST[:PORT]``. Checked in the driver, so a typo is one line now,
    not a connection attempt after the slow imports."""
    text = address.strip()
    example = "use HOST:PORT of the head node (e.g. 10.0.0.5:6379), ray://HOST:10001, or auto"
    if text in ("auto", "local"):
        return None
    match = re.fullmatch(r"(?:[A-Za-z][A-Za-z0-9+.-]*://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?/?", text)
    if match is None:
        return f"not a Ray address; {example}"
    port = match.group(2)
    if port is None and "://" not in text:
        return f"no port; {example}"
    if port is not None and not 1 <= int(port) <= 65535:
        return f"port {port} is not in 1..65535; {example}"
    return None


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class StopConfig(Strict):
    """When a run ends.

    - ``rounds``: every client completes ``rounds`` rounds (the paper's xi).
    - ``group``: all clients keep training until every client of ``group`` (``odd`` / ``even``
      0-based client ids, or ``all``) has completed ``group_rounds`` rounds (AFMCC Table 3d).
    - ``sim_time``: stop at the simulated-time budget ``sim_time_budget`` (work units, see
      ``fedsim.runtime.clock``); rounds that would finish later are not committed.
    """

    rule: Literal["rounds", "group", "sim_time"] = "rounds"
    group: Literal["odd", "even", "all"] = "odd"
    group_rounds: int = Field(10, ge=1, le=MAX_COUNT)
    sim_time_budget: float = Field(0.0, ge=0, le=MAX_AMOUNT)

    def members(self, num_clients: int) -> list[int]:
        """The clients of ``group`` (the ``group`` rule waits for these): ``odd`` / ``even``
        0-based client ids, or ``all``."""
        if self.group == "all":
            return list(range(num_clients))
        return [c for c in range(num_clients) if (c % 2 == 0) == (self.group == "even")]


class PretrainConfig(Strict):
    """AFMCC Alg. 1, line 1: one model is pretrained before the federation; it seeds every client.

    ``schedule: designated`` (Alg. 1 as printed): ``client`` trains alone for ``rounds`` rounds.
    ``schedule: chain`` (the FMCSC code AFMCC builds on, main.py ``pretrain``): ONE model passes
    through every client in turn, clients 0..U-1, each training it for ``rounds`` rounds, so it
    sees every client's samples instead of one client's ~1/U share; the last client's model
    seeds everyone. ``rounds: null`` means "as many local rounds as the run's ``rounds``"; 0
    disables pretraining (all clients start from the same seeded random initialisation).
    Off unless the method's ``run_defaults`` (AFMCC, FMCSC) or the config turns it on.
    """

    enabled: bool = False
    schedule: Literal["designated", "chain"] = "designated"
    client: int = Field(0, ge=0)
    rounds: int | None = Field(None, ge=0, le=MAX_COUNT)


class PrivacyConfig(Strict):
    """Differential privacy on uploads (AFMCC App., Fig. 5c). See ``fedsim.privacy``."""

    enabled: bool = False
    epsilon: float = Field(40.0, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    clip_norm: float = Field(1.0, gt=0, le=1e6)  # noise std = multiplier (<= 1e6) x clip_norm stays finite


class RuntimeConfig(Strict):
    """How simulated clients map onto Ray actors and devices.

    ``clients_per_actor: null`` picks it from the cluster's CPUs and free memory (an actor that
    imports torch costs ~310 MB); ``clients_per_gpu`` sets the GPU fraction per client when the
    cluster has GPUs (num_gpus = hosted clients / clients_per_gpu). ``num_cpus`` / ``num_gpus``
    say how much of the cluster this run may use (default: what Ray reports available); a sweep
    sets them to the trial's placement-group reservation.
    """

    clients_per_actor: int | None = Field(None, ge=1, le=MAX_COUNT)
    clients_per_gpu: int = Field(4, ge=1, le=MAX_COUNT)
    # models (with their optimiser state) an actor keeps between rounds; null: every hosted
    # client's. With a bound, the least recently trained are dropped and rebuilt for their next
    # round from the state kept with their last upload (as after an actor restart), so an
    # actor's memory grows with the bound, not with its clients (bench/bench_scale.py).
    resident_clients: int | None = Field(None, ge=1, le=MAX_COUNT)
    # sync and virtual modes: rounds handed to the actors ahead of the one the driver waits for,
    # in the order they commit; null: every round as soon as it starts (simulated). A round's
    # inputs are fixed when it starts, so the results do not depend on this, only the memory:
    # each round in flight holds a model, its optimiser state and its downloads.
    rounds_in_flight: int | None = Field(None, ge=1, le=MAX_COUNT)
    num_gpus: float | None = Field(None, ge=0, le=MAX_COUNT)  # GPUs this run may use (sweeps: the trial's share)
    # how often Ray may restart one actor (-1: without limit); a lost actor is waited for up to
    # start_timeout_s each time, and its clients continue exactly where they were
    max_actor_restarts: int = Field(-1, ge=-1, le=MAX_COUNT)
    # a Ray cluster to join (see README, "What listens where"); null: $RAY_ADDRESS, else a local
    # Ray of this run's own, on 127.0.0.1 only
    ray_address: str | None = Field(None, max_length=1000)
    num_cpus: float | None = Field(None, gt=0, le=MAX_COUNT)
    include_dashboard: bool = True
    dashboard_port: int = Field(8265, ge=1, le=65535)
    # bounds every wait on an actor (a round, an evaluation, the server): nothing waits forever
    # (at most ~11.6 days: a finite bound is the point)
    round_timeout_s: float = Field(600.0, gt=0, le=1e6)
    # how long a run's client actors may take to start (pending for CPUs/GPUs, importing torch,
    # loading their shards) before the run fails with what Ray has free; also how long a lost
    # (killed, crashed) actor is waited for while Ray restarts it
    start_timeout_s: float = Field(300.0, gt=0, le=1e6)
    # where each run keeps its parameter server's checkpoint (<checkpoint_dir>/<run id>/): a
    # restarted server continues from it; removed when the run finishes. null: no checkpoint
    # (a parameter server that dies then ends the run)
    checkpoint_dir: str | None = Field("results/runs", min_length=1, max_length=4096)
    # intra-op threads of each client actor's torch. Fixed, not taken from the actor's CPU share:
    # the share follows the machine (one actor on 2 CPUs here, four on 0.5 there) and a different
    # thread count changes float reductions, so virtual mode would stop being bit-for-bit.
    torch_threads: int = Field(1, ge=1, le=1024)

    @field_validator("ray_address")
    @classmethod
    def _ray_address_shape(cls, v: str | None) -> str | None:
        problem = ray_address_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v


class TrackingConfig(Strict):
    """MLflow. ``tracking_uri: null`` = $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``."""

    enabled: bool = True
    tracking_uri: str | None = Field(None, min_length=1, max_length=1000)
    experiment: str | None = Field(None, min_length=1, max_length=250)  # default: "<method>/<dataset>"
    run_name: str | None = Field(None, min_length=1, max_length=250)
    progress: bool = True
    parent_run_id: str | None = Field(None, max_length=100)  # set by sweeps: trials are children of the summary run
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("tags")
    @classmethod
    def _tag_sizes(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 100:
            raise ValueError(f"{len(v)} tags; at most 100")
        for key, value in v.items():
            if not 0 < len(key) <= 250 or len(value) > 5000:
                raise ValueError(f"tag '{shorten(key, 40)}': keys need 1..250 characters, values at most 5000")
        return v


class FaultConfig(Strict):
    """Fault injection for resilience tests: kill the actor hosting ``kill_client`` right after
    the ``after_uploads``-th committed upload. Ray restarts it; the client resumes from the
    parameter server's copy."""

    kill_client: int | None = Field(None, ge=0)
    after_uploads: int = Field(1, ge=1, le=MAX_COUNT)


class ModelSelectionConfig(Strict):
    """Restarts and how the kept one is chosen (MSDIB / GIB train 20 runs and keep one).

    ``runs`` full trainings from different model initialisations (same data split); the one
    with the lowest label-free ``selection_loss`` (the method's, e.g. DDC1) is kept with
    ``criterion: loss``; ``criterion: acc`` keeps the highest ACC, which uses the labels, as the
    MSDIB and GIB papers do: results chosen that way are tagged ``fedsim.selection=acc (uses
    labels)``."""

    runs: int = Field(1, ge=1, le=1000)
    criterion: Literal["loss", "acc"] = "loss"


class ExperimentConfig(Strict):
    method: str = "afmcc"
    dataset: str = "handwritten"
    data_dir: str | None = Field(None, min_length=1, max_length=4096)
    synthetic: dict[str, Any] | None = None  # generator params for synthetic datasets
    data_seed: int = Field(
        0, ge=0, le=MAX_SEED
    )  # seeds synthetic generators only; ``seed`` seeds split, models, training
    # null: the dataset's own (registry entry's; ``none`` for a user file). See fedsim.data.datasets.
    preprocessing: Literal["none", "minmax", "standard", "scale255"] | None = None
    n_clusters: int | None = Field(None, ge=1)  # null: the number of classes; required for unlabelled data
    num_clients: int = Field(12, ge=1, le=MAX_COUNT)
    client_ratio: str = Field("1:1", max_length=100)
    partition: Literal["iid", "dirichlet"] = "iid"
    dirichlet_alpha: float = Field(1.0, gt=0)
    samples_per_client: int | None = Field(None, ge=2)  # AFMCC Fig. 5a: keep at most n per client (seeded)
    # FedMultimodal protocol (FedRecon): each client loses each of its modalities with prob. rho
    missing_rate: float | None = Field(None, ge=0, lt=1)
    task: Literal["clustering", "classification"] = "clustering"
    test_fraction: float = Field(0.2, gt=0, lt=1)  # classification: each client's held-out share
    mode: Literal["sync", "async", "virtual"] = "virtual"
    # sync mode only. ``parallel``: every client of a round starts from the same state (federated
    # semantics). ``sequential``: the clients of a round train one after another in client order,
    # each reading the uploads its predecessors made in this round, as FMCSC's public code runs
    # its rounds (a client-by-client loop over shared model objects; fedsim/methods/fmcsc.py).
    round_order: Literal["parallel", "sequential"] = "parallel"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    rounds: int = Field(20, ge=1, le=MAX_COUNT)
    speed_profile: str = Field("uniform", max_length=10_000)
    eval_every: int = Field(5, ge=0, le=MAX_COUNT)
    # clustering only; unset: the method's own (its ``run_defaults``). See Federation.evaluate.
    evaluation: Literal["fmcsc", "global_kmeans", "argmax"] | None = None
    kmeans_n_init: int = Field(10, ge=1, le=1000)
    stop: StopConfig = StopConfig()
    pretrain: PretrainConfig = PretrainConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    tracking: TrackingConfig = TrackingConfig()
    fault: FaultConfig = FaultConfig()
    model_selection: ModelSelectionConfig = ModelSelectionConfig()
    restart: int = Field(0, ge=0, le=1000)  # set by model selection: which restart this is (seeds the models)
    # The method's own section, validated by the method's Config model (see fedsim.methods).
    method_params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("client_ratio")
    @classmethod
    def _ratio_shape(cls, v: str) -> str:
        if not re.fullmatch(r"\d+(:\d+){1,2}", v.strip()):
            raise ValueError(f"'{shorten(v, 40)}' is not a ratio; use F:S such as '2:1' or F:M:S such as '1:1:1'")
        return v.strip()

    @model_validator(mode="after")
    def _cross_checks(self) -> "ExperimentConfig":
        if self.pretrain.enabled and self.pretrain.client >= self.num_clients:
            raise ValueError(f"pretrain.client={self.pretrain.client} but there are only {self.num_clients} clients")
        if self.fault.kill_client is not None and self.fault.kill_client >= self.num_clients:
            raise ValueError(f"fault.kill_client={self.fault.kill_client} is not a client id")
        if self.round_order == "sequential" and self.mode != "sync":
            raise ValueError(f"round_order=sequential needs mode=sync (got mode={self.mode})")
        if self.stop.rule == "sim_time" and self.stop.sim_time_budget <= 0:
            raise ValueError("stop.rule=sim_time needs stop.sim_time_budget > 0")
        return self

    @property
    def pretrain_rounds(self) -> int:
        if not self.pretrain.enabled:
            return 0
        return self.rounds if self.pretrain.rounds is None else self.pretrain.rounds

    def to_dict(self) -> dict[str, Any]:
        """The config as the user writes it: the method section under the method's name."""
        data = self.model_dump(mode="json")
        data[self.method] = data.pop("method_params")
        return data


# ---------------------------------------------------------------------------------------------
# Loading and overrides


class ConfigLoader(yaml.SafeLoader):
    """YAML with YAML 1.2 numbers: PyYAML's 1.1 rules read ``1:1:1`` as the base-60 integer 3661
    (a client ratio!) and ``1e-5`` as a string."""


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(0|[1-9][0-9_]*)$"), list("-+0123456789"))
ConfigLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


_YAML = "tag:yaml.org,2002:"
# The tags a config may carry: SafeLoader's own, plus the merge key ``<<`` and ``=``.
_SAFE_TAGS = {tag for tag in yaml.SafeLoader.yaml_constructors if tag} | {_YAML + "merge", _YAML + "value"}


def yaml_load(text: str, source: str = "the YAML") -> Any:
    """Parse ``text`` (a config file or a ``--set`` value) into plain Python values.

    Raises ``yaml.YAMLError`` for a syntax error, and ``ConfigError`` naming ``source`` for YAML
    that parses but is no config: python tags (``!!python/object``), other unknown tags, a key
    given twice in one mapping (YAML keeps only the last, silently), more than MAX_YAML_NODES
    values once aliases are expanded (an alias bomb: ``&a [*b, *b, ...]`` nested a few times
    names billions of values in a few hundred bytes), an alias inside what it names, or nesting
    deeper than MAX_YAML_DEPTH. All of this is checked on the composed node graph, in time
    linear in the text, before any Python value is built."""
    loader = ConfigLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(
                f"{source} nests deeper than {MAX_YAML_DEPTH} levels; a config is a few levels of mappings and lists"
            ) from None
        if node is None:
            return None
        _check_nodes(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, source: str) -> None:
    expanded: dict[int, int] = {}  # id(node) -> values it stands for, aliases expanded
    open_nodes: set[int] = set()

    def line(node: yaml.Node) -> str:
        return f"line {node.start_mark.line + 1}" if node.start_mark is not None else "?"

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in expanded:  # an alias: the node is shared, its size already known
            return expanded[key]
        if key in open_nodes:
            raise ConfigError(
                f"{source}: an alias refers to the mapping or list that contains it ({line(node)}); write the value out"
            )
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(
                f"{source} nests deeper than {MAX_YAML_DEPTH} levels ({line(node)}); a config is a "
                "few levels of mappings and lists"
            )
        tag = node.tag
        if tag.startswith(_YAML + "python/"):
            raise ConfigError(
                f"{source}: python tags such as '!!{shorten(tag.removeprefix(_YAML), 40)}' are not "
                f"allowed ({line(node)}); write the value as plain YAML"
            )
        if tag not in _SAFE_TAGS:
            raise ConfigError(
                f"{source}: unknown YAML tag '{shorten(tag, 40)}' ({line(node)}); remove it and "
                "write the value as plain YAML"
            )
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _YAML + "merge":
                    if (key_node.tag, key_node.value) in seen:
                        raise ConfigError(
                            f"{source}: key '{shorten(key_node.value, 40)}' appears twice in one "
                            f"mapping ({line(key_node)}); keep one"
                        )
                    seen.add((key_node.tag, key_node.value))
                total += size(key_node, depth + 1) + size(value_node, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item, depth + 1)
        if total > MAX_YAML_NODES:
            raise ConfigError(
                f"{source} stands for more than {MAX_YAML_NODES:,} values once its aliases (*name) are "
                f"expanded ({line(node)}); a config needs far fewer: remove the aliases"
            )
        open_nodes.discard(key)
        expanded[key] = total
        return total

    size(root, 0)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """' (line N): <what the parser says>' for a syntax error."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1})" if mark is not None else ""
    problem = getattr(exc, "problem", None) or ""
    return f"{where}{': ' + shorten(problem, 60) if problem else ''}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], parsed value). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"bad override '{shorten(text, 60)}': expected key=value, e.g. --set afmcc.alpha=0.1")
    key, raw = text.split("=", 1)
    key = key.strip()
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"override '{shorten(text, 40)}' is {len(text):,} characters long; a value that big "
            "belongs in the config file"
        )
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(
            f"bad override '{shorten(text, 60)}': '{shorten(key, 40)}' is not a dotted key such as afmcc.alpha"
        )
    try:
        value = yaml_load(raw, f"--set {shorten(key, 40)}") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"bad override: '{shorten('.'.join(path), 60)}' goes inside '{part}', which is not a section"
            )
        node = child
    node[path[-1]] = value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config (or grid) file as a mapping; every way a file can be unusable is a ConfigError."""
    p = Path(path)
    name = f"config file '{shorten_path(path, 100)}'"
    example = "pass a YAML file such as configs/afmcc/bdgp.yaml"
    if p.is_dir():
        raise ConfigError(f"{name} is a folder; {example}")
    if not p.is_file():
        raise ConfigError(f"{name} not found; {example}")
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{name} is {size:,} bytes; a config is a few KB (at most {MAX_CONFIG_BYTES:,}): {example}"
            )
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name} cannot be read ({shorten(exc.strerror or exc, 60)}); {example}") from None
    try:
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), raw.index(b"\0") + 1, "NUL byte")
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{name} is not UTF-8 text (a binary file?); {example}") from None
    try:
        data = yaml_load(text, name)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name} is not valid YAML{_yaml_problem(exc)}; fix the syntax") from None
    if data is None:
        raise ConfigError(
            f"{name} is empty; write at least the method and dataset keys (see configs/), or '{{}}' for all defaults"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must hold a YAML mapping of keys to values, not a {type(data).__name__}")
    return data


def build_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Apply ``key=value`` overrides to a raw mapping and validate it (method section included).

    ``raw`` is never modified: overrides go into a deep copy (a sweep builds every trial from one
    base mapping; a shallow copy let one trial's ``afmcc.*`` override leak into the next)."""
    data = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        _set_path(data, path, value)
    method = data.get("method", ExperimentConfig.model_fields["method"].default)
    if not isinstance(method, str):
        raise ConfigError(f"config key 'method': must be a method name such as afmcc (got {shorten(method)})")
    if len(method) > 100:
        raise ConfigError(f"unknown method '{shorten(method, 40)}'; see README.md for the method names")

    from fedsim.methods import config_keys, method_names  # the registry and sources only: no torch

    # Everything but the method's own values is checked before the method's module (and torch
    # with it, seconds) is imported: a misspelt key (``--set mod=async``, ``afmcc.lrr=1``) and
    # every top-level value answer at once.
    names = method_names()
    known = set(ExperimentConfig.model_fields) | set(names)
    for key in data:
        if key not in known:
            raise ConfigError(_unknown_key(str(key), ExperimentConfig.model_fields))
    if method not in names:
        raise ConfigError(f"unknown method '{shorten(method, 40)}'; available: {', '.join(names)}")
    section = data.pop(method, None) or {}
    # One file may configure several methods (a grid switches ``method``): drop the others.
    for other in names:
        if other != method and isinstance(data.get(other), dict):
            data.pop(other)
    if not isinstance(section, dict):
        raise ConfigError(f"'{method}' must be a section of {method} hyper-parameters")
    keys = config_keys(method)
    for key in section if keys is not None else ():
        if key not in keys:
            raise ConfigError(_unknown_key(f"{method}.{key}", keys))
    try:
        ExperimentConfig.model_validate({**data, "method_params": {}})
    except ValidationError as exc:
        raise ConfigError(_first_error(exc, model=ExperimentConfig)) from None

    from fedsim.methods import get_method  # late: a method's module imports torch

    method_cls = get_method(method)
    # The run settings the method's paper needs (pretraining, evaluation protocol, stop rule)
    # go under the user's values: the core's own defaults name no method's protocol.
    data = _merged(copy.deepcopy(method_cls.run_defaults), data)
    try:
        params = method_cls.Config.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc, prefix=method, model=method_cls.Config)) from None
    _check_method_params(method, params)
    data["method_params"] = params.model_dump(mode="json")
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc, model=ExperimentConfig)) from None
    _check_finite(cfg.model_dump(exclude={"method_params"}), "")
    return cfg


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, section by section (``base`` is modified and returned)."""
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merged(base[key], value)
        else:
            base[key] = value
    return base


def _check_method_params(method: str, params: BaseModel) -> None:
    """Rules every method's section follows, whatever its own ``Config`` says: numbers are
    finite (JSON, the config's form inside the actors, has no inf or nan: an ``afmcc.lr=.inf``
    arrived there as null) and layer widths (every ``list[int]`` field) are >= 1 (a width of 0
    builds a model with nothing in it, which trains to chance without an error)."""
    for name, field in type(params).model_fields.items():
        value = getattr(params, name)
        if field.annotation == list[int] and any(width < 1 for width in value):
            raise ConfigError(f"config key '{method}.{name}': layer widths must be >= 1 (got {shorten(value)})")
    _check_finite(params.model_dump(), method)


def _check_finite(value: Any, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{path}': must be a finite number (got {value})")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_finite(item, path)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    raw = load_yaml(path) if path is not None else {}
    return build_config(raw, overrides)


def method_config(cfg: ExperimentConfig) -> BaseModel:
    """The validated method section as its own pydantic model."""
    from fedsim.methods import get_method

    return get_method(cfg.method).Config(**cfg.method_params)


def _unknown_key(loc: str, allowed: Iterable[str]) -> str:
    """The message for an unknown key, with ``did you mean 'x'?`` when one allowed name is close."""
    name = loc.rpartition(".")[2]
    close = difflib.get_close_matches(name, list(allowed), n=1)
    hint = f"did you mean '{close[0]}'?" if close else "check the spelling against the config reference in README.md"
    return f"unknown config key '{shorten(loc, 60)}'; {hint}"


def _model_at(model: type[BaseModel] | None, path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the key at ``path`` (the error's loc without its last part)."""
    for part in path:
        if model is None:
            return None
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        if field is None:
            continue  # a list index or dict key: stay on the model found so far
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def _first_error(exc: ValidationError, prefix: str | None = None, model: type[BaseModel] | None = None) -> str:
    err = exc.errors()[0]
    loc = shorten(".".join(str(p) for p in err["loc"] if p != "__root__"), 60)
    if prefix:
        loc = f"{prefix}.{loc}" if loc else prefix
    msg = shorten(err["msg"].removeprefix("Value error, "), 200)
    if err["type"] == "extra_forbidden":
        holder = _model_at(model, tuple(err["loc"][:-1]))
        return _unknown_key(loc, holder.model_fields if holder is not None else ())
    where = f"config key '{loc}': " if loc else "config: "
    got = err.get("input")
    shown = (
        ""
        if isinstance(got, dict) or got is None
        else f" (got {shorten(got if not isinstance(got, str) else repr(got))})"
    )
    return f"{where}{msg}{shown}"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b": v} for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
