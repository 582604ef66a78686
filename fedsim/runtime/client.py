"""Client actors: each hosts one or more simulated clients and their private data.

An actor loads the dataset itself and keeps only the shards of the clients it hosts, so raw
samples never leave it: what crosses the network is flat parameter buffers, losses, and at
evaluation time cluster assignments (and, only for the ``global_kmeans`` option, embeddings).
If the actor dies, Ray restarts it (``max_restarts``); ``__init__`` rebuilds its clients from
the same seeded partition, and each client resumes from the parameter server's copy of its
model, which every round starts from anyway, and from the state kept with its last upload
(optimiser, buffers, the method's own; see ``client_state``): a restarted client continues
exactly where it was.

Hosting several clients per actor keeps 48-client settings inside a small machine's memory
(an actor that imports torch costs ~310 MB). The actor is threaded, so Ray fetches the
arguments of its clients' queued rounds and evaluations while one computes; they compute one at
a time per CPU share it was given.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from fedsim.config import ExperimentConfig
from fedsim.errors import TrainingDiverged
from fedsim.methods import get_method
from fedsim.methods.base import LocalData, PeerModel, RoundContext, flat_parameters, load_flat_parameters
from fedsim.runtime import client_state
from fedsim.runtime.federation_data import load_federation
from fedsim.runtime.server import Snapshot, StoreEntry


def client_shard(dataset: Any, spec: Any, client_id: int, device: torch.device) -> LocalData:
    """Client ``client_id``'s private samples (its views only) and, for the classification task,
    its held-out test split, copied out of the loaded ``dataset`` onto ``device``."""

    def part(indices: np.ndarray) -> LocalData:
        views = {v: torch.from_numpy(np.ascontiguousarray(dataset.views[v][indices])).to(device) for v in spec.views}
        return LocalData(client_id, views, dataset.labels[indices].copy(), indices.copy())

    data = part(spec.indices)
    if spec.test_indices is not None:
        data.test = part(spec.test_indices)
    return data


def derive_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (numpy's SeedSequence, not Python's salted hash)."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def _computes(method: Callable[..., Any]) -> Callable[..., Any]:
    """An actor call that computes: it waits for one of the actor's compute slots."""

    @functools.wraps(method)
    def call(self: ClientActor, *args: Any, **kwargs: Any) -> Any:
        with self._compute:
            return method(self, *args, **kwargs)

    return call


@dataclass
class SimulatedClient:
    data: LocalData
    method: Any
    # None while not resident (``runtime.resident_clients``): rebuilt for the client's next round
    model: torch.nn.Module | None
    optimizer: torch.optim.Optimizer | None
    average: Any = None  # the method's ServerAverage, or None (peer aggregation)


