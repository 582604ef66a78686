"""Ray set-up and the placement of simulated clients onto actors and devices."""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import ray

from fedsim.config import ExperimentConfig
from fedsim.errors import RayStartError, shorten
from fedsim.runtime.client import ClientActor
from fedsim.runtime.names import client_actor_name

# Measured: an idle actor that imported torch costs ~310 MB RSS (~190 MB PSS).
ACTOR_BASE_BYTES = 350 * 2**20


def ensure_ray(cfg: ExperimentConfig) -> dict[str, Any]:
    """Connect to $RAY_ADDRESS / ``runtime.ray_address`` if given, else start a local Ray.

    Returns what the user needs to find the run: the dashboard address and whether we own Ray
    (and so must shut it down). Ray >= 2.60 enables token authentication: the dashboard wants
    the bearer token in ~/.ray/auth_token (see README).

    A local Ray listens on 127.0.0.1 only (``init_local_ray``): its GCS, raylet, workers,
    dashboard, agents and metrics. Its dashboard is at ``runtime.dashboard_port`` or, when that
    port is taken (another run's dashboard, any server), at a free port the OS picks, with a
    warning naming it. A cluster (``runtime.ray_address`` / $RAY_ADDRESS) keeps its own settings.
    A Ray that cannot start or be reached within ``runtime.start_timeout_s`` is one
    ``RayStartError`` line saying what to do, raised before any MLflow run opens."""
    if ray.is_initialized():
        return {"dashboard_url": None, "owned": False}
    address = cfg.runtime.ray_address or os.environ.get("RAY_ADDRESS")
    if address and address.strip() == "local":
        address = None  # Ray's own word for a fresh local Ray: ours, on 127.0.0.1
    timeout = cfg.runtime.start_timeout_s
    kwargs: dict[str, Any] = {"logging_level": "WARNING"}
    if address:
        named = "runtime.ray_address" if cfg.runtime.ray_address else "RAY_ADDRESS"
        try:
            context = _within(timeout, lambda: ray.init(address=address, **kwargs))
        except _StartTimeout:
            _shutdown_quietly()
            raise RayStartError(
                f"the Ray cluster at {named}='{shorten(address, 60)}' did not answer within {timeout:g} s "
                f"(runtime.start_timeout_s); check that it runs (ray status) and is reachable, or unset {named} for "
                "a local Ray"
            ) from None
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
            _shutdown_quietly()
            raise RayStartError(
                f"cannot reach the Ray cluster at {named}='{shorten(address, 60)}' ({_first_line(exc)}); start it "
                f"(ray start --head), fix {named}, or unset it for a local Ray"
            ) from None
    else:
        kwargs.update(include_dashboard=cfg.runtime.include_dashboard, dashboard_host=DASHBOARD_HOST)
        if cfg.runtime.include_dashboard:
            port = free_port(DASHBOARD_HOST, cfg.runtime.dashboard_port)
            if port != cfg.runtime.dashboard_port:
                _warn(
                    f"dashboard port {cfg.runtime.dashboard_port} is taken (another Ray's dashboard?); the Ray "
                    f"dashboard uses port {port} instead (runtime.dashboard_port picks one)"
                )
            kwargs["dashboard_port"] = port
        if cfg.runtime.num_cpus is not None:
            kwargs["num_cpus"] = cfg.runtime.num_cpus
        # address="local": always a fresh local Ray, never a stray cluster left by a crashed
        # run; to attach to a running cluster set RAY_ADDRESS (e.g. "auto" on its head node).
        started = time.time()
        try:
            context = _within(timeout, lambda: init_local_ray(**kwargs))
        except _StartTimeout:
            raise _timeout_error(timeout, started) from None
        except Exception as exc:  # noqa: BLE001 - Ray raises ValueError/Exception/RuntimeError alike
            _shutdown_quietly()
            if not cfg.runtime.include_dashboard or not _dashboard_trouble(exc):
                raise _start_error(exc) from None
            if _port_clash(exc):
                # taken between our probe and Ray's own check (a run starting beside this one)
                kwargs["dashboard_port"] = free_port(DASHBOARD_HOST, 0)
                _warn(
                    f"dashboard port {cfg.runtime.dashboard_port} was taken while Ray started; the Ray dashboard "
                    f"uses port {kwargs['dashboard_port']} instead"
                )
            else:
                _warn(
                    f"the Ray dashboard did not start ({_first_line(exc)}); running without it "
                    "(runtime.include_dashboard=false silences this)"
                )
                kwargs["include_dashboard"] = False
                kwargs.pop("dashboard_port")
            try:
                context = _within(max(1.0, timeout - (time.time() - started)), lambda: init_local_ray(**kwargs))
            except _StartTimeout:
                raise _timeout_error(timeout, started) from None
            except Exception as again:  # noqa: BLE001
                _shutdown_quietly()
                raise _start_error(again) from None
    url = getattr(context, "dashboard_url", None)
    if url and not url.startswith("http"):
        url = "http://" + url
    return {"dashboard_url": url or None, "owned": True}


