"""Each algorithm's index over the K arms after t rounds, as in the paper's code
(proceduralia/randomist, `algorithms/`); the learner plays the argmax. Pure functions of
arrays, tested by hand in tests/test_randomist.py.

Returns lie in [low, high] (the LQG's normalised returns: [0, 1]). `scale` is Maestro's
`exploration` knob: it multiplies every exploration term and pseudo-reward count, and is 1
in the paper's settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from maestro.methods.randomist.estimators import effective_sample_size

LOW, HIGH = 0.0, 1.0  # the LQG's return range


@dataclass(frozen=True)
class RandomistIndex:
    """RANDOMIST's additive index, term by term:
    estimate + pseudo_mean + truncation_bias + concentration."""

    estimate: np.ndarray  # truncated MIS estimate mu
    pseudo_mean: np.ndarray  # mean of ceil(a ESS) Binomial(1/2) pseudo-rewards in [low, high]
    truncation_bias: np.ndarray  # sqrt(alpha log t / ESS)
    concentration: np.ndarray  # (high - low) sqrt(alpha d2 log t / t)

    def total(self) -> np.ndarray:
        return self.estimate + self.pseudo_mean + self.truncation_bias + self.concentration


def concentration(d2: np.ndarray, t: int, alpha: float) -> np.ndarray:
    """sqrt(alpha d2 log t / t): the MIS estimate's confidence width for returns in a unit
    range (log t taken at t >= 2, as everywhere here)."""
    return np.sqrt(alpha * np.asarray(d2) * math.log(max(t, 2)) / t)


def pseudo_reward_mean(n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mean of n Binomial(1/2) pseudo-rewards at `LOW` or `HIGH`, per arm (n >= 1)."""
    return LOW + (HIGH - LOW) * rng.binomial(n.astype(np.int64), 0.5) / n


def randomist(
    mu: np.ndarray, d2: np.ndarray, t: int, alpha: float, a: float, rng, scale: float = 1.0
) -> RandomistIndex:
    """RANDOMIST: the MIS estimate perturbed by ceil(a ESS) pseudo-rewards, plus the
    truncation bias and concentration terms. An arm no sample informs (ESS 0) gets an
    infinite index and is played."""
    ess = effective_sample_size(t, d2)
    with np.errstate(divide="ignore"):
        truncation_bias = scale * np.sqrt(alpha * math.log(max(t, 2)) / ess)
    n = np.maximum(np.ceil(scale * a * ess), 1.0)
    return RandomistIndex(
        estimate=mu,
        pseudo_mean=pseudo_reward_mean(n, rng),
        truncation_bias=truncation_bias,
        concentration=scale * (HIGH - LOW) * concentration(d2, t, alpha),
    )


def optimist(mu: np.ndarray, d2: np.ndarray, t: int, alpha: float, scale: float = 1.0):
    """OPTIMIST: the MIS estimate plus (high - low) (sqrt 2 + 1) sqrt(alpha d2 log t / t)."""
    return mu + scale * (HIGH - LOW) * (math.sqrt(2) + 1) * concentration(d2, t, alpha)


def ucb1(sums: np.ndarray, pulls: np.ndarray, t: int, alpha: float, scale: float = 1.0):
    """UCB1 on each arm's own returns: mean + (high - low) sqrt(alpha log t / (2 n))."""
    return sums / pulls + scale * (HIGH - LOW) * np.sqrt(alpha * math.log(max(t, 2)) / (2 * pulls))


def perturbed_history(sums: np.ndarray, pulls: np.ndarray, a: float, rng, scale: float = 1.0):
    """PHE on each arm's own returns: the mean of its n returns and ceil(a n)
    Binomial(1/2) pseudo-rewards."""
    n = np.ceil(scale * a * pulls)
    return (sums + n * pseudo_reward_mean(n, rng)) / (pulls + n)


def thompson(sums: np.ndarray, pulls: np.ndarray, rng, scale: float = 1.0):
    """Gaussian Thompson sampling: a draw from N(mean, ((high - low) / (n + 1))^2) per arm."""
    return rng.normal(sums / pulls, scale * (HIGH - LOW) / (pulls + 1))


def gp_posterior(
    x: np.ndarray, pulls: np.ndarray, sums: np.ndarray, length_scale: float, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation at every arm of a zero-mean GP over the arm
    means `x` (RBF kernel, unit signal variance, noise variance `noise`) fitted to every
    return seen, each at the mean of the arm that produced it. The n_k returns of arm k
    are one observation of their mean with noise variance noise / n_k: the same posterior
    as the t x t fit, from a K x K system."""
    seen = pulls > 0
    kernel = np.exp(-0.5 * ((x[:, None] - x[None, :]) / length_scale) ** 2)
    if not seen.any():
        return np.zeros(len(x)), np.ones(len(x))
    k_seen = kernel[np.ix_(seen, seen)] + np.diag(noise / pulls[seen])
    k_cross = kernel[:, seen]
    mean = k_cross @ np.linalg.solve(k_seen, sums[seen] / pulls[seen])
    variance = 1.0 - np.einsum("ij,ji->i", k_cross, np.linalg.solve(k_seen, k_cross.T))
    return mean, np.sqrt(np.clip(variance, 0.0, None))


def gp_ucb(mean: np.ndarray, sd: np.ndarray, t: int, alpha: float, scale: float = 1.0):
    """GP-UCB: posterior mean + sqrt(2 alpha log t) posterior standard deviation."""
    return mean + scale * math.sqrt(2 * alpha * math.log(max(t, 2))) * sd
