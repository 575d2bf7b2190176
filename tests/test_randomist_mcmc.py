"""MCMC-RANDOMIST and PGPE (docs/methods/randomist_mcmc.md): the Metropolis-Hastings chain
against analytic values, the density of the maximum against Monte Carlo, the continuous
CartPole against gymnasium's CartPole, a checkpointed trial against one that never
stopped, and PGPE's update by hand. No Ray: everything here is the trial's pure state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from maestro.envs.continuous_control import (
    PROBLEMS,
    ContinuousCartPole,
    episode_return,
    make_env,
)
from maestro.methods.randomist.compact import (
    MediatorHistory,
    metropolis_hastings,
    pgpe_update,
)
from maestro.methods.randomist.estimators import gaussian_pdf
from maestro.methods.randomist.mcmc import MCMCConfig, TrialState, play, plot_average_returns
from maestro.spec import load_spec

from .conftest import REPO

# ---------------------------------------------------------------- Metropolis-Hastings


def test_chain_on_a_gaussian_has_the_analytic_acceptance_rate_and_mean():
    # Target N(m, s^2), random-walk proposal std q. At stationarity the acceptance rate is
    # (2/pi) arctan(2 s / q) (s = 1, q = 2.5: 0.4296). The chain starts at m. Monte-Carlo
    # spread of 20000 correlated steps (measured over 200 seeds): 0.0038 for the acceptance
    # rate, 0.014 for the mean; the tolerances are 3 of those.
    m, s, q, steps = 1.5, 1.0, 2.5, 20000
    calls = []

    def log_density(x):
        calls.append(x[0])
        return -0.5 * ((x[0] - m) / s) ** 2

    chain, accepted = metropolis_hastings(
        log_density, np.array([m]), np.array([q]), steps, np.random.default_rng(7)
    )
    assert chain.shape == (steps + 1, 1) and chain[0, 0] == m
    assert len(calls) == steps + 1  # no box: every proposal is evaluated
    assert accepted / steps == pytest.approx(2 / math.pi * math.atan(2 * s / q), abs=0.012)
    assert chain[:, 0].mean() == pytest.approx(m, abs=0.045)
    assert chain[:, 0].std() == pytest.approx(s, abs=0.05)
    # A move is a move: the chain changes exactly `accepted` times.
    assert np.count_nonzero(np.diff(chain[:, 0])) == accepted


def test_proposals_outside_the_box_are_rejected_without_evaluating_them():
    # N(0, 1) restricted to [0, inf) by the box: the chain samples the half-normal,
    # mean sqrt(2/pi) = 0.798 (rejecting outside keeps the proposal symmetric; clipping
    # onto the edge would pile mass at 0). Monte-Carlo spread of the mean: 0.011.
    evaluated = []

    def log_density(x):
        evaluated.append(x[0])
        return -0.5 * x[0] ** 2

    chain, _ = metropolis_hastings(
        log_density,
        np.array([0.5]),
        np.array([1.0]),
        20000,
        np.random.default_rng(3),
        lower=np.array([0.0]),
        upper=np.array([np.inf]),
    )
    assert min(evaluated) >= 0 and chain.min() >= 0
    assert chain[:, 0].mean() == pytest.approx(math.sqrt(2 / math.pi), abs=0.035)
    assert np.mean(chain[:, 0] == 0.0) == 0.0  # no mass stuck on the edge


def test_a_chain_leaves_a_point_of_zero_density_and_never_enters_one():
    def log_density(x):
        return -math.inf if x[0] < 1 else 0.0

    chain, accepted = metropolis_hastings(
        log_density, np.array([0.0]), np.array([2.0]), 200, np.random.default_rng(0)
    )
    first = np.argmax(chain[:, 0] >= 1)
    assert first > 0 and accepted > 0 and np.all(chain[first:, 0] >= 1)


# ---------------------------------------------------------------- the density of the maximum


def by_hand_terms(means, params, returns, std, theta, alpha, a):
    """c and n of `theta` from the formulas, with normalised Gaussian densities."""
    means, params, returns = (np.asarray(x, dtype=float) for x in (means, params, returns))
    t = len(returns)
    dens = lambda x, mean: np.prod(gaussian_pdf(x, mean, std), axis=-1)  # noqa: E731
    mixture = np.mean([dens(params, m) for m in means], axis=0)
    d2 = 1 / np.mean([np.exp(-np.sum(((theta - m) / std) ** 2)) for m in means])
    ess = t / d2
    cap = math.sqrt(d2 * t / (alpha * math.log(max(t, 2))))
    mu = np.mean(np.minimum(dens(params, theta) / mixture, cap) * returns)
    log_t = math.log(max(t, 2))
    centre = mu + math.sqrt(alpha * log_t / ess)
    return centre, math.ceil(a * ess)


def monte_carlo_prob_max(centre, count, rivals, width, rng, draws):
    """Frequency of theta's index being >= every rival's, and its standard error."""
    mine = centre + width * rng.binomial(count, 0.5, draws) / count
    best = np.full(draws, -np.inf)
    for c, n in rivals:
        best = np.maximum(best, c + width * rng.binomial(n, 0.5, draws) / n)
    p = float(np.mean(mine >= best))
    return p, math.sqrt(p * (1 - p) / draws)


def test_density_of_the_maximum_on_two_executed_hyperpolicies():
    std = np.array([1.0])
    means, params, returns = [[0.0], [1.0]], [[0.3], [0.8]], [1.0, 3.0]
    alpha, a, width = 2.0, 1.1, 4.0
    history = MediatorHistory(std, capacity=2)
    for m, w, r in zip(means, params, returns, strict=True):
        history.add(np.array(m), np.array(w), r)
    rivals = history.rivals(alpha, a, width)
    # Each executed hyperpolicy's terms are the formulas' (its ESS: 1 + e^-1 = 1.368).
    for s, m in enumerate(means):
        centre, count = by_hand_terms(means, params, returns, std, np.array(m), alpha, a)
        assert rivals.centres[s] == pytest.approx(centre)
        assert rivals.counts[s] == count == 2
    rng = np.random.default_rng(11)
    for theta in ([0.5], [1.4], [-0.7]):
        theta = np.array(theta)
        centre, count = by_hand_terms(means, params, returns, std, theta, alpha, a)
        assert history.candidate(theta, alpha, a) == pytest.approx((centre, count))
        density = math.exp(history.log_prob_max(theta, rivals, alpha, a, width))
        pairs = list(zip(rivals.centres, rivals.counts, strict=True))
        p, se = monte_carlo_prob_max(centre, count, pairs, width, rng, 400_000)
        assert 0.02 < p < 0.98  # a case that tests something
        assert density == pytest.approx(p, abs=4 * se + 1e-12)


def test_density_of_the_maximum_on_a_longer_history_with_many_counts():
    # 40 rounds in 2-D: rivals with many different pseudo-reward counts, so the laid-out
    # cdf tables and their offsets are exercised.
    rng = np.random.default_rng(5)
    std = np.array([0.5, 2.0])
    history = MediatorHistory(std, capacity=40)
    for _ in range(40):
        mean = rng.uniform([-1, 0], [1, 6])
        param = mean + std * rng.standard_normal(2)
        history.add(mean, param, float(rng.uniform(0, 10) + 5 * param[0]))
    alpha, a, width = 2.0, 1.1, 20.0
    rivals = history.rivals(alpha, a, width)
    assert len(set(rivals.counts.tolist())) > 5
    pairs = list(zip(rivals.centres, rivals.counts, strict=True))
    best = history.means[np.argmax(rivals.centres)]
    for theta in (best, best + np.array([0.2, -0.5])):
        centre, count = history.candidate(theta, alpha, a)
        density = math.exp(history.log_prob_max(theta, rivals, alpha, a, width))
        p, se = monte_carlo_prob_max(centre, count, pairs, width, rng, 200_000)
        assert density == pytest.approx(p, abs=4 * se + 1e-12)
    # Far from every executed mean the ESS is 0: density 0.
    assert history.log_prob_max(np.array([1e3, 1e3]), rivals, alpha, a, width) == -math.inf


def test_incremental_history_matches_the_direct_sums():
    rng = np.random.default_rng(2)
    std = np.array([0.15, 3.0])
    history = MediatorHistory(std, capacity=30)
    means = rng.uniform([-1, 0], [1, 20], size=(30, 2))
    params = means + std * rng.standard_normal((30, 2))
    for m, w in zip(means, params, strict=True):
        history.add(m, w, 1.0)
    dens = np.exp(-0.5 * (((params[None, :, :] - means[:, None, :]) / std) ** 2).sum(-1))
    np.testing.assert_allclose(history.kernel[:30, :30], dens)
    np.testing.assert_allclose(history.mixture_sum[:30], dens.sum(axis=0))
    overlap = np.exp(-(((means[None] - means[:, None]) / std) ** 2).sum(-1))
    np.testing.assert_allclose(history.overlap_sum[:30], overlap.sum(axis=1))


# ---------------------------------------------------------------- environments


def test_continuous_cartpole_has_gymnasium_cartpole_physics_at_full_force():
    import gymnasium

    rng = np.random.default_rng(0)
    for seed in range(5):
        ours, theirs = ContinuousCartPole(), gymnasium.make("CartPole-v1").unwrapped
        obs, _ = ours.reset(seed=seed)
        reference, _ = theirs.reset(seed=seed)
        np.testing.assert_array_equal(obs, reference)
        for _ in range(100):
            push = int(rng.integers(2))  # 1: +10 N, 0: -10 N
            obs, reward, done, _, _ = ours.step(np.array([20.0 if push else -10.0]))
            reference, their_reward, their_done, _, _ = theirs.step(push)
            np.testing.assert_allclose(ours.state, theirs.state, rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(obs, reference, rtol=1e-6)
            assert (reward, done) == (their_reward, their_done)
            if done:
                break
        assert done  # random pushes drop the pole well within 100 steps


@pytest.mark.parametrize("name", ["mountain_car", "cartpole"])
def test_episode_return_is_the_gymnasium_episode(name):
    problem = PROBLEMS[name]
    rng = np.random.default_rng(1)
    for _ in range(6):
        weights = rng.uniform(problem.lower, problem.upper) + problem.std * rng.standard_normal(
            problem.state_dim
        )
        seed = int(rng.integers(2**32))
        env = make_env(name)
        obs, _ = env.reset(seed=seed)
        low, high = float(env.action_space.low[0]), float(env.action_space.high[0])
        total, steps, done = 0.0, 0, False
        while not done:
            action = sum(w * float(s) for w, s in zip(weights, obs, strict=True))
            obs, reward, terminated, truncated, _ = env.step(
                np.array([min(max(action, low), high)])
            )
            total += reward
            steps += 1
            done = terminated or truncated
        assert steps <= problem.horizon
        assert episode_return(name, weights, seed) == total


# ---------------------------------------------------------------- trials


def checkpoint_roundtrip(checkpoint: dict) -> dict:
    """What `ctx.checkpoint` then `ctx.restore` give back: JSON values through JSON."""
    values = {k: v for k, v in checkpoint.items() if not isinstance(v, bytes)}
    return {
        **json.loads(json.dumps(values)),
        **{k: v for k, v in checkpoint.items() if k not in values},
    }


@pytest.mark.parametrize(
    ("algorithm", "env", "rounds", "stop"),
    [("mcmc_randomist", "cartpole", 60, 25), ("pgpe", "mountain_car", 40, 15)],
)
def test_a_trial_continued_from_its_checkpoint_is_the_trial_that_never_stopped(
    algorithm, env, rounds, stop
):
    cfg = MCMCConfig(algorithm=algorithm, env=env, rounds=rounds, log_every=5, checkpoint_every=5)
    whole = TrialState.start(cfg, 4)
    assert list(play(cfg, whole)) == list(range(1, rounds + 1))

    halted = TrialState.start(cfg, 4)
    for t in play(cfg, halted):
        if t == stop:  # PGPE: in the middle of a pair
            break
    saved = checkpoint_roundtrip(halted.to_checkpoint())
    assert saved["round"] == stop
    continued = TrialState.from_checkpoint(cfg, saved)
    for _ in play(cfg, continued):
        pass
    np.testing.assert_array_equal(continued.returns, whole.returns)
    np.testing.assert_array_equal(continued.mean, whole.mean)
    assert (continued.accepted, continued.proposed) == (whole.accepted, whole.proposed)
    if algorithm == "mcmc_randomist":
        assert whole.proposed == 10 * (rounds - 1) and 0 < whole.accepted < whole.proposed
        np.testing.assert_array_equal(continued.history.kernel, whole.history.kernel)
        np.testing.assert_array_equal(
            continued.history.arrays()["means"], whole.history.arrays()["means"]
        )
    assert np.all(whole.mean >= PROBLEMS[env].lower) and np.all(whole.mean <= PROBLEMS[env].upper)


def test_pgpe_update_by_hand():
    # step = lr * eps * (R+ - R-) / (2 width) = 1 * [0.1, -2] * 40 / 200 = [0.02, -0.4]
    lower, upper = np.array([-1.0, 0.0]), np.array([1.0, 20.0])
    mean = pgpe_update(
        np.array([0.5, 1.0]), np.array([0.1, -2.0]), 60.0, 20.0, 1.0, 100.0, lower, upper
    )
    np.testing.assert_allclose(mean, [0.52, 0.6])
    # Clipped to the box; a worse plus side moves against eps.
    mean = pgpe_update(
        np.array([0.99, 0.1]), np.array([-0.1, 2.0]), 0.0, 100.0, 0.5, 100.0, lower, upper
    )
    np.testing.assert_allclose(mean, [1.0, 0.0])  # [0.99 + 0.025, 0.1 - 0.5], clipped


def test_pgpe_plays_pairs_of_mirrored_parameters():
    cfg = MCMCConfig(algorithm="pgpe", env="cartpole", rounds=4, learning_rate=0.5)
    state = TrialState.start(cfg, 9)
    list(play(cfg, state))
    # The same draws by hand: eps, a seed, a seed, update; eps, a seed, a seed, update.
    problem, rng, mean = PROBLEMS["cartpole"], np.random.default_rng(9), np.zeros(4)
    expected = []
    for _ in range(2):
        eps = np.array(problem.std) * rng.standard_normal(4)
        plus = episode_return("cartpole", mean + eps, int(rng.integers(2**32)))
        minus = episode_return("cartpole", mean - eps, int(rng.integers(2**32)))
        expected += [plus, minus]
        mean = np.clip(mean + 0.5 * eps * (plus - minus) / 400.0, problem.lower, problem.upper)
    np.testing.assert_array_equal(state.returns, expected)
    np.testing.assert_allclose(state.mean, mean)


def test_the_spec_and_its_presets_are_valid():
    for preset in ("smoke", "full"):
        spec = load_spec(REPO / "jobs" / "randomist" / "mcmc.yaml", preset=preset)
        assert spec.method == "randomist_mcmc"
        assert set(spec.arm_names()) == {"mcmc_car", "pgpe_car", "mcmc_cartpole", "pgpe_cartpole"}
        assert {claim.metric for claim in spec.claims} == {"final_average_return"}
    assert load_spec(REPO / "jobs" / "randomist" / "mcmc.yaml", preset="full").config.rounds == 5000


def test_the_plot_has_one_panel_per_problem():
    curves = {arm: np.cumsum(np.ones((3, 40)), axis=1) for arm in ("a", "b", "c")}
    figure = plot_average_returns(curves, {"a": "cartpole", "b": "mountain_car", "c": "cartpole"})
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == ["cartpole", "mountain car"]
    assert [len(axis.get_lines()) for axis in figure.axes] == [2, 1]