DASHBOARD_HOST = LOCALHOST = "127.0.0.1"


def init_local_ray(**kwargs: Any) -> Any:
    """``ray.init`` of a fresh local Ray whose every server listens on 127.0.0.1 only.

    Ray binds its GCS, raylet, object manager, workers, dashboard agent (gRPC, HTTP and the
    Prometheus metrics export) and runtime-env agent to loopback when its node IP is a loopback
    address, and to all interfaces otherwise (measured with ``ss -ltnp``: see README, "What
    listens where"). ``ray.init(_node_ip_address="127.0.0.1")`` alone does not do it: Ray 2.60
    rewrites a loopback address to the machine's routable one (``services.
    resolve_ip_for_localhost``), except where Ray clusters are disabled, which is what
    ``ray_constants.ENABLE_RAY_CLUSTER`` says. So that flag is off for the duration of this one
    call (a local Ray is a one-node cluster; nothing else reads the flag meanwhile), and a Ray
    that still chose another address is named in a warning."""
    from ray._private import services  # Ray's own module: no stable API says "loopback only"

    constants = getattr(services, "ray_constants", None)
    saved = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if saved is not None:
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[union-attr]
    try:
        context = ray.init(address="local", _node_ip_address=LOCALHOST, **kwargs)
    finally:
        if saved is not None:
            constants.ENABLE_RAY_CLUSTER = saved  # type: ignore[union-attr]
    from ray._private import worker as ray_worker

    node_ip = getattr(getattr(ray_worker, "_global_node", None), "node_ip_address", None)
    if node_ip is not None and node_ip not in (LOCALHOST, "localhost", "::1"):
        _warn(
            f"Ray chose node address {node_ip} instead of 127.0.0.1: its servers listen on all interfaces "
            "(guarded by its token authentication); see README, 'What listens where'"
        )
    return context


class _StartTimeout(Exception):
    """Ray's start-up outlasted ``runtime.start_timeout_s``."""


def _within(timeout_s: float, start: Callable[[], Any]) -> Any:
    """``start()``, interrupted after ``timeout_s`` (raising ``_StartTimeout``).

    Ray's start-up waits in Python loops (for the GCS, the raylet, the dashboard), each with its
    own limit; on a loaded machine they added up to 4-5 minutes. A timer interrupts the main
    thread as Ctrl-C would (a SIGINT to that thread, under Python's default handler for the
    start-up); off the main thread (a Tune trial, a library caller) ``start`` runs
    unbounded, as Ray's own limits have it."""
    if threading.current_thread() is not threading.main_thread():
        return start()
    # Python's own handler for the duration: a SIGINT then ends blocking calls (sleep, select)
    # too, whatever handler an earlier caller in this process left installed. (Under another
    # handler only ``_thread.interrupt_main`` was safe, which waits for a blocking call to end:
    # in one test-suite run a faked 60 s start-up outlasted a 1.5 s limit that way.)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _interrupted_after(timeout_s, start)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _interrupted_after(timeout_s: float, start: Callable[[], Any]) -> Any:
    lock, state = threading.Lock(), {"done": False, "fired": False}

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    timer.start()
    try:
        result = start()
    except KeyboardInterrupt:
        with lock:
            state["done"] = True
        if state["fired"]:
            raise _StartTimeout() from None
        raise
    finally:
        timer.cancel()
    with lock:
        state["done"] = True
    if state["fired"]:  # fired as ``start`` returned: its interrupt is still on its way
        try:
            for _ in range(100):
                time.sleep(0.01)
        except KeyboardInterrupt:
            pass
        raise _StartTimeout()
    return result


