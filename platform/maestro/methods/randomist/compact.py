"""MCMC-RANDOMIST's mathematics for compact policy spaces (docs/methods/randomist_mcmc.md):
the executed history with its multiple-importance-sampling (MIS) terms kept up to date
round by round, the perturbed index of a hyperpolicy, the probability that it is the
maximum, a Metropolis-Hastings chain, and PGPE's update. Pure numpy and scipy; tested in
tests/test_randomist_mcmc.py.

Notation. After t rounds, hyperpolicy k = 1..t was nu_k = N(m_k, diag(std^2)); it drew
policy parameters w_k and its episode returned R_k. A candidate hyperpolicy nu_theta =
N(theta, diag(std^2)) is judged on all t samples through the mixture of the executed
hyperpolicies, Phi = (1/t) sum_k nu_k (balance heuristic):

    d2(theta)  = 1 / ((1/t) sum_k exp(-|(theta - m_k)/std|^2))    harmonic-mean bound on
                                                                  the 2-Renyi divergence
    ESS(theta) = t / d2(theta) = sum_k exp(-|(theta - m_k)/std|^2)
    M(theta)   = sqrt(d2 t / (alpha log t))                        truncation
    mu(theta)  = (1/t) sum_j min(nu_theta(w_j) / Phi(w_j), M) R_j   truncated MIS estimate
    c(theta)   = mu + sqrt(alpha log t / ESS)                     the truncation bias, as
                                                                  the official MCMC code
    n(theta)   = ceil(a ESS)
    index(theta) = c(theta) + r_min + width U / n,    U ~ Binomial(n, 1/2)

so the index adds to the corrected estimate the mean of n pseudo-rewards, each r_min or
r_max with probability 1/2 (width = r_max - r_min; log t is taken at t >= 2). The
hyperpolicies' indices are independent given the history, so the probability that theta's
index is at least every executed hyperpolicy's is

    P(theta) = sum_{i=0}^{n} Bin(i; n, 1/2) prod_{s=1}^{t} F_{n_s}(floor(n_s (c - c_s) / width
                                                                      + n_s i / n))

with F_m the cdf of Binomial(m, 1/2) (0 below 0, 1 from m on) and (c_s, n_s) the executed
hyperpolicies' own terms. It is computed in log space: a log-sum-exp over i of
log Bin(i; n, 1/2) + sum_s log F_{n_s}(...), the log-cdfs tabulated once per n from
scipy's log-pmf, so far tails stay finite and MH can compare two points that are both
unlikely.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp
from scipy.stats import binom

from maestro.methods.randomist.estimators import effective_sample_size, truncation_threshold

# Entries of the (i, s) matrix of P(theta) evaluated at once: bounds the memory of one
# evaluation (about 32 bytes an entry) when t and n reach thousands.
CHUNK_ENTRIES = 1 << 21


def metropolis_hastings(
    log_density: Callable[[np.ndarray], float],
    start: np.ndarray,
    proposal_std: np.ndarray,
    steps: int,
    rng: np.random.Generator,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """A random-walk Metropolis-Hastings chain: `steps` proposals x' = x + proposal_std * z
    (z standard normal), each accepted with probability min(1, p(x') / p(x)). A proposal
    outside the box [lower, upper] is rejected (its density is 0 there), which keeps the
    proposal symmetric. Every step draws d normals and one uniform, accepted or not.
    Returns the chain, (steps + 1, d) with `start` first, and how many were accepted."""
    current = np.array(start, dtype=float)
    current_log = log_density(current)
    chain = np.empty((steps + 1, len(current)))
    chain[0] = current
    accepted = 0
    for step in range(1, steps + 1):
        proposal = current + proposal_std * rng.standard_normal(len(current))
        uniform = rng.random()
        inside = (lower is None or np.all(proposal >= lower)) and (
            upper is None or np.all(proposal <= upper)
        )
        if inside:
            proposal_log = log_density(proposal)
            # Written so that -inf - -inf (nan) rejects and a finite point beats -inf.
            gain = proposal_log - current_log
            if gain >= 0 or uniform < math.exp(gain):
                current, current_log = proposal, proposal_log
                accepted += 1
        chain[step] = current
    return chain, accepted


def squared_distance(a: np.ndarray, b: np.ndarray, std: np.ndarray) -> np.ndarray:
    """sum_d ((a_d - b_d) / std_d)^2 over the last axis, one dimension at a time, so every
    element is the same number whatever shapes it is computed in (a restored history
    rebuilds its kernel bit for bit)."""
    total = np.zeros(np.broadcast_shapes(np.shape(a), np.shape(b))[:-1])
    for d in range(len(std)):
        z = (a[..., d] - b[..., d]) / std[d]
        total = total + z * z
    return total


class HalfBinomialLogCdf:
    """log P(Binomial(n, 1/2) <= k), tabulated for each n on first use: table(n)[k + 1]
    for k = -1..n (so -inf first, 0 last)."""

    def __init__(self) -> None:
        self.tables: dict[int, np.ndarray] = {}

    def table(self, n: int) -> np.ndarray:
        table = self.tables.get(n)
        if table is None:
            log_cdf = np.logaddexp.accumulate(binom.logpmf(np.arange(n + 1), n, 0.5))
            table = np.concatenate([[-np.inf], np.minimum(log_cdf, 0.0)])
            table[-1] = 0.0
            self.tables[n] = table
        return table


@dataclass
class Rivals:
    """The executed hyperpolicies' index terms in one round: centres c_s, pseudo-reward
    counts n_s, and their cdf tables laid end to end (`log_cdf[offsets[s] + k + 1]` is
    log F_{n_s}(k))."""

    centres: np.ndarray
    counts: np.ndarray
    log_cdf: np.ndarray
    offsets: np.ndarray


class MediatorHistory:
    """Every executed hyperpolicy mean m_k, the policy parameters w_k it drew and its
    return R_k, with the MIS terms kept up to date as rounds are added (a round adds
    O(t d)):

    - `kernel[k, j] = exp(-|(w_j - m_k)/std|^2 / 2)`: nu_k(w_j) up to the constant every
      hyperpolicy shares (it cancels in every ratio);
    - `mixture_sum[j] = sum_k kernel[k, j]`: t Phi(w_j), up to that constant;
    - `overlap_sum[s] = sum_k exp(-|(m_s - m_k)/std|^2)`: ESS of executed hyperpolicy s.
    """

    def __init__(self, std: np.ndarray, capacity: int):
        self.std = np.asarray(std, dtype=float)
        d = len(self.std)
        self.means = np.empty((capacity, d))
        self.params = np.empty((capacity, d))
        self.returns = np.empty(capacity)
        self.kernel = np.empty((capacity, capacity))
        self.mixture_sum = np.empty(capacity)
        self.overlap_sum = np.empty(capacity)
        self.t = 0
        self.binomial = HalfBinomialLogCdf()

    def add(self, mean: np.ndarray, param: np.ndarray, reward: float) -> None:
        """Record that hyperpolicy N(mean, std) drew `param` and its episode returned `reward`."""
        t = self.t
        self.means[t], self.params[t], self.returns[t] = mean, param, reward
        self.kernel[t, : t + 1] = self.kernel_row(mean, t + 1)
        self.kernel[:t, t] = np.exp(
            -0.5 * squared_distance(self.params[t], self.means[:t], self.std)
        )
        self.mixture_sum[:t] += self.kernel[t, :t]
        self.mixture_sum[t] = self.kernel[: t + 1, t].sum()
        overlap = np.exp(-squared_distance(self.means[: t + 1], self.means[t], self.std))
        self.overlap_sum[:t] += overlap[:t]
        self.overlap_sum[t] = overlap.sum()
        self.t = t + 1

    def kernel_row(self, mean: np.ndarray, t: int | None = None) -> np.ndarray:
        """exp(-|(w_j - mean)/std|^2 / 2) for the first t samples j."""
        t = self.t if t is None else t
        return np.exp(-0.5 * squared_distance(self.params[:t], mean, self.std))

    def centres(self, kernel_rows: np.ndarray, ess: np.ndarray, alpha: float):
        """c = mu + sqrt(alpha log t / ESS) for hyperpolicies given by their kernel rows
        (m, t) over the samples and their ESS (m,)."""
        t = self.t
        d2 = t / ess
        cap = truncation_threshold(d2, t, alpha)
        weights = np.minimum(kernel_rows * (t / self.mixture_sum[:t]), cap[:, None])
        mu = weights @ self.returns[:t] / t
        return mu + np.sqrt(alpha * math.log(max(t, 2)) / ess)

    def rivals(self, alpha: float, a: float, width: float) -> Rivals:
        """The executed hyperpolicies' index terms (a round's O(t^2) work)."""
        t = self.t
        ess = effective_sample_size(t, t / self.overlap_sum[:t])
        centres = self.centres(self.kernel[:t, :t], ess, alpha)
        counts = np.ceil(a * ess).astype(np.int64)
        distinct, which = np.unique(counts, return_inverse=True)
        tables = [self.binomial.table(int(n)) for n in distinct]
        starts = np.concatenate([[0], np.cumsum([len(table) for table in tables])[:-1]])
        return Rivals(centres, counts, np.concatenate(tables), starts[which])

    def candidate(self, theta: np.ndarray, alpha: float, a: float):
        """theta's centre c and pseudo-reward count n; n = 0 where its ESS is 0 (theta is
        so far from every executed mean that no sample informs it)."""
        ess = float(np.exp(-squared_distance(self.means[: self.t], theta, self.std)).sum())
        if ess == 0.0:
            return math.nan, 0
        centre = self.centres(self.kernel_row(theta)[None, :], np.array([ess]), alpha)
        return float(centre[0]), int(math.ceil(a * ess))

    def log_prob_max(
        self, theta: np.ndarray, rivals: Rivals, alpha: float, a: float, width: float
    ) -> float:
        """log P(theta's index >= every executed hyperpolicy's index) (the module's formula)."""
        centre, count = self.candidate(theta, alpha, a)
        if count == 0:
            return -math.inf
        return log_prob_of_max(centre, count, rivals, width)

    def arrays(self) -> dict[str, np.ndarray]:
        """The history as arrays (a checkpoint's content); the kernel is rebuilt from them."""
        t = self.t
        return {
            "means": self.means[:t],
            "params": self.params[:t],
            "returns": self.returns[:t],
            "mixture_sum": self.mixture_sum[:t],
            "overlap_sum": self.overlap_sum[:t],
        }

    @classmethod
    def from_arrays(
        cls, std: np.ndarray, capacity: int, arrays: dict[str, np.ndarray]
    ) -> MediatorHistory:
        """The history `arrays()` gave, with room for `capacity` rounds. The running sums
        are restored as saved (summed again they could differ in the last bit)."""
        history = cls(std, capacity)
        t = len(arrays["returns"])
        for name in ("means", "params", "returns", "mixture_sum", "overlap_sum"):
            getattr(history, name)[:t] = arrays[name]
        for k in range(t):
            history.kernel[k, :t] = np.exp(
                -0.5 * squared_distance(history.params[:t], history.means[k], history.std)
            )
        history.t = t
        return history


def log_prob_of_max(centre: float, count: int, rivals: Rivals, width: float) -> float:
    """log sum_{i=0}^{n} Bin(i; n, 1/2) prod_s F_{n_s}(floor(n_s (c - c_s)/width + n_s i/n))
    for a candidate with centre c and count n against `rivals`."""
    shift = (centre - rivals.centres) / width  # (t,)
    counts = rivals.counts
    rows = max(1, CHUNK_ENTRIES // max(len(counts), 1))
    terms = []
    for first in range(0, count + 1, rows):
        i = np.arange(first, min(first + rows, count + 1))
        # n_s i / n exact whenever n divides n_s i: a rival equal to theta ties exactly.
        k = np.floor(counts * shift + counts * i[:, None] / count)
        k = np.clip(k, -1, counts).astype(np.int64)
        log_cdfs = rivals.log_cdf[rivals.offsets + k + 1].sum(axis=1)
        terms.append(binom.logpmf(i, count, 0.5) + log_cdfs)
    return float(logsumexp(np.concatenate(terms)))


def pgpe_update(
    mean: np.ndarray,
    noise: np.ndarray,
    return_plus: float,
    return_minus: float,
    learning_rate: float,
    width: float,
    lower: np.ndarray,
    upper: np.ndarray,
) -> np.ndarray:
    """PGPE with symmetric sampling and a fixed std (Sehnke et al. 2010): after the episodes
    of mean + noise and mean - noise, move the mean by
    learning_rate * noise * (R+ - R-) / (2 width) (returns normalised by the width of the
    return range), then clip it to the box."""
    step = learning_rate * np.asarray(noise) * (return_plus - return_minus) / (2 * width)
    return np.clip(np.asarray(mean) + step, lower, upper)