class ClientActor:
    """Plain class; ``cluster.py`` wraps it with ``ray.remote`` and its resource request."""

    def __init__(
        self,
        config: dict[str, Any],
        client_ids: list[int],
        device: str = "cpu",
        run_tag: str = "fedsim",
        compute_slots: int = 1,
    ) -> None:
        from fedsim.runtime.telemetry import ClientTelemetry

        cfg = ExperimentConfig(**config)
        self.telemetry = ClientTelemetry(run_tag, cfg.num_clients)
        self.cfg = cfg
        # Ray sets OMP_NUM_THREADS from the actor's CPU share, which depends on the placement;
        # pinning the count keeps results independent of how clients were spread over actors.
        torch.set_num_threads(cfg.runtime.torch_threads)
        # Model-selection restarts draw new initialisations and batches; restart 0 keeps the seeds
        # of a run without restarts, so adding restarts never changes the first run.
        self._restart = (cfg.restart,) if cfg.restart else ()
        self.device = torch.device(device)
        dataset, specs = load_federation(cfg)
        self._shape = (dataset.view_dims, dataset.n_clusters)
        self.clients: dict[int, SimulatedClient] = {}
        # rounds each hosted client has trained in this process: a round whose state says
        # otherwise (this actor was restarted, or a round's upload was never committed) first
        # restores the state the parameter server kept with the client's last upload
        self._seq: dict[int, int] = {}
        # resident models, least recently trained first, and the clients in a round now (a
        # threaded actor runs several): only an idle client's model may be dropped
        self._resident: OrderedDict[int, None] = OrderedDict()
        self._busy: set[int] = set()
        self._lock = threading.Lock()
        # Rounds and evaluations compute ``compute_slots`` at a time (one per CPU share, see
        # cluster.compute_slots); Ray still fetches the arguments of the queued ones meanwhile.
        # All task threads computing at once cost 24-30 % more CPU per update on
        # bench_throughput's workload (their torch calls contend for the GIL and the caches),
        # and no result depends on the order.
        self._compute = threading.BoundedSemaphore(compute_slots)
        self._n_params: dict[int, int] = {}
        for cid in client_ids:
            client = self._fresh_client(cid, client_shard(dataset, specs[cid], cid, self.device))
            assert client.model is not None
            self.clients[cid] = client
            self._seq[cid] = 0
            self._n_params[cid] = sum(p.numel() for p in client.model.parameters())
            self._settle(cid)
        del dataset  # other clients' samples are dropped here
        # DP (fedsim.privacy): the driver calibrates each client's noise multiplier for its
        # release bound and passes it with every round; the actor clips and adds the noise
        self._private = cfg.privacy.enabled

    def _fresh_client(self, cid: int, data: LocalData) -> SimulatedClient:
        """Client ``cid`` before its first round: its method, its seeded model, a new optimiser."""
        method_cls = get_method(self.cfg.method)
        view_dims, n_clusters = self._shape
        method = method_cls(method_cls.Config(**self.cfg.method_params), view_dims, n_clusters, self.cfg.num_clients)
        model = method.build_model(seed=self._model_seed(cid)).to(self.device)
        return SimulatedClient(data, method, model, method.make_optimizer(model), method.server_average(model))

    def _resume(self, client_id: int, seq: int, state: dict[str, Any] | None) -> None:
        """Make client ``client_id``'s state the one after its ``seq``-th round (see client_state),
        rebuilding its model if it was not resident."""
        client = self.clients[client_id]
        if client.model is not None and self._seq[client_id] == seq:
            return
        if state is None:  # before its first round: a fresh client, as __init__ built it
            if seq:
                raise RuntimeError(f"client {client_id}: the state after round {seq} is missing")
            self.clients[client_id] = self._fresh_client(client_id, client.data)
        else:
            if state["seq"] != seq:
                raise RuntimeError(f"client {client_id}: got the state after round {state['seq']}, expected {seq}")
            if client.model is None:  # the parameters come from the store; the rest from ``state``
                client.model = client.method.build_model(seed=self._model_seed(client_id)).to(self.device)
                client.optimizer = client.method.make_optimizer(client.model)
            client_state.restore(state, client.model, client.optimizer, client.method, self.device)
        self._seq[client_id] = seq

    def _model_seed(self, client_id: int) -> int:
        return derive_seed(self.cfg.seed, 1, client_id, *self._restart)

    def _settle(self, client_id: int) -> None:
        """Client ``client_id`` has just trained (or been built): it becomes the most recently
        used resident, and past ``runtime.resident_clients`` the least recently used idle
        clients' models and optimisers are dropped (their next round rebuilds them)."""
        limit = self.cfg.runtime.resident_clients
        with self._lock:
            self._busy.discard(client_id)
            self._resident[client_id] = None
            self._resident.move_to_end(client_id)
            if limit is None:
                return
            for cid in [c for c in self._resident if c not in self._busy][: max(0, len(self._resident) - limit)]:
                del self._resident[cid]
                self.clients[cid].model = self.clients[cid].optimizer = None

    @contextmanager
    def _training(self, client_id: int) -> Iterator[None]:
        """Client ``client_id`` is in a round: its model may not be dropped until it ends."""
        with self._lock:
            self._busy.add(client_id)
        try:
            yield
        finally:
            self._settle(client_id)

    # -- set-up ---------------------------------------------------------------------------------
    def describe(self) -> dict[int, dict[str, Any]]:
        """Per hosted client: sample count, modalities, the virtual-clock cost of a round, and
        the Ray node the client runs on."""
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return {
            cid: {
                "n_samples": c.data.n_samples,
                "modalities": c.data.modalities,
                "round_cost": c.method.round_cost(c.data, self._peers_read(c.method)),
                "pretrain_cost": c.method.round_cost(c.data, 0),
                "num_parameters": self._n_params[cid],
                "metric_names": list(c.method.metric_names),
                "evaluates_aggregate": c.method.evaluates_aggregate,
                "server_average": c.average is not None,
                "max_peers": c.method.max_peers,
                "node_id": node,
            }
            for cid, c in self.clients.items()
        }

    def _peers_read(self, method: Any) -> int:
        """How many models a training round reads for peer aggregation (its own included)."""
        u = self.cfg.num_clients
        return u if method.max_peers is None else min(u, method.max_peers + 1)

    @_computes
    def initial_parameters(self, client_id: int) -> np.ndarray:
        client = self.clients[client_id]
        model = client.model if client.model is not None else client.method.build_model(self._model_seed(client_id))
        return flat_parameters(model).cpu().numpy()

    # -- one local round (AFMCC Alg. 2, or Alg. 1's pretraining when ``pretrain``) --------------
    @ray.method(num_returns=3)
    def run_round(
        self,
        client_id: int,
        round_: int,
        snapshot: Snapshot,
        pretrain: bool,
        slowdown: float,
        state_seq: int,
        state: dict[str, Any] | None,
        *params: Any,
        noise_multiplier: float | None = None,
    ) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
        """One local round. ``params`` are the flat buffers of ``snapshot.round_inputs(client_id, pretrain, ...)``,
        followed, for a method the server averages for, by the server's average of the snapshot
        (``ParameterServer.average``):
        the caller passes their refs as top-level arguments, so Ray fetches them before the
        round starts and no task thread of this (threaded) actor ever blocks in ``ray.get``.
        ``state`` is the client's state after its ``state_seq``-th round, as kept with its last
        upload (None before its first); the third return value is its state after this round.
        With privacy on, every upload (pretraining too) is a release: its update is clipped and
        noised at ``noise_multiplier``, the driver's calibration for this client. ``snapshot``
        holds the entries the round reads (the driver sends ``Snapshot.part``; a whole snapshot
        works too)."""
        # The actor's task threads are new OpenMP threads, whose thread count is a per-thread
        # setting: pin it here too, or a threaded actor's reductions split differently from a
        # one-client actor's and the losses differ in the last bits with the placement.
        torch.set_num_threads(self.cfg.runtime.torch_threads)
        with self._training(client_id):
            with self._compute:
                started = time.perf_counter()
                self._resume(client_id, state_seq, state)
                client = self.clients[client_id]
                assert client.model is not None and client.optimizer is not None
                averaged = client.average is not None and not pretrain
                downloads: tuple[Any, ...] = params
                weights: dict[int, float] = {}
                if averaged:
                    *stored, (values, taken, weights) = params
                    downloads = tuple(stored)
                inputs = snapshot.round_inputs(client_id, pretrain, client.average is not None, client.method.max_peers)
                peers = self._as_peers(inputs, downloads)
                own = next(p for p in peers if p.client_id == client_id)
                load_flat_parameters(client.model, own.params)
                downloaded = time.perf_counter()
                if averaged:
                    merged = client.average.merge(own.params, _as_tensor(values).to(self.device), taken)
                    load_flat_parameters(
                        client.model, client.method.start_from_average(client.model, client.data, merged)
                    )
                elif not pretrain:
                    aggregated, weights = client.method.aggregate(client.model, client.data, peers)
                    load_flat_parameters(client.model, aggregated)
                aggregated_at = time.perf_counter()
                # Only DP needs the round's starting point (it clips the update); skip the copy otherwise.
                mechanism = self._mechanism(noise_multiplier)
                start_params = flat_parameters(client.model).cpu().numpy() if mechanism is not None else None
                generator = torch.Generator().manual_seed(
                    derive_seed(self.cfg.seed, 2, client_id, round_, int(pretrain), *self._restart)
                )
                context = RoundContext(
                    round_,
                    "pretrain" if pretrain else "train",
                    self.cfg.pretrain_rounds if pretrain else self.cfg.rounds,
                )
                losses = client.method.train_round(client.model, client.optimizer, client.data, generator, context)
                trained_at = time.perf_counter()
                end_params = flat_parameters(client.model).cpu().numpy()
                info: dict[str, Any] = {"losses": losses, "aggregation_weights": weights}
                if mechanism is not None:
                    assert start_params is not None
                    # Fresh noise for every release: a training round by its round, a pretraining round
                    # (all have round 0) by the client's round count, and a model-selection restart by
                    # its index. Two releases sharing one noise vector would give away the difference of
                    # their updates exactly. A re-run of a lost round draws the same noise, so it
                    # releases the same vector again, which costs nothing.
                    seed = (
                        derive_seed(self.cfg.seed, 4, client_id, state_seq, *self._restart)
                        if pretrain
                        else derive_seed(self.cfg.seed, 3, client_id, round_, *self._restart)
                    )
                    end_params, info["privacy"] = mechanism.privatize(
                        start_params, end_params, np.random.default_rng(seed)
                    )
                    info["privacy"]["noise_multiplier"] = mechanism.noise_multiplier
                    load_flat_parameters(client.model, torch.from_numpy(end_params))
                state_after = client_state.capture(state_seq + 1, client.model, client.optimizer, client.method)
                compute = time.perf_counter() - started
            # Async mode: a client of relative speed m takes 1/m as long; it waits out the difference
            # so the asynchrony is real (and visible in the Ray dashboard's timeline).
            waited = compute * (slowdown - 1.0) if slowdown > 1.0 else 0.0
            if waited:
                time.sleep(waited)
            info.update(
                compute_s=compute,
                waited_s=waited,
                upload_bytes=int(end_params.nbytes),
                # models this round downloaded: 2 for a method the server averages for (its own
                # upload and the average), every client's for peer aggregation, 1 when pretraining
                downloaded_models=len(downloads) + int(averaged),
                # download_s: wrapping the already-fetched buffers (Ray fetched them before the call)
                download_s=downloaded - started,
                aggregate_s=aggregated_at - downloaded,
                train_s=trained_at - aggregated_at,
            )
            self.telemetry.on_round(client_id, info)
            self._seq[client_id] = state_seq + 1
            return end_params, info, state_after

    def _mechanism(self, noise_multiplier: float | None) -> Any:
        """The Gaussian mechanism for this round's upload, or None without privacy."""
        if not self._private:
            return None
        if noise_multiplier is None or not noise_multiplier > 0:
            raise RuntimeError(f"privacy is on but the round got noise multiplier {noise_multiplier}")
        from fedsim.privacy import GaussianMechanism

        return GaussianMechanism(self.cfg.privacy.clip_norm, noise_multiplier)

    def _as_peers(self, entries: list[StoreEntry], arrays: tuple[np.ndarray, ...]) -> list[PeerModel]:
        if len(entries) != len(arrays):
            raise ValueError(f"run_round got {len(arrays)} parameter buffers for {len(entries)} store entries")
        device = self.device
        return [
            PeerModel(e.client_id, e.version, e.modalities, _as_tensor(a).to(device), e.n_samples)
            for e, a in zip(entries, arrays)
        ]

    # -- evaluation (run on the parameter server's copy, so it is well defined mid-flight) ------
    # The evaluation calls take the client's flat buffer as a top-level argument (the caller passes
    # its ref, Ray passes the array), for the reason given in ``run_round``. A method whose class
    # sets ``evaluates_aggregate`` (FMCSC: one global model per view pattern, aggregated from
    # everyone's uploads) is evaluated on what ``aggregate`` makes of every client's latest
    # upload: the caller then also passes the snapshot and all its buffers.
    def _load_for_eval(
        self,
        client_id: int,
        params: np.ndarray,
        snapshot: Snapshot | None = None,
        peer_params: tuple[np.ndarray, ...] = (),
    ) -> tuple[SimulatedClient, torch.nn.Module]:
        torch.set_num_threads(self.cfg.runtime.torch_threads)  # per task thread, as in run_round
        client = self.clients[client_id]
        model = client.method.build_model(seed=0).to(self.device)
        load_flat_parameters(model, _as_tensor(params).to(self.device))
        if snapshot is not None:
            peers = self._as_peers(snapshot.round_inputs(client_id, False, False, client.method.max_peers), peer_params)
            aggregated, _ = client.method.aggregate(model, client.data, peers)
            load_flat_parameters(model, aggregated)
        return client, model

    def _finite(self, client_id: int, values: np.ndarray, what: str) -> np.ndarray:
        """Refuse a diverged model's output here, where the client is known, rather than as
        k-means' "Input contains NaN" traceback."""
        if not np.isfinite(values).all():
            method = self.cfg.method
            lr = f"--set {method}.lr=..." if hasattr(self.clients[client_id].method.cfg, "lr") else f"{method}'s rates"
            raise TrainingDiverged(
                f"training diverged: client {client_id}'s {what} hold NaN or inf; lower the learning rate "
                f"({lr}) or scale the data (--set preprocessing=minmax)"
            )
        return values

    @_computes
    def cluster(
        self,
        client_id: int,
        params: np.ndarray,
        centres: np.ndarray | None,
        n_clusters: int,
        n_init: int,
        seed: int,
        snapshot: Snapshot | None = None,
        *peer_params: np.ndarray,
    ) -> dict[str, Any]:
        """FMCSC evaluation step: k-means on the reference client's features (``centres`` None),
        or k-means initialised with the reference centres on any other client."""
        # imported here: scikit-learn adds ~1 s to an actor's start-up, and only this call needs it
        from fedsim.evaluation import kmeans_from_centres, reference_kmeans

        client, model = self._load_for_eval(client_id, params, snapshot, peer_params)
        features = self._finite(client_id, client.method.embed(model, client.data), "embeddings")
        out: dict[str, Any] = {"labels_true": client.data.labels, "indices": client.data.indices}
        if centres is None:
            out["labels_pred"], out["centres"] = reference_kmeans(features, n_clusters, seed=seed, n_init=n_init)
        else:
            out["labels_pred"] = kmeans_from_centres(features, centres, seed=seed)
        return out

    @_computes
    def embed(
        self, client_id: int, params: np.ndarray, snapshot: Snapshot | None = None, *peer_params: np.ndarray
    ) -> dict[str, Any]:
        client, model = self._load_for_eval(client_id, params, snapshot, peer_params)
        features = self._finite(client_id, client.method.embed(model, client.data), "embeddings")
        return {"features": features, "labels_true": client.data.labels, "indices": client.data.indices}

    @_computes
    def soft_assignments(
        self, client_id: int, params: np.ndarray, snapshot: Snapshot | None = None, *peer_params: np.ndarray
    ) -> dict[str, Any]:
        client, model = self._load_for_eval(client_id, params, snapshot, peer_params)
        p = client.method.soft_assignments(model, client.data)
        if p is None:
            raise ValueError(f"method '{self.cfg.method}' has no soft assignments; use evaluation=fmcsc")
        p = self._finite(client_id, p, "soft assignments")
        return {"probabilities": p, "labels_true": client.data.labels, "indices": client.data.indices}

    @_computes
    def classify(self, client_id: int, params: np.ndarray) -> dict[str, Any]:
        """Classification task: class probabilities on the client's held-out test split."""
        client, model = self._load_for_eval(client_id, params)
        test = client.data.test
        if test is None:
            raise ValueError("classification evaluation needs task=classification (a test split)")
        return {
            "probabilities": client.method.predict(model, test),
            "labels_true": test.labels,
            "indices": test.indices,
        }

    @_computes
    def final_extras(
        self, client_id: int, params: np.ndarray, snapshot: Snapshot | None = None, *peer_params: np.ndarray
    ) -> dict[str, Any]:
        """The method's optional label-free selection loss and extra metrics on this client."""
        client, model = self._load_for_eval(client_id, params, snapshot, peer_params)
        out: dict[str, Any] = {"n_samples": client.data.n_samples, "metrics": {}}
        selection = client.method.selection_loss(model, client.data)
        if selection is not None:
            out["metrics"]["selection_loss"] = float(selection)
        out["metrics"].update({k: float(v) for k, v in client.method.extra_metrics(model, client.data).items()})
        return out


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    # Arrays from the object store are read-only views; the parameters are only ever read from
    # them (aggregation writes a new tensor), so wrap without a copy and without the warning.
    if not array.flags.writeable:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(array)
    return torch.from_numpy(array)