def _timeout_error(timeout_s: float, started: float) -> RayStartError:
    """Stop what a local Ray started before it ran out of time (the processes this driver
    spawned since ``started``: ``ray.shutdown`` knows them only once ``ray.init`` returned)."""
    _shutdown_quietly()
    try:
        for child in psutil.Process().children(recursive=True):
            try:
                if child.create_time() >= started - 1 and "ray" in " ".join(child.cmdline()):
                    child.kill()
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return RayStartError(
        f"Ray did not start within {timeout_s:g} s (runtime.start_timeout_s; a loaded machine?); free CPU and memory "
        "or raise runtime.start_timeout_s, see /tmp/ray/session_latest/logs, or set RAY_ADDRESS to a running cluster"
    )


def free_port(host: str, port: int) -> int:
    """``port`` if it can be bound at ``host`` now (probed as Ray probes it, with SO_REUSEADDR,
    so a closed connection's TIME_WAIT does not count), else a free port the OS picks; 0 asks
    for the OS's pick directly."""
    if port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return port
            except OSError:
                pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception, short: Ray's start-up errors can carry the
    last 20 lines of a log."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {shorten(lines[0], 110) if lines else 'no message'}"


def _port_clash(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("bind", "occupied", "address already in use", "errno 98"))


def _dashboard_trouble(exc: BaseException) -> bool:
    return _port_clash(exc) or "dashboard" in str(exc).lower()


def _start_error(exc: BaseException) -> RayStartError:
    return RayStartError(
        f"Ray did not start ({_first_line(exc)}); see /tmp/ray/session_latest/logs, check free memory and /tmp "
        "space (df -h /tmp), or set RAY_ADDRESS to a running cluster"
    )


def _shutdown_quietly() -> None:
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - a half-started Ray: nothing more to stop
        pass


