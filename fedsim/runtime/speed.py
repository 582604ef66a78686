"""Client compute-speed profiles: a multiplier m per client (a round takes cost / m).

Spelled in the config as ``speed_profile``:

- ``uniform``: every client m = 1.
- ``eo:E:O``: AFMCC Table 3d's E/O ratio, the compute power of even- to odd-indexed clients
  (fedsim's 0-based client ids): even clients m = E, odd clients m = O.
- ``list:m0,m1,...``: explicit, one per client.
- ``lognormal:SIGMA``: seeded draws m = exp(N(0, SIGMA^2)), 0 <= SIGMA <= 3.
- ``uniform_random:LO:HI``: seeded draws from U(LO, HI).

Every multiplier must lie in [MIN_SPEED, MAX_SPEED]: a speed of 0 (``lognormal:1000``
underflows) or 1e56 makes the virtual clock meaningless without any error.
"""

from __future__ import annotations

import numpy as np

from fedsim.errors import ConfigError, shorten

MIN_SPEED, MAX_SPEED = 1e-6, 1e6
MAX_LOGNORMAL_SIGMA = 3.0
_EXAMPLES = "uniform, eo:3:1, list:1,0.5,2, lognormal:0.5 or uniform_random:0.5:2"


def _numbers(spec: str, parts: list[str]) -> list[float]:
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"speed_profile '{shorten(spec, 60)}': expected numbers after the profile name; use {_EXAMPLES}"
        ) from None
    if not all(np.isfinite(values)):
        raise ConfigError(f"speed_profile '{shorten(spec, 60)}': every number must be finite; use {_EXAMPLES}")
    return values


def speed_multipliers(spec: str, num_clients: int, seed: int) -> np.ndarray:
    name, _, rest = spec.strip().partition(":")
    args = [a for a in rest.replace(",", ":").split(":") if a] if rest else []
    rng = np.random.default_rng([seed, 0x5EED])
    if name == "uniform" and not args:
        speeds = np.ones(num_clients)
    elif name == "eo" and len(args) == 2:
        even, odd = _numbers(spec, args)
        speeds = np.array([even if c % 2 == 0 else odd for c in range(num_clients)], dtype=float)
    elif name == "list":
        speeds = np.array(_numbers(spec, args))
        if speeds.size != num_clients:
            raise ConfigError(
                f"speed_profile '{shorten(spec, 60)}' lists {speeds.size} speeds for {num_clients} clients; "
                "give one per client"
            )
    elif name == "lognormal" and len(args) == 1:
        (sigma,) = _numbers(spec, args)
        if not 0 <= sigma <= MAX_LOGNORMAL_SIGMA:
            raise ConfigError(
                f"speed_profile '{shorten(spec, 60)}': need 0 <= SIGMA <= {MAX_LOGNORMAL_SIGMA:g} "
                f"(exp(N(0, SIGMA^2)) spans ~e^(3 SIGMA) either way), e.g. lognormal:0.5"
            )
        speeds = np.exp(rng.normal(0.0, sigma, num_clients))
    elif name == "uniform_random" and len(args) == 2:
        lo, hi = _numbers(spec, args)
        if not 0 < lo <= hi:
            raise ConfigError(f"speed_profile '{shorten(spec, 60)}': need 0 < LO <= HI, e.g. uniform_random:0.5:2")
        speeds = rng.uniform(lo, hi, num_clients)
    else:
        raise ConfigError(f"unknown speed_profile '{shorten(spec, 60)}'; use {_EXAMPLES}")
    if not np.all((speeds >= MIN_SPEED) & (speeds <= MAX_SPEED)):  # NaN fails too
        bad = float(speeds[~((speeds >= MIN_SPEED) & (speeds <= MAX_SPEED))][0])
        raise ConfigError(
            f"speed_profile '{shorten(spec, 60)}' gives a speed multiplier of {bad:.3g}; every one must "
            f"be between {MIN_SPEED:g} and {MAX_SPEED:g}"
        )
    return speeds
