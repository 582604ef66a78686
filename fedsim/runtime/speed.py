"""Client compute-speed profiles: a multiplier m per client (a round takes cost / m).

Spelled in the config as ``speed_profile``:

- ``uniform``: every client m = 1.
- ``eo:E:O``: AFMCC Table 3d's E/O ratio, the compute power of even- to odd-indexed clients
  (fedsim's 0-based client ids): even clients m = E, odd clients m = O.
- ``list:m0,m1,...``: explicit, one per client.
- ``lognormal:SIGMA``: seeded draws m = exp(N(0, SIGMA^2)).
- ``uniform_random:LO:HI``: seeded draws from U(LO, HI).
"""

from __future__ import annotations

import numpy as np

from fedsim.errors import ConfigError

_EXAMPLES = "uniform, eo:3:1, list:1,0.5,2, lognormal:0.5 or uniform_random:0.5:2"


def _numbers(spec: str, parts: list[str]) -> list[float]:
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"speed_profile '{spec}': expected numbers after the profile name; use {_EXAMPLES}") from None
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
            raise ConfigError(f"speed_profile '{spec}' lists {speeds.size} speeds for {num_clients} clients; give one per client")
    elif name == "lognormal" and len(args) == 1:
        (sigma,) = _numbers(spec, args)
        speeds = np.exp(rng.normal(0.0, sigma, num_clients))
    elif name == "uniform_random" and len(args) == 2:
        lo, hi = _numbers(spec, args)
        if not 0 < lo <= hi:
            raise ConfigError(f"speed_profile '{spec}': need 0 < LO <= HI")
        speeds = rng.uniform(lo, hi, num_clients)
    else:
        raise ConfigError(f"unknown speed_profile '{spec}'; use {_EXAMPLES}")
    if np.any(speeds <= 0) or not np.all(np.isfinite(speeds)):
        raise ConfigError(f"speed_profile '{spec}': every speed multiplier must be a positive number")
    return speeds