def _warn(message: str) -> None:
    print(f"fedsim: warning: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Placement:
    """Which clients each actor hosts and what it asks Ray for."""

    groups: list[list[int]]
    num_cpus: float
    num_gpus: float

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"


def plan_placement(
    cfg: ExperimentConfig,
    param_bytes: int,
    shard_bytes: int,
    available_cpus: float | None = None,
    available_gpus: float | None = None,
    available_memory: int | None = None,
) -> Placement:
    """Spread ``num_clients`` simulated clients over actors.

    Automatic (``runtime.clients_per_actor: null``): at most one actor per CPU (more actors than
    cores only add ~310 MB each and process start-up), never more than free memory allows, and
    on GPUs enough actors that each asks for at most one GPU. The actors' fractional CPUs add up
    to the CPUs available: more would leave actors pending forever without an error.
    """
    # (A sweep trial names its CPUs: its share of the cluster is its placement group's, and
    # the report outside that group, often "no CPU", is no business of it.)
    resources = {}
    if ray.is_initialized():
        named = cfg.runtime.num_cpus is not None or available_cpus is not None
        resources = ray.available_resources() if named else _settled_availability()
    total = ray.cluster_resources() if ray.is_initialized() else {}
    # Ray's report lacks the "CPU" key while no CPU is free, and lags by about a second after
    # a previous run's actors were killed. _settled_availability waits out that lag; if the key
    # is still missing the cluster's total is the figure left (os.cpu_count() is not: in a
    # container it can exceed what Ray was given, and actors asking for more than the cluster
    # has pend forever).
    cpus = (
        available_cpus
        if available_cpus is not None
        else (resources.get("CPU") or total.get("CPU") or len(os.sched_getaffinity(0)))
    )
    gpus = available_gpus if available_gpus is not None else (resources.get("GPU") or total.get("GPU", 0.0))
    memory = available_memory if available_memory is not None else psutil.virtual_memory().available
    if cfg.runtime.num_cpus is not None:
        cpus = cfg.runtime.num_cpus
    if cfg.runtime.num_gpus is not None:
        gpus = cfg.runtime.num_gpus
    u = cfg.num_clients
    # model + grads + Adam moments + a downloaded copy of every peer, plus the shard
    per_client = 4 * param_bytes + u * param_bytes + shard_bytes
    if cfg.runtime.clients_per_actor is not None:
        n_actors = math.ceil(u / cfg.runtime.clients_per_actor)
    else:
        by_memory = max(1, int(0.6 * memory // (ACTOR_BASE_BYTES + per_client)))
        n_actors = max(1, min(u, max(1, int(cpus)), by_memory))
        if gpus > 0:
            n_actors = max(n_actors, math.ceil(u / cfg.runtime.clients_per_gpu))
    n_actors = min(n_actors, u)
    groups = [list(range(u))[i::n_actors] for i in range(n_actors)]
    num_gpus = 0.0
    if gpus > 0:
        per_gpu = max(cfg.runtime.clients_per_gpu, math.ceil(u / gpus))
        num_gpus = min(1.0, max(len(g) for g in groups) / per_gpu)
    return Placement(groups=groups, num_cpus=max(cpus / n_actors, 0.01), num_gpus=num_gpus)


def _settled_availability(settle_s: float = 5.0) -> dict[str, float]:
    """``ray.available_resources()``, waiting (at most ``settle_s``) while it reports no CPU.

    Falling back to the cluster's total at once, as this once did, asked for CPUs a killed
    actor had not yet handed back: with one of them never handed back (seen once in CI) the new
    actors pended until the start-up timeout, run after run."""
    deadline = time.monotonic() + settle_s
    resources = ray.available_resources()
    while "CPU" not in resources and time.monotonic() < deadline:
        time.sleep(0.1)
        resources = ray.available_resources()
    return resources


def compute_slots(cfg: ExperimentConfig, placement: Placement) -> int:
    """How many of an actor's rounds and evaluations compute at once: one per share of
    ``runtime.torch_threads`` CPUs the actor was given, at least one."""
    return max(1, int(placement.num_cpus + 1e-9) // cfg.runtime.torch_threads)


def start_client_actors(
    cfg: ExperimentConfig, placement: Placement, run_tag: str, created: list[Any]
) -> dict[int, Any]:
    """Create the actors, appending each to ``created`` as soon as it exists (so the caller can
    stop them even if this is interrupted); returns the map client id -> hosting actor."""
    actors = created
    by_client: dict[int, Any] = {}
    remote_cls = ray.remote(ClientActor)
    config = cfg.model_dump(mode="json")
    for group in placement.groups:
        actor = remote_cls.options(
            num_cpus=placement.num_cpus,
            num_gpus=placement.num_gpus,
            max_restarts=cfg.runtime.max_actor_restarts,
            max_task_retries=0,  # the orchestrator re-runs a lost round itself, on the same snapshot
            # rounds of every hosted client (or as many as the driver hands ahead), plus evaluations
            max_concurrency=min(len(group), cfg.runtime.rounds_in_flight or len(group)) + 2,
            name=client_actor_name(run_tag, group, cfg.restart),
        ).remote(config, group, placement.device, run_tag, compute_slots(cfg, placement))
        actors.append(actor)
        for cid in group:
            by_client[cid] = actor
    return by_client


def stop_actors(actors: list[Any], wait_s: float = 30.0, held_cpus: float = 0.0) -> None:
    """Kill ``actors`` and wait (at most ``wait_s``) until Ray reports each one dead and the
    ``held_cpus`` they asked for free again.

    ``ray.kill`` only asks, and an actor reported dead can hold its CPUs a while longer (Ray
    frees them when the worker process is gone): a run that starts right after would otherwise
    plan its placement while the old actors still hold their CPUs. Every actor is killed even
    if one kill fails."""
    before = ray.available_resources().get("CPU", 0.0) if held_cpus > 0 else 0.0
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already dead or never created: nothing to stop
            pass
    deadline = time.monotonic() + wait_s
    for actor in actors:
        try:
            # A call on a killed actor fails with RayActorError once Ray has marked it dead.
            ray.get(actor.__ray_ready__.remote(), timeout=max(0.1, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - RayActorError is the expected outcome
            pass
    if held_cpus > 0:
        # Other runs sharing the cluster (Tune trials) may take CPUs meanwhile: bounded, best effort.
        target = min(ray.cluster_resources().get("CPU", 0.0), before + held_cpus) - 1e-6
        while ray.available_resources().get("CPU", 0.0) < target and time.monotonic() < deadline:
            time.sleep(0.1)
