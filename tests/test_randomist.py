"""RANDOMIST's estimators and indices against values computed by hand, the incremental MIS
state against the direct formulas, the LQG against its closed form, and what `aggregate`
logs and plots."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

import maestro.methods.randomist as randomist
from maestro import run
from maestro.envs.lqg import LQG1D, LQGConfig
from maestro.methods.randomist import indices, late_share, plotted_rounds
from maestro.methods.randomist.bandit import BanditState, simulate
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
from maestro.store import open_store


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
    mu, d2_state = state.estimates(alpha=2.0)
    ess = effective_sample_size(len(arms), d2_state)

    t = len(arms)
    counts = np.bincount(arms, minlength=len(means))
    dens = gaussian_pdf(np.array(omegas)[:, None], means[None, :], sigma)
    d2 = mixture_d2_bound(renyi_d2_gaussian(means[:, None], means[None, :], sigma), counts / t)
    weights = np.minimum(mis_weights(dens, counts), truncation_threshold(d2, t, 2.0))
    np.testing.assert_allclose(mu, weights.T @ np.array(rewards) / t)
    np.testing.assert_allclose(d2_state, d2)
    # Unplayed arms far from the data have tiny ESS; played ones nearly t.
    assert ess[-1] < 1 < ess[1] <= t
    # Truncation bites on the far arm: its weights are capped at M.
    assert weights[:, -1].max() <= truncation_threshold(d2, t, 2.0)[-1] + 1e-12


def test_curves_are_drawn_at_every_round_or_at_a_thousand_from_the_first_to_the_last():
    assert plotted_rounds(50).tolist() == list(range(1, 51))
    rounds = plotted_rounds(6000)
    assert len(rounds) == randomist.PLOT_POINTS == 1000
    assert rounds[0] == 1 and rounds[-1] == 6000 and (np.diff(rounds) > 0).all()


class RecordingTracker:
    """What `aggregate` logs on the run: metrics and artifacts."""

    def __init__(self):
        self.metrics: dict[int, dict[str, float]] = {}
        self.artifacts: dict[str, bytes] = {}

    def log_metrics(self, metrics, step, flush=False):
        self.metrics.setdefault(step, {}).update(metrics)

    def flush(self):
        pass

    def log_bytes(self, data, artifact_path):
        self.artifacts[artifact_path] = data


def test_aggregate_renders_each_plot_once_into_the_run_and_the_store(tmp_path, monkeypatch):
    cfg = RandomistConfig(rounds=2000, log_every=500)
    store = open_store(str(tmp_path))
    rng = np.random.default_rng(0)
    results = []
    for arm in ("ucb1", "optimist"):
        for seed in range(3):
            prefix = f"runs/x/trials/{arm}{seed}"
            for name in ("regret", "return_regret"):
                store.put_array(f"{prefix}/{name}.npy", rng.random(cfg.rounds).cumsum())
            results.append(SimpleNamespace(arm=arm, prefix=prefix))
    tracker = RecordingTracker()
    ctx = run.RunContext(SimpleNamespace(config=cfg), store, "runs/x", tracker)
    renders = []

    def figure_png(figure):
        renders.append(figure)
        return real_figure_png(figure)

    real_figure_png = run.figure_png
    monkeypatch.setattr(run, "figure_png", figure_png)
    randomist.aggregate(ctx, results)
    assert len(renders) == 2
    for name in ("cumulative_regret", "cumulative_return_regret"):
        png = tracker.artifacts[f"plots/{name}.png"]
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert store.get_bytes(f"runs/x/plots/{name}.png") == png
    assert sorted(tracker.metrics) == [500, 1000, 1500, 2000]
    assert set(tracker.metrics[2000]) == {
        f"regret{band}/{arm}" for band in ("", "_band") for arm in ("ucb1", "optimist")
    }


def hand_built_history() -> tuple[MediatorFeedback, list[int], list[float], list[float]]:
    """Five samples on a grid of four arms, arms 0 and 1 played."""
    means = np.array([-0.6, -0.4, -0.2, 0.0])
    state = MediatorFeedback(means, 0.15, capacity=5)
    arms, omegas, returns = [0, 1, 0, 1, 1], [-0.55, -0.42, -0.7, -0.3, -0.45], []
    for arm, omega, r in zip(arms, omegas, [0.9, 0.8, 0.7, 0.95, 0.85], strict=True):
        state.add(arm, omega, r)
        returns.append(r)
    return state, arms, omegas, returns


def test_the_randomist_index_is_the_papers_formula_term_by_term():
    state, arms, omegas, returns = hand_built_history()
    t, alpha, a = 5, 2.0, 1.1
    mu, d2 = state.estimates(alpha)
    # The estimate: truncated balance-heuristic MIS, written out.
    means, sigma = state.means, state.sigma
    dens = np.array([[gaussian_pdf(w, m, sigma) for m in means] for w in omegas])
    mixture = dens @ np.array([2, 3, 0, 0]) / t
    d2_by_hand = 1 / (
        np.array([0.4, 0.6]) / renyi_d2_gaussian(means[:, None], means[:2], sigma)
    ).sum(1)
    ratio = np.minimum(dens / mixture[:, None], np.sqrt(d2_by_hand * t / (alpha * math.log(t))))
    np.testing.assert_allclose(d2, d2_by_hand)
    np.testing.assert_allclose(mu, ratio.T @ np.array(returns) / t)

    index = indices.randomist(mu, d2, t, alpha, a, np.random.default_rng(7))
    ess = t / d2_by_hand
    n = np.ceil(a * ess)
    heads = np.random.default_rng(7).binomial(n.astype(int), 0.5)  # the same draw
    np.testing.assert_allclose(index.estimate, mu)
    np.testing.assert_allclose(index.pseudo_mean, heads / n)  # returns in [0, 1]
    np.testing.assert_allclose(index.truncation_bias, np.sqrt(alpha * math.log(t) / ess))
    np.testing.assert_allclose(index.concentration, np.sqrt(alpha * d2_by_hand * math.log(t) / t))
    np.testing.assert_allclose(
        index.total(),
        mu
        + heads / n
        + np.sqrt(alpha * math.log(t) / ess)
        + np.sqrt(alpha * d2_by_hand * math.log(t) / t),
    )
    # OPTIMIST: the estimate and (sqrt 2 + 1) times the concentration term.
    np.testing.assert_allclose(
        indices.optimist(mu, d2, t, alpha),
        mu + (math.sqrt(2) + 1) * np.sqrt(alpha * d2_by_hand * math.log(t) / t),
    )


def test_bandit_feedback_indices_by_hand():
    sums, pulls = np.array([1.5, 0.4]), np.array([2.0, 1.0])
    # UCB1: mean + sqrt(alpha log t / (2 n)), t = 3, alpha = 2
    np.testing.assert_allclose(
        indices.ucb1(sums, pulls, 3, 2.0),
        [0.75 + math.sqrt(math.log(3) / 2), 0.4 + math.sqrt(math.log(3))],
    )
    # PHE with a = 2.1: ceil(4.2) = 5 and ceil(2.1) = 3 pseudo-rewards.
    heads = np.random.default_rng(1).binomial([5, 3], 0.5)
    np.testing.assert_allclose(
        indices.perturbed_history(sums, pulls, 2.1, np.random.default_rng(1)),
        [(1.5 + heads[0]) / 7, (0.4 + heads[1]) / 4],
    )
    # Thompson: N(mean, (1 / (n + 1))^2)
    draw = np.random.default_rng(2).normal([0.75, 0.4], [1 / 3, 1 / 2])
    np.testing.assert_allclose(indices.thompson(sums, pulls, np.random.default_rng(2)), draw)


def test_the_gp_posterior_from_arm_means_equals_the_fit_on_every_return():
    x = np.array([-1.0, -0.5, 0.0, 0.5])
    rng = np.random.default_rng(0)
    arms = np.array([0, 0, 1, 3, 3, 3, 1])
    y = rng.uniform(size=len(arms))
    pulls = np.bincount(arms, minlength=4).astype(float)
    sums = np.bincount(arms, weights=y, minlength=4)
    noise = 0.01
    mean, sd = indices.gp_posterior(x, pulls, sums, 1.0, noise)

    def rbf(a, b):
        return np.exp(-0.5 * (a[:, None] - b[None, :]) ** 2)

    inputs = x[arms]  # one row per return, as the paper's code fits it
    gram = rbf(inputs, inputs) + noise * np.eye(len(arms))
    np.testing.assert_allclose(mean, rbf(x, inputs) @ np.linalg.solve(gram, y), atol=1e-9)
    cov = rbf(x, x) - rbf(x, inputs) @ np.linalg.solve(gram, rbf(inputs, x))
    np.testing.assert_allclose(sd, np.sqrt(np.diag(cov)), atol=1e-7)
    assert indices.gp_ucb(mean, sd, 7, 2.0) == pytest.approx(mean + math.sqrt(4 * math.log(7)) * sd)


def test_an_lqg_episode_returns_the_closed_form_value_in_expectation():
    # With a stabilising gain from x0 = 1 the state never reaches the clip at +-4, so
    # E[x_{h+1}^2] = (1 + theta)^2 E[x_h^2] + noise^2 and the expected normalised return is
    # sum_h gamma^h (1 - (q + r theta^2) E[x_h^2] / max_cost) / sum_h gamma^h.
    cfg = LQGConfig()
    theta, x0, episodes = -0.5, 1.0, 20000
    lqg = LQG1D(cfg)
    eps = np.random.default_rng(0).standard_normal((cfg.horizon, episodes))
    returns = lqg.returns(np.full(episodes, theta), x0, eps)
    second_moment, expected, discount = x0**2, 0.0, 1.0
    for _ in range(cfg.horizon):
        expected += discount * (
            1 - (cfg.q + cfg.r * theta**2) * second_moment / (0.9 * 16 + 0.9 * 16)
        )
        second_moment = (1 + theta) ** 2 * second_moment + cfg.noise_std**2
        discount *= cfg.gamma
    expected /= sum(cfg.gamma**h for h in range(cfg.horizon))
    error = returns.std() / math.sqrt(episodes)
    assert abs(returns.mean() - expected) < 4 * error
    assert 0 < error < 1e-4  # the noise matters, and 20000 episodes pin the mean down


def test_arm_values_peak_near_the_lqr_gain_and_the_start_state_is_the_seeds():
    cfg = RandomistConfig(value_samples=2000)
    state = BanditState.start(cfg, 0)
    assert state.x0 == BanditState.start(cfg, 0).x0 != BanditState.start(cfg, 1).x0
    assert -4 <= state.x0 <= 4
    best_gain = cfg.arm_means()[state.values.argmax()]
    # The LQR gain of x' = x + u, q = r = 0.9, gamma = 0.99 is about -0.61; gains above
    # 0 make the state grow to the clip.
    assert -0.8 < best_gain < -0.45
    assert state.values.min() < state.values.max() - 0.3


def test_late_share_by_hand():
    assert late_share(np.array([1.0, 2.0, 2.0, 2.0])) == 0.0  # constant after round 2
    assert late_share(np.arange(1.0, 9.0)) == 0.5  # linear
    assert late_share(np.zeros(4)) == 0.0


@pytest.mark.parametrize("algorithm", ["randomist", "optimist", "gpucb"])
def test_regret_grows_sublinearly_on_three_distinct_arms(algorithm):
    # gains -1, 0, 1
    cfg = RandomistConfig(algorithm=algorithm, rounds=400, num_arms=3, value_samples=2000)
    state = BanditState.start(cfg, 0)
    regret = np.fromiter(simulate(cfg, state), dtype=float)
    gaps = state.values.max() - state.values
    assert np.sort(gaps)[1] > 0.005  # three distinct arms
    assert np.all(np.diff(regret) >= -1e-12)
    # Learning: the second half of the rounds costs less regret than the first half, and
    # far less than playing the arms uniformly would.
    assert regret[-1] - regret[199] < regret[199]
    assert regret[-1] < 0.5 * 400 * gaps.mean()
    # The paper's regret adds 1 - J of each episode: at least the expected regret's
    # increments on average, plus the best arm's own shortfall.
    assert state.return_regret[-1] > regret[-1]


@pytest.mark.parametrize("algorithm", ["randomist", "ucb1", "gpucb", "thompson"])
def test_a_run_continued_from_its_checkpoint_is_the_run_that_never_stopped(algorithm):
    cfg = RandomistConfig(algorithm=algorithm, rounds=300, num_arms=7, value_samples=500)
    whole = BanditState.start(cfg, 3)
    expected = list(simulate(cfg, whole))

    halted = BanditState.start(cfg, 3)
    first = [regret for _, regret in zip(range(120), simulate(cfg, halted), strict=False)]
    checkpoint = halted.to_checkpoint()
    assert checkpoint["round"] == 120 and isinstance(checkpoint["arrays.npz"], bytes)
    continued = BanditState.from_checkpoint(cfg, checkpoint)
    rest = list(simulate(cfg, continued))
    assert first + rest == expected  # the same rounds, the same random draws
    np.testing.assert_array_equal(continued.regret, whole.regret)
    np.testing.assert_array_equal(continued.return_regret, whole.return_regret)
    np.testing.assert_array_equal(continued.pulls, whole.pulls)
