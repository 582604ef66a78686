"""Differential privacy for the parameters a client uploads (AFMCC App. C "Privacy", Fig. 5c).

AFMCC "adopt[s] differential privacy (Abadi et al., 2016) by injecting noise into the parameters
uploaded by clients" and reports Fig. 5c over the privacy bound epsilon (good accuracy at
epsilon = 40), without giving the mechanism, the clipping norm, delta or the accounting. fedsim
uses the Gaussian mechanism of Abadi et al. on each upload:

1. the client's update is ``delta = w_end - w_start``: the parameters after its local steps minus
   those it started the round from (the ones it received, which the server already knows);
2. ``delta`` is clipped to L2 norm at most ``clip_norm`` = C;
3. independent N(0, (sigma * C)^2) noise is added to every coordinate;
4. the client uploads ``w_start + noisy delta``.

What is protected: each client's uploads, under adjacency that changes the client's (clipped)
update by at most C in L2 (the add/remove-one-contribution convention of Abadi et al. and
Opacus). If the neighbouring relation is instead "any other dataset on that client"
(replace-one), the sensitivity is 2C and the same noise gives the guarantee of noise multiplier
sigma / 2. Every upload is a release at sampling rate 1 (no amplification by subsampling), and a
client's releases compose by RDP (Opacus' RDP accountant).

What counts as a release, and how many there are. A release is an upload the parameter server
commits, and so broadcasts to every client: training uploads and **pretraining uploads alike**
(AFMCC Alg. 1's pretrained model is every client's starting point). Pretraining uploads are
noised by the same mechanism: leaving them un-noised would release a function of the
pretraining clients' data with no noise at all (epsilon = infinity), so the run could not be
called DP. Model-selection restarts (``model_selection.runs``) are separate federations on the
same data, so their releases add up. A round whose actor is lost is re-run with the same seed
and the same noise, so it releases the same vector once; a round computed but not committed
(past ``stop.sim_time_budget``) never reaches the server and is not a release.

The count is bounded before the run starts (``release_bounds``), per client, from the stop rule,
and each client's noise multiplier is calibrated for its own bound: ``runs x (P_c + T_c)`` with
P_c its pretraining rounds (``pretrain.rounds`` for the pretraining client, or every client under
``schedule: chain``) and T_c its training uploads per federation:

- ``rounds``: T_c = ``rounds``, every mode.
- ``group``: sync: T_c = ``group_rounds`` (everyone trains in every synchronous round). Virtual
  and async: client c's k-th round ends k d_c after pretraining, d_c = round cost / speed; the
  run ends when the slowest group member ends its ``group_rounds``-th round, so
  T_c = floor(group_rounds x max_{g in group} d_g / d_c).
- ``sim_time``: rounds that would end after the budget B are not committed; pretraining ends at
  t0 (the pretraining rounds' durations, in order). Virtual and async: T_c = floor((B - t0) / d_c);
  sync (each round lasts as long as the slowest client's): T_c = floor((B - t0) / max_c d_c).

The driver also enforces T_c: a client that has made T_c training uploads starts no more rounds.
In virtual and sync mode and for ``rounds`` / ``sim_time`` that never changes a run (the stop
rule ends it first); under ``group`` in async mode, where real timing decides how many rounds a
fast client fits in, a client can reach T_c first and stop early (the result names it). A config
whose count cannot be bounded (a client whose rounds cost nothing under ``group`` / ``sim_time``)
or whose budget no noise multiplier up to 1e6 meets is refused before Ray starts.

After the run every client's releases are counted from the upload logs of all restarts and its
spent epsilon is Opacus' RDP accountant on (noise multiplier, sample rate 1, releases): logged
per client and as the maximum (result JSON ``privacy``, MLflow ``privacy_*`` metrics and the
``privacy_accounting.json`` table).

Not covered: what the simulator reads besides the uploads, which a real deployment would not
send: the evaluation (embeddings, cluster assignments, the reference client's k-means centres
handed to the others), the telemetry in the upload log (losses, Eq. 6 weights, the unclipped
update norm), and the choice among model-selection restarts (selection loss or ACC on the data).

The paper gives neither a clipping norm nor delta, so both are fedsim defaults:
``DEFAULT_DELTA`` = 1e-5 (below 1 / number of samples on every benchmark, the usual choice) and
``DEFAULT_CLIP_NORM`` = 1.0. Adam moves each coordinate by at most about lr per step, so an AFMCC
round of phi = 5 steps at lr = 3e-4 on the BDGP model (about 2e6 parameters, two modalities with
Input-512-128-20 encoders and mirrored decoders) changes the parameters by at most about
5 * 3e-4 * sqrt(2e6) ~ 2 in L2: C = 1 is of the same order, so clipping rescales updates by at
most a small factor. Once updates are clipped, the noise-to-signal ratio is about
sigma * sqrt(#parameters) whatever C is; C only trades clipping bias.

Measured (tune grids afmcc/fig5_privacy and afmcc/fig5_privacy_clip, reports/findings/): on BDGP
(2.1 M parameters) C = 1 gives chance level at every epsilon from 5 to 80, because the per-coordinate
noise std sigma * C (0.51-4.27) dwarfs the weights (RMS 0.026 at initialisation). C = 0.001 keeps
ACC 0.69-0.70 at epsilon 10 and 40 (seed 0; 0.788 without DP). C = 1 stays the default because
the paper gives no value; set ``privacy.clip_norm`` for Fig. 5c and report it with epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedsim.errors import ConfigError

if TYPE_CHECKING:
    from fedsim.config import ExperimentConfig

DEFAULT_DELTA = 1e-5
DEFAULT_CLIP_NORM = 1.0

# Every upload is released: no subsampling amplification.
_SAMPLE_RATE = 1.0
# Relative slack on the ratios the release bounds floor: the orchestrator adds round durations
# one by one, so its k-th round ends at k * d up to a few ulps.
_SLACK = 1e-9


@dataclass(frozen=True)
class GaussianMechanism:
    """Clip a client's update to ``clip_norm`` and add N(0, (noise_multiplier * clip_norm)^2)."""

    clip_norm: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError(f"privacy clip_norm must be a positive number, got {self.clip_norm}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigError(f"privacy noise_multiplier must be a number >= 0, got {self.noise_multiplier}")

    @classmethod
    def calibrate(
        cls,
        epsilon: float,
        delta: float,
        releases: int,
        clip_norm: float,
        fix: str = "lower the rounds",
    ) -> GaussianMechanism:
        """The mechanism whose ``releases`` uploads together are (epsilon, delta)-DP.

        The noise multiplier is Opacus' ``get_noise_multiplier`` with its RDP accountant, sample
        rate 1 and ``steps = releases`` (the uploads of one client, see ``release_bounds``).
        Opacus bisects until the accountant's epsilon lies at most 0.01 below the target.
        ``fix`` ends the error for an unreachable budget (what else to lower).
        """
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ConfigError(f"privacy epsilon must be a positive number, got {epsilon}")
        if not 0 < delta < 1:
            raise ConfigError(f"privacy delta must lie strictly between 0 and 1, got {delta}")
        if isinstance(releases, bool) or not isinstance(releases, int) or releases < 1:
            raise ConfigError(f"privacy releases (uploads per client) must be an integer >= 1, got {releases}")
        if not (math.isfinite(clip_norm) and clip_norm > 0):
            raise ConfigError(f"privacy clip_norm must be a positive number, got {clip_norm}")
        try:
            sigma = get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=_SAMPLE_RATE,
                steps=releases,
                accountant="rdp",
            )
        except ValueError as error:  # Opacus gives up beyond a noise multiplier of 1e6
            raise ConfigError(
                f"privacy epsilon={epsilon} with delta={delta} over {releases} releases is out of "
                f"reach (Opacus finds no noise multiplier up to 1e6); raise privacy.epsilon or "
                f"privacy.delta, or {fix}"
            ) from error
        return cls(clip_norm=clip_norm, noise_multiplier=float(sigma))

    def privatize(
        self, start: np.ndarray, end: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, float]]:
        """The vector to upload, ``start`` + clipped and noised ``end - start``, and what was done.

        ``start`` and ``end`` are a client's flat parameters at the start and the end of its
        round. The info dict holds ``update_norm`` (L2 norm of the raw update), ``clip_factor``
        (the factor in (0, 1] it was scaled by) and ``noise_std`` (per-coordinate noise std).
        """
        start = np.asarray(start, dtype=np.float32)
        end = np.asarray(end, dtype=np.float32)
        if start.ndim != 1 or start.shape != end.shape:
            raise ValueError(
                f"start and end must be flat vectors of one length, got shapes {start.shape} and {end.shape}"
            )
        update = end.astype(np.float64) - start
        update_norm = float(np.linalg.norm(update))
        clip_factor = min(1.0, self.clip_norm / update_norm) if update_norm > 0 else 1.0
        noise_std = self.noise_multiplier * self.clip_norm
        noise = rng.standard_normal(update.shape, dtype=np.float32)
        released = start + (update * clip_factor + noise_std * noise).astype(np.float32)
        info = {"update_norm": update_norm, "clip_factor": clip_factor, "noise_std": noise_std}
        return released, info

    def spent_epsilon(self, releases: int, delta: float) -> float:
        """Epsilon that Opacus' RDP accountant gives after ``releases`` uploads at this delta.

        Infinite when the noise multiplier is 0.
        """
        if releases < 1:
            raise ConfigError(f"privacy releases must be at least 1, got {releases}")
        return spent_epsilon(self.noise_multiplier, releases, delta)


