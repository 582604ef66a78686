"""Tests for fedsim.privacy (Gaussian mechanism on client uploads, Opacus RDP accounting)."""

import math

import numpy as np
import pytest

from fedsim.errors import ConfigError
from fedsim.privacy import DEFAULT_CLIP_NORM, DEFAULT_DELTA, GaussianMechanism


def test_larger_epsilon_needs_less_noise() -> None:
    sigmas = [
        GaussianMechanism.calibrate(eps, DEFAULT_DELTA, 20, DEFAULT_CLIP_NORM).noise_multiplier
        for eps in (1.0, 10.0, 40.0)
    ]
    assert sigmas[0] > sigmas[1] > sigmas[2] > 0


def test_more_releases_need_more_noise() -> None:
    few = GaussianMechanism.calibrate(40.0, DEFAULT_DELTA, 20, 1.0).noise_multiplier
    many = GaussianMechanism.calibrate(40.0, DEFAULT_DELTA, 300, 1.0).noise_multiplier
    assert many > few


@pytest.mark.parametrize(("epsilon", "releases"), [(1.0, 50), (40.0, 20), (40.0, 300)])
def test_accountant_round_trip(epsilon: float, releases: int) -> None:
    mechanism = GaussianMechanism.calibrate(epsilon, DEFAULT_DELTA, releases, 1.0)
    spent = mechanism.spent_epsilon(releases, DEFAULT_DELTA)
    assert spent == pytest.approx(epsilon, rel=0.05)
    assert spent <= epsilon
    # Twice the releases spend more than the budget.
    assert mechanism.spent_epsilon(2 * releases, DEFAULT_DELTA) > epsilon


def test_one_release_matches_gaussian_rdp_by_hand() -> None:
    # Gaussian mechanism, sensitivity 1, noise multiplier s: RDP(alpha) = alpha / (2 s^2), and
    # epsilon = min over alpha of RDP(alpha) + log(1/delta) / (alpha - 1) (Mironov 2017, Prop. 3).
    # With s = 2, delta = 1e-5 the minimiser is alpha ~ 1 + sqrt(8 log(1e5)) ~ 10.6; Opacus
    # evaluates a grid of alphas (and the tighter conversion of Balle et al. 2020), so it is <=.
    sigma, delta = 2.0, 1e-5
    alphas = np.linspace(1.1, 63, 10_000)
    classic = float(np.min(alphas / (2 * sigma**2) + math.log(1 / delta) / (alphas - 1)))
    spent = GaussianMechanism(1.0, sigma).spent_epsilon(1, delta)
    assert spent <= classic + 1e-6
    assert spent > 0.8 * classic


def test_clipping_bounds_the_applied_update() -> None:
    rng = np.random.default_rng(0)
    start = rng.normal(size=1000).astype(np.float32)
    end = start + rng.normal(size=1000).astype(np.float32)  # update norm ~ 31.6
    released, info = GaussianMechanism(clip_norm=0.5, noise_multiplier=0.0).privatize(
        start, end, np.random.default_rng(1)
    )
    applied = released.astype(np.float64) - start
    assert np.linalg.norm(applied) == pytest.approx(0.5, rel=1e-4)
    assert info["update_norm"] == pytest.approx(np.linalg.norm(end.astype(np.float64) - start))
    assert info["clip_factor"] == pytest.approx(0.5 / info["update_norm"])
    assert info["noise_std"] == 0.0
    # Clipping scales, it does not turn the update.
    cosine = applied @ (end - start) / (np.linalg.norm(applied) * info["update_norm"])
    assert cosine == pytest.approx(1.0, abs=1e-5)


def test_small_update_passes_unclipped() -> None:
    start = np.zeros(4, dtype=np.float32)
    end = np.array([0.1, 0.0, -0.2, 0.0], dtype=np.float32)
    released, info = GaussianMechanism(1.0, 0.0).privatize(start, end, np.random.default_rng(0))
    np.testing.assert_allclose(released, end)
    assert info["clip_factor"] == 1.0
    assert released.dtype == np.float32


def test_noise_std_is_sigma_times_clip() -> None:
    size = 200_000
    start = np.full(size, 3.0, dtype=np.float32)
    mechanism = GaussianMechanism(clip_norm=2.0, noise_multiplier=0.75)
    released, info = mechanism.privatize(start, start, np.random.default_rng(0))
    noise = released.astype(np.float64) - start
    assert info["noise_std"] == pytest.approx(1.5)
    assert noise.std() == pytest.approx(1.5, rel=0.01)
    assert abs(noise.mean()) < 0.02


def test_seeded_reproducibility() -> None:
    start = np.zeros(100, dtype=np.float32)
    end = np.ones(100, dtype=np.float32)
    mechanism = GaussianMechanism(1.0, 1.3)
    first, _ = mechanism.privatize(start, end, np.random.default_rng(42))
    second, _ = mechanism.privatize(start, end, np.random.default_rng(42))
    other, _ = mechanism.privatize(start, end, np.random.default_rng(43))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_mismatched_vectors_raise() -> None:
    with pytest.raises(ValueError):
        GaussianMechanism(1.0, 1.0).privatize(
            np.zeros(3, np.float32), np.zeros(4, np.float32), np.random.default_rng(0)
        )


def test_zero_noise_spends_infinite_epsilon() -> None:
    assert GaussianMechanism(1.0, 0.0).spent_epsilon(1, DEFAULT_DELTA) == math.inf


@pytest.mark.parametrize(
    ("epsilon", "delta", "releases", "clip_norm"),
    [
        (0.0, 1e-5, 10, 1.0),
        (-1.0, 1e-5, 10, 1.0),
        (math.nan, 1e-5, 10, 1.0),
        (1.0, 0.0, 10, 1.0),
        (1.0, 1.0, 10, 1.0),
        (1.0, 1e-5, 0, 1.0),
        (1.0, 1e-5, 2.5, 1.0),
        (1.0, 1e-5, 10, 0.0),
        (1.0, 1e-5, 10, -2.0),
    ],
)
def test_bad_calibration_inputs_raise_config_error(
    epsilon: float, delta: float, releases: int, clip_norm: float
) -> None:
    with pytest.raises(ConfigError):
        GaussianMechanism.calibrate(epsilon, delta, releases, clip_norm)


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_unreachable_budget_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="out of reach"):
        GaussianMechanism.calibrate(1e-6, DEFAULT_DELTA, 300, 1.0)


def test_bad_mechanism_parameters_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        GaussianMechanism(clip_norm=1.0, noise_multiplier=-0.1)
    with pytest.raises(ConfigError):
        GaussianMechanism(clip_norm=0.0, noise_multiplier=1.0)
