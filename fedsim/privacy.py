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

What is protected: each client's upload, one release per round, under adjacency that changes the
client's (clipped) update by at most C in L2 (the add/remove-one-contribution convention of Abadi
et al. and Opacus). All clients upload every round (full participation), so the sampling rate is
1 and there is no amplification by subsampling; the guarantee for ``releases`` uploads of one
client follows from RDP composition (Opacus' RDP accountant). If the neighbouring relation is
instead "any other dataset on that client" (replace-one), the sensitivity is 2C and the same
noise gives the guarantee of noise multiplier sigma / 2. Nothing here covers what the server or
other clients can infer from features, or the downloads.

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

import math
from dataclasses import dataclass

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedsim.errors import ConfigError

DEFAULT_DELTA = 1e-5
DEFAULT_CLIP_NORM = 1.0

# One upload per client per round, every client every round: no subsampling amplification.
_SAMPLE_RATE = 1.0


@dataclass(frozen=True)
class GaussianMechanism:
    """Clip a client's update to ``clip_norm`` and add N(0, (noise_multiplier * clip_norm)^2)."""

    clip_norm: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError(f"privacy clip_norm must be a positive number, got {self.clip_norm}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigError(
                f"privacy noise_multiplier must be a number >= 0, got {self.noise_multiplier}"
            )

    @classmethod
    def calibrate(
        cls, epsilon: float, delta: float, releases: int, clip_norm: float
    ) -> "GaussianMechanism":
        """The mechanism whose ``releases`` uploads together are (epsilon, delta)-DP.

        The noise multiplier is Opacus' ``get_noise_multiplier`` with its RDP accountant, sample
        rate 1 and ``steps = releases`` (the number of rounds a client uploads in). Opacus bisects
        until the accountant's epsilon lies at most 0.01 below the target.
        """
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ConfigError(f"privacy epsilon must be a positive number, got {epsilon}")
        if not 0 < delta < 1:
            raise ConfigError(f"privacy delta must lie strictly between 0 and 1, got {delta}")
        if isinstance(releases, bool) or not isinstance(releases, int) or releases < 1:
            raise ConfigError(
                f"privacy releases (rounds per client) must be an integer >= 1, got {releases}"
            )
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
                "reach (Opacus finds no noise multiplier up to 1e6); raise epsilon or delta, or "
                "lower the rounds"
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
                "start and end must be flat vectors of one length, "
                f"got shapes {start.shape} and {end.shape}"
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
        if not 0 < delta < 1:
            raise ConfigError(f"privacy delta must lie strictly between 0 and 1, got {delta}")
        if releases < 1:
            raise ConfigError(f"privacy releases must be at least 1, got {releases}")
        if self.noise_multiplier == 0:
            return math.inf
        accountant = RDPAccountant()
        accountant.history = [(self.noise_multiplier, _SAMPLE_RATE, releases)]
        return float(accountant.get_epsilon(delta=delta))
