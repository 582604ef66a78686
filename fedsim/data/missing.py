"""Missing modalities: the FedMultimodal protocol that FedRecon evaluates under.

Paper: ../shared/papers/002_a151183d84f2fadb.txt (FedRecon), Sec. 5.1 "Modality Heterogeneity":
"We simulate missing modalities by modeling their availability using a Bernoulli distribution,
where each modality has an equal probability of being absent"; PROTOCOLS.md ("FedRecon"): one
Bernoulli(rho) draw per client per modality, applied to all of that client's samples.

The draw composes with the engine's F/M/S clients (``fedsim.data.partition``): a client can only
lose a modality it was given. If every modality a client holds is drawn absent, the client keeps
one of them (FedMultimodal keeps one modality so that no client is empty): the one whose uniform
draw was largest, which is a uniformly random choice among the client's modalities; so
the realised missing share of a modality is ``rho - rho**V / V`` for a client with V modalities,
a little below rho. A client's modalities are a per-client property: the platform's test split
(``split_train_test``, run after this) has the same modalities missing (the "dedicated" setting).

Seeded in its own stream (``np.random.default_rng([seed, MISSING_STREAM])``), so switching the
missing rate never changes the sample split or the F/M/S modality choice. Every client draws
one uniform per dataset modality, in client order, whether it holds the modality or not: the
draw of client c for modality v is the same for any client ratio, and for two rates
rho1 < rho2 a modality missing at rho1 is also missing at rho2 (nested missingness, so a
sweep over rho changes only what it has to; keeping the largest draw preserves that).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedsim.data.partition import ClientSpec
from fedsim.errors import ConfigError

MISSING_STREAM = 0x4D155  # "MISS": the seed-sequence key of this draw's stream


def client_kind(n_held: int, n_views: int) -> str:
    """F (every modality), S (one) or M (2..V-1), the partition's names."""
    if n_held == n_views:
        return "F"
    return "S" if n_held == 1 else "M"


def apply_missing_modalities(specs: list[ClientSpec], n_views: int, rho: float, seed: int) -> list[ClientSpec]:
    """Drop each client's modalities independently with probability ``rho`` (seeded).

    Returns new specs (``dataclasses.replace``) with the reduced ``views`` tuple and ``kind``
    recomputed from it (an F client that lost a modality of three is now an M client); every
    other field (indices, test indices) is unchanged. At least one modality is kept per client.
    """
    if not 0.0 <= rho < 1.0:
        raise ConfigError(f"missing_rate must be in [0, 1), got {rho}")
    if n_views < 1:
        raise ConfigError(f"a dataset needs at least 1 view, got n_views={n_views}")
    rng = np.random.default_rng([int(seed), MISSING_STREAM])
    # Drawn for the whole table at once so client c's draws never depend on other clients' views.
    uniforms = rng.random((len(specs), n_views))
    out: list[ClientSpec] = []
    for row, spec in enumerate(specs):
        held = tuple(spec.views)
        if any(not 0 <= v < n_views for v in held):
            raise ConfigError(f"client {spec.client_id} holds views {held}, but the dataset has {n_views}")
        kept = tuple(v for v in held if uniforms[row, v] >= rho)
        if not kept:  # all drawn absent: keep the held modality with the largest draw
            kept = (max(held, key=lambda v: uniforms[row, v]),)
        out.append(replace(spec, views=kept, kind=client_kind(len(kept), n_views)))
    return out


def realised_missing_rate(specs_before: list[ClientSpec], specs_after: list[ClientSpec]) -> float:
    """Share of (client, modality) pairs held before the draw and missing after it."""
    held = sum(len(s.views) for s in specs_before)
    kept = sum(len(s.views) for s in specs_after)
    return (held - kept) / held if held else 0.0
