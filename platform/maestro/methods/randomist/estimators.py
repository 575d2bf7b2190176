"""RANDOMIST's estimators: truncated multiple importance sampling over Gaussian hyperpolicies
(Metelli et al. 2021, section 4; the formulas are in the package docstring). Pure
functions of arrays, tested by hand in tests/test_randomist.py."""

from __future__ import annotations

import math

import numpy as np


def gaussian_pdf(x: np.ndarray, mean: np.ndarray, sigma: float) -> np.ndarray:
    """Density of N(mean, sigma^2) at x (broadcasting)."""
    z = (np.asarray(x) - np.asarray(mean)) / sigma
    return np.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))


def renyi_d2_gaussian(mean_p: np.ndarray, mean_q: np.ndarray, sigma: float) -> np.ndarray:
    """Exponentiated 2-Renyi divergence d2(P||Q) = E_Q[(p/q)^2] of two Gaussians with the
    same sigma: exp((mean_p - mean_q)^2 / sigma^2)."""
    return np.exp((np.asarray(mean_p) - np.asarray(mean_q)) ** 2 / sigma**2)


def mixture_d2_bound(d2_to_arms: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Bound on d2(P || sum_k f_k Q_k) by the weighted harmonic mean of d2(P||Q_k).
    `d2_to_arms` is (..., K) (one row per P), `fractions` (K,) sums to 1."""
    return 1.0 / (np.asarray(fractions) / np.asarray(d2_to_arms)).sum(axis=-1)


def mis_weights(dens: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Balance-heuristic weights w_j(s) = nu_j(omega_s) / sum_k (n_k/t) nu_k(omega_s) for a
    (t, K) matrix of densities nu_k(omega_s) and the pull counts n_k (summing to t)."""
    counts = np.asarray(counts, dtype=float)
    mixture = dens @ (counts / counts.sum())
    return dens / mixture[:, None]


def truncation_threshold(d2: np.ndarray, t: int, alpha: float) -> np.ndarray:
    """M = sqrt(d2 t / (alpha log t)); log t is taken at t >= 2 to stay finite."""
    return np.sqrt(np.asarray(d2) * t / (alpha * math.log(max(t, 2))))


def effective_sample_size(t: int, d2: np.ndarray) -> np.ndarray:
    """ESS = t / d2."""
    return t / np.asarray(d2)


class MediatorFeedback:
    """Every (omega, reward) seen so far, with the densities of omega under every arm, for
    the truncated MIS estimates. The mixture's denominators are kept up to date
    incrementally, so a round costs O(t K)."""

    def __init__(self, means: np.ndarray, sigma: float, capacity: int):
        self.means = means
        self.sigma = sigma
        k = len(means)
        self.omegas = np.empty(capacity)
        self.dens = np.empty((capacity, k))  # nu_k(omega_s), from omegas
        self.mixture_sum = np.empty(capacity)  # sum_k n_k nu_k(omega_s)
        self.rewards = np.empty(capacity)
        self.counts = np.zeros(k)
        self.d2 = renyi_d2_gaussian(means[:, None], means[None, :], sigma)
        self.t = 0

    def add(self, arm: int, omega: float, reward: float) -> None:
        """Record that `arm` was played and produced (omega, reward)."""
        t = self.t
        self.counts[arm] += 1
        self.mixture_sum[:t] += self.dens[:t, arm]
        self.omegas[t] = omega
        self.dens[t] = gaussian_pdf(omega, self.means, self.sigma)
        self.mixture_sum[t] = self.dens[t] @ self.counts
        self.rewards[t] = reward
        self.t = t + 1

    def estimates(self, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """Truncated MIS estimate of every arm's value, and the bound d2 of every arm's
        divergence to the mixture of the arms played."""
        t = self.t
        d2 = mixture_d2_bound(self.d2, self.counts / t)
        weights = self.dens[:t] * (t / self.mixture_sum[:t])[:, None]
        clipped = np.minimum(weights, truncation_threshold(d2, t, alpha)[None, :])
        return clipped.T @ self.rewards[:t] / t, d2

    def arrays(self) -> dict[str, np.ndarray]:
        """What it has seen, as arrays (a checkpoint's content): the densities are not
        kept (K times the rest), `from_arrays` computes them again."""
        t = self.t
        return {
            "omegas": self.omegas[:t],
            "mixture_sum": self.mixture_sum[:t],
            "rewards": self.rewards[:t],
            "counts": self.counts,
        }

    @classmethod
    def from_arrays(
        cls, means: np.ndarray, sigma: float, capacity: int, arrays: dict[str, np.ndarray]
    ) -> MediatorFeedback:
        """The state `arrays()` gave, with room for `capacity` samples."""
        feedback = cls(means, sigma, capacity)
        t = len(arrays["rewards"])
        feedback.omegas[:t] = arrays["omegas"]
        for s, omega in enumerate(arrays["omegas"]):  # as `add` computed them, bit for bit
            feedback.dens[s] = gaussian_pdf(omega, means, sigma)
        feedback.mixture_sum[:t] = arrays["mixture_sum"]
        feedback.rewards[:t] = arrays["rewards"]
        feedback.counts = np.array(arrays["counts"], dtype=float)
        feedback.t = t
        return feedback