def spent_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Opacus' RDP accountant after ``releases`` Gaussian releases of ``noise_multiplier`` at
    sample rate 1: 0 for no release, infinite for a release without noise."""
    if not 0 < delta < 1:
        raise ConfigError(f"privacy delta must lie strictly between 0 and 1, got {delta}")
    if releases < 0:
        raise ConfigError(f"privacy releases must be at least 0, got {releases}")
    if releases == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, _SAMPLE_RATE, releases)]
    return float(accountant.get_epsilon(delta=delta))


@dataclass(frozen=True)
class ReleaseBounds:
    """The most uploads each client can make, per federation (one model-selection restart).

    ``pretrain[c]`` + ``train[c]`` per federation, ``runs`` federations: ``total[c]`` in all.
    ``rule`` says in one line how ``train`` follows from the stop rule; ``durations`` are the
    virtual-clock round durations d_c (cost / speed) it used."""

    pretrain: tuple[int, ...]
    train: tuple[int, ...]
    runs: int
    rule: str
    durations: tuple[float, ...]
    round_costs: tuple[float, ...]
    pretrain_costs: tuple[float, ...]

    @property
    def total(self) -> tuple[int, ...]:
        return tuple(self.runs * (p + t) for p, t in zip(self.pretrain, self.train))


def _floor(x: float) -> int:
    return max(0, math.floor(x * (1 + _SLACK))) if x > 0 else 0


def release_bounds(
    cfg: ExperimentConfig,
    round_costs: Sequence[float],
    pretrain_costs: Sequence[float],
    speeds: Sequence[float],
) -> ReleaseBounds:
    """Each client's most uploads under ``cfg``'s stop rule, mode, pretraining and restarts
    (the derivation is in the module docstring). ``round_costs`` / ``pretrain_costs`` are the
    method's ``round_cost`` per client (as ``ClientActor.describe`` reports them), ``speeds``
    the clients' speed multipliers."""
    u = cfg.num_clients
    if not (len(round_costs) == len(pretrain_costs) == len(speeds) == u):
        raise ValueError(f"need {u} round costs, pretraining costs and speeds")
    rounds_p = cfg.pretrain_rounds
    chain = [cfg.pretrain.client]
    if cfg.pretrain.schedule == "chain" and rounds_p:
        chain = list(range(u))
    pretrain = [rounds_p if c in chain else 0 for c in range(u)]
    # the orchestrator's pretraining clock: each pretraining round after the other
    t0 = 0.0
    for c in chain:
        for _ in range(rounds_p):
            t0 = t0 + pretrain_costs[c] / speeds[c]
    durations = [float(cost / speed) for cost, speed in zip(round_costs, speeds)]
    stop, sync = cfg.stop, cfg.mode == "sync"
    train: list[int]
    if stop.rule == "rounds":
        train = [cfg.rounds] * u
        rule = f"stop.rule=rounds: rounds={cfg.rounds} training uploads each"
    elif stop.rule == "group":
        group = stop.members(u)
        if sync or not group:
            train = [stop.group_rounds if group else 0] * u
            rule = f"stop.rule=group, mode={cfg.mode}: stop.group_rounds={stop.group_rounds} each"
        else:
            _check_costs(durations, "group")
            longest = max(durations[g] for g in group)
            train = [_floor(stop.group_rounds * longest / d) for d in durations]
            rule = (
                f"stop.rule=group, mode={cfg.mode}: floor(stop.group_rounds={stop.group_rounds} x "
                "the slowest group member's round duration / the client's)"
            )
    else:
        budget = stop.sim_time_budget - t0
        _check_costs(durations, "sim_time")
        if sync:
            train = [_floor(budget / max(durations))] * u
            rule = (
                f"stop.rule=sim_time, mode=sync: floor((stop.sim_time_budget={stop.sim_time_budget:g} - "
                f"pretraining {t0:g}) / the slowest client's round duration)"
            )
        else:
            train = [_floor(budget / d) for d in durations]
            rule = (
                f"stop.rule=sim_time, mode={cfg.mode}: floor((stop.sim_time_budget="
                f"{stop.sim_time_budget:g} - pretraining {t0:g}) / the client's round duration)"
            )
    return ReleaseBounds(
        pretrain=tuple(pretrain),
        train=tuple(train),
        runs=cfg.model_selection.runs,
        rule=rule,
        durations=tuple(durations),
        round_costs=tuple(float(c) for c in round_costs),
        pretrain_costs=tuple(float(c) for c in pretrain_costs),
    )


