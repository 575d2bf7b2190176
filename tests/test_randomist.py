"""RANDOMIST's estimators against values computed by hand, and the incremental MIS state
against the direct formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from maestro.methods.randomist import mean_and_band
from maestro.methods.randomist.bandit import BanditState, arm_values, simulate
from maestro.methods.randomist.config import RandomistConfig
from maestro.methods.randomist.estimators import (
    MediatorFeedback,
    effective_sample_size,
    gaussian_pdf,
    mis_weights,
    mixture_d2_bound,
    renyi_d2_gaussian,
    truncation_threshold,
)


def test_gaussian_divergence_by_hand():
    # d2 = exp((0 - 0.15)^2 / 0.15^2) = e
    assert renyi_d2_gaussian(0.0, 0.15, 0.15) == pytest.approx(math.e)
    assert renyi_d2_gaussian(0.3, 0.3, 0.15) == pytest.approx(1.0)
    assert gaussian_pdf(0.0, 0.0, 1.0) == pytest.approx(0.3989422804)


def test_mixture_bound_is_the_weighted_harmonic_mean():
    # 1 / (0.5 / 1 + 0.5 / e) = 1.462117...
    assert mixture_d2_bound(np.array([1.0, math.e]), np.array([0.5, 0.5])) == pytest.approx(
        1.4621171573
    )
    # All mass on one arm: the bound is that arm's divergence.
    assert mixture_d2_bound(np.array([3.0, 7.0]), np.array([0.0, 1.0])) == pytest.approx(7.0)


def test_balance_heuristic_weights_by_hand():
    dens = np.array([[0.2, 0.6], [0.4, 0.4]])
    counts = np.array([1, 3])
    # mixture = dens @ [1/4, 3/4] = [0.5, 0.4]
    expected = np.array([[0.4, 1.2], [1.0, 1.0]])
    np.testing.assert_allclose(mis_weights(dens, counts), expected)
    # Under the mixture the weights of each arm average to one when a sample is its own arm's.
    assert (np.array([0.25, 0.75]) @ expected.T).tolist() == pytest.approx([1.0, 1.0])


def test_truncation_and_effective_sample_size_by_hand():
    # M = sqrt(2 * 100 / (2 * ln 100)) = sqrt(21.7147...) = 4.65990...
    assert truncation_threshold(2.0, 100, 2.0) == pytest.approx(4.6599, abs=1e-4)
    assert effective_sample_size(100, 2.0) == pytest.approx(50.0)
    # log t is floored at t = 2 so the first rounds stay finite
    assert math.isfinite(float(truncation_threshold(1.0, 1, 2.0)))


def test_incremental_estimates_match_the_direct_formula():
    rng = np.random.default_rng(0)
    means = np.linspace(-1, 0, 7)
    sigma = 0.15
    state = MediatorFeedback(means, sigma, capacity=40)
    arms, omegas, rewards = [], [], []
    for _ in range(40):
        arm = int(rng.integers(3))  # only the first three arms are played
        omega = means[arm] + sigma * rng.standard_normal()
        reward = float(rng.uniform())
        state.add(arm, omega, reward)
        arms.append(arm)
        omegas.append(omega)
        rewards.append(reward)
    mu, ess = state.estimates(alpha=2.0)

    t = len(arms)
    counts = np.bincount(arms, minlength=len(means))
    dens = gaussian_pdf(np.array(omegas)[:, None], means[None, :], sigma)
    d2 = mixture_d2_bound(renyi_d2_gaussian(means[:, None], means[None, :], sigma), counts / t)
    weights = np.minimum(mis_weights(dens, counts), truncation_threshold(d2, t, 2.0))
    np.testing.assert_allclose(mu, weights.T @ np.array(rewards) / t)
    np.testing.assert_allclose(ess, t / d2)
    # Unplayed arms far from the data have tiny ESS; played ones nearly t.
    assert ess[-1] < 1 < ess[1] <= t
    # Truncation bites on the far arm: its weights are capped at M.
    assert weights[:, -1].max() <= truncation_threshold(d2, t, 2.0)[-1] + 1e-12


def test_mean_and_band():
    mean, half = mean_and_band(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5
    assert half == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)


@pytest.mark.parametrize("algorithm", ["randomist", "optimist"])
def test_regret_grows_sublinearly_on_three_distinct_arms(algorithm):
    # gains -1, -0.5, 0
    cfg = RandomistConfig(algorithm=algorithm, rounds=400, num_arms=3, value_samples=2000)
    values = arm_values(cfg)
    regret = np.fromiter(simulate(cfg, BanditState.start(cfg, 0), values), dtype=float)
    gaps = np.sort(values.max() - values)[1:]
    assert gaps.min() > 0.005  # three distinct arms
    assert np.all(np.diff(regret) >= 0)
    # Learning: the second half of the rounds costs less regret than the first half, and
    # far less than always playing a suboptimal arm would.
    assert regret[-1] - regret[199] < regret[199]
    assert regret[-1] < 0.5 * 400 * gaps.min()


def test_arm_values_peak_near_the_lqr_gain():
    cfg = RandomistConfig(value_samples=2000)
    values = arm_values(cfg)
    best_gain = cfg.arm_means()[values.argmax()]
    # The infinite-horizon LQR gain for a = b = q = r = 1 is -(sqrt(5) - 1) / 2 = -0.618.
    assert -0.8 < best_gain < -0.45
    assert values.min() < values.max() - 0.3


@pytest.mark.parametrize("algorithm", ["randomist", "ucb1", "thompson"])
def test_a_run_continued_from_its_checkpoint_is_the_run_that_never_stopped(algorithm):
    cfg = RandomistConfig(algorithm=algorithm, rounds=300, num_arms=7, value_samples=500)
    values = arm_values(cfg)
    whole = BanditState.start(cfg, 3)
    expected = list(simulate(cfg, whole, values))

    halted = BanditState.start(cfg, 3)
    first = [regret for _, regret in zip(range(120), simulate(cfg, halted, values), strict=False)]
    checkpoint = halted.to_checkpoint()
    assert checkpoint["round"] == 120 and isinstance(checkpoint["arrays.npz"], bytes)
    continued = BanditState.from_checkpoint(cfg, checkpoint)
    rest = list(simulate(cfg, continued, values))
    assert first + rest == expected  # the same rounds, the same random draws
    np.testing.assert_array_equal(continued.regret, whole.regret)
    np.testing.assert_array_equal(continued.pulls, whole.pulls)