def _check_costs(durations: Sequence[float], rule: str) -> None:
    for client, duration in enumerate(durations):
        if not (math.isfinite(duration) and duration > 0):
            raise ConfigError(
                f"client {client}'s rounds take {duration:g} simulated time, so stop.rule={rule} cannot "
                "bound its uploads for privacy; give every client samples, or use stop.rule=rounds"
            )


_FIX = {
    "rounds": "lower rounds, pretrain.rounds or model_selection.runs",
    "group": "lower stop.group_rounds, pretrain.rounds or model_selection.runs",
    "sim_time": "lower stop.sim_time_budget, pretrain.rounds or model_selection.runs",
}


@dataclass(frozen=True)
class PrivacyPlan:
    """Per client: its release bound and the noise multiplier calibrated for it (for one release
    where the bound is 0: such a client's rounds may still run, e.g. one that would end past
    the sim-time budget, but none is committed)."""

    epsilon: float
    delta: float
    clip_norm: float
    bounds: ReleaseBounds
    noise_multipliers: tuple[float, ...]

    def mechanism(self, client: int) -> GaussianMechanism:
        return GaussianMechanism(self.clip_norm, self.noise_multipliers[client])

    def account(self, releases: Sequence[int], capped: Sequence[int] = ()) -> dict[str, Any]:
        """The accounting of a finished run from each client's actual ``releases`` (all
        restarts): per client its releases, bound, noise multiplier and spent epsilon, and the
        maxima. More releases than the bound is a bug in the driver, never reported as DP."""
        if len(releases) != len(self.noise_multipliers):
            raise ValueError(f"{len(releases)} release counts for {len(self.noise_multipliers)} clients")
        clients = []
        for client, (count, bound, sigma) in enumerate(zip(releases, self.bounds.total, self.noise_multipliers)):
            if count > bound:
                raise RuntimeError(
                    f"client {client} made {count} releases, more than its bound {bound}: the "
                    "privacy accounting is void"
                )
            clients.append(
                {
                    "client": client,
                    "releases": int(count),
                    "bound": int(bound),
                    "noise_multiplier": float(sigma),
                    "epsilon": spent_epsilon(sigma, int(count), self.delta),
                }
            )
        return {
            "epsilon_target": self.epsilon,
            "delta": self.delta,
            "clip_norm": self.clip_norm,
            "accountant": "opacus rdp, sample rate 1",
            "bound_rule": self.bounds.rule,
            "runs": self.bounds.runs,
            "epsilon_max": max(c["epsilon"] for c in clients),
            "releases_max": max(c["releases"] for c in clients),
            "releases_total": sum(c["releases"] for c in clients),
            "capped_clients": sorted(int(c) for c in capped),
            "clients": clients,
        }


def plan_privacy(
    cfg: ExperimentConfig,
    round_costs: Sequence[float],
    pretrain_costs: Sequence[float],
    speeds: Sequence[float],
) -> PrivacyPlan:
    """Bound every client's releases (``release_bounds``) and calibrate its noise multiplier
    for its bound; a ``ConfigError`` names the fix where a budget is out of reach."""
    privacy = cfg.privacy
    bounds = release_bounds(cfg, round_costs, pretrain_costs, speeds)
    sigmas: dict[int, float] = {}
    for client, total in enumerate(bounds.total):
        steps = max(total, 1)
        if steps not in sigmas:
            fix = f"{_FIX[cfg.stop.rule]} (they bound client {client}'s releases)"
            sigmas[steps] = GaussianMechanism.calibrate(
                privacy.epsilon, privacy.delta, steps, privacy.clip_norm, fix=fix
            ).noise_multiplier
    return PrivacyPlan(
        epsilon=privacy.epsilon,
        delta=privacy.delta,
        clip_norm=privacy.clip_norm,
        bounds=bounds,
        noise_multipliers=tuple(sigmas[max(total, 1)] for total in bounds.total),
    )
