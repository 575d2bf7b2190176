"""RANDOMIST: policy optimisation as online learning with mediator feedback.

Metelli, Papini, D'Oro, Restelli, "Policy Optimization as Online Learning with Mediator
Feedback", AAAI 2021 (arXiv:2012.08225); what Maestro runs of it: `docs/methods/randomist.md`.

Arms are K Gaussian hyperpolicies nu_k = N(mu_k, sigma^2) over the gain of a linear policy
on the 1-D LQG (`maestro.envs.lqg`). Each round the learner picks an arm, samples a gain
omega ~ nu_k, runs one episode and observes (omega, reward). Because omega is observed
(mediator feedback), every sample informs every arm through multiple importance sampling
with the balance heuristic:

    w_j(s) = nu_j(omega_s) / sum_k (n_k / t) nu_k(omega_s)
    mu_j   = (1/t) sum_s min(w_j(s), M_j) R_s,        M_j = sqrt(d2_j t / (alpha log t))

where d2_j bounds the exponentiated 2-Renyi divergence of nu_j to the mixture (harmonic
mean of the closed-form pairwise Gaussian divergences) and ESS_j = t / d2_j.

Algorithms (each index is maximised every round):
- `randomist`: perturbed history on the MIS estimate: ceil(a ESS) Binomial(1/2)
  pseudo-rewards, plus the truncation-bias term sqrt(alpha log t / ESS).
- `optimist`: MIS estimate + sqrt(alpha log t / ESS) (the paper's constant sqrt(2) + 4/3
  folded into `exploration`).
- `ucb1`: each arm's own mean + sqrt(2 log t / n).
- `phe`: perturbed history without importance sampling (own samples only).
- `thompson`: Gaussian Thompson sampling on each arm's own samples.

`exploration` scales each algorithm's exploration term (bonus, pseudo-reward ratio,
posterior width), so one number can be swept across algorithms.

The pipeline runs every (algorithm, seed) pair as a Ray task, stores each regret curve,
then logs mean cumulative regret with a 95% band per algorithm and the regret plot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from maestro.envs.lqg import LQG1D, LQGConfig
from maestro.methods import Method
from maestro.tracking import figure_png, step_axis

Algorithm = Literal["randomist", "optimist", "ucb1", "phe", "thompson"]
ALGORITHMS: tuple[str, ...] = ("randomist", "optimist", "ucb1", "phe", "thompson")


# ---------------------------------------------------------------- config


class RandomistConfig(BaseModel):
    """The spec's `config:` block for RANDOMIST."""

    model_config = ConfigDict(extra="forbid")

    algorithms: list[Algorithm] = Field(default_factory=lambda: list(ALGORITHMS), min_length=1)
    num_seeds: int = Field(default=10, ge=1)
    rounds: int = Field(default=2000, ge=2, description="T, episodes per run")
    num_arms: int = Field(default=49, ge=2)
    theta_min: float = -1.0
    theta_max: float = 0.0
    sigma: float = Field(default=0.15, gt=0, description="hyperpolicy standard deviation")
    alpha: float = Field(default=2.0, gt=0, description="confidence exponent: delta_t ~ t^-alpha")
    perturbation: float = Field(default=1.1, gt=0, description="a: pseudo-rewards per sample")
    # The theory's confidence terms over-explore at T of a few thousand; the same scale for
    # every algorithm keeps the comparison fair (jobs/randomist/sweep.yaml sweeps it).
    exploration: float = Field(default=0.3, ge=0, description="scales every exploration term")
    value_samples: int = Field(default=20000, ge=100, description="MC samples per arm value")
    log_every: int = Field(default=50, ge=1, description="rounds between logged points")
    lqg: LQGConfig = Field(default_factory=LQGConfig)

    @model_validator(mode="after")
    def _check(self) -> RandomistConfig:
        if self.theta_min >= self.theta_max:
            raise ValueError("theta_min must be below theta_max")
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ValueError("algorithms must not repeat")
        return self

    def arm_means(self) -> np.ndarray:
        """The hyperpolicy means: an even grid over [theta_min, theta_max]."""
        return np.linspace(self.theta_min, self.theta_max, self.num_arms)


# ---------------------------------------------------------------- estimators


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
        self.dens = np.empty((capacity, k))
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
        self.dens[t] = gaussian_pdf(omega, self.means, self.sigma)
        self.mixture_sum[t] = self.dens[t] @ self.counts
        self.rewards[t] = reward
        self.t = t + 1

    def estimates(self, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """Truncated MIS estimate of every arm's value, and every arm's ESS."""
        t = self.t
        d2 = mixture_d2_bound(self.d2, self.counts / t)
        weights = self.dens[:t] * (t / self.mixture_sum[:t])[:, None]
        clipped = np.minimum(weights, truncation_threshold(d2, t, alpha)[None, :])
        return clipped.T @ self.rewards[:t] / t, effective_sample_size(t, d2)


# ---------------------------------------------------------------- the loop


def arm_values(cfg: RandomistConfig, seed: int = 12345) -> np.ndarray:
    """Expected normalised return of each hyperpolicy (Monte Carlo over gains and
    episodes; a fixed seed so every run of a spec scores regret against the same values)."""
    rng = np.random.default_rng(seed)
    lqg = LQG1D(cfg.lqg)
    means = cfg.arm_means()
    gains = means[:, None] + cfg.sigma * rng.standard_normal((len(means), cfg.value_samples))
    return lqg.rewards(gains, rng).mean(axis=1)


def simulate(
    cfg: RandomistConfig, algorithm: str, seed: int, values: np.ndarray
) -> Iterator[float]:
    """Play `cfg.rounds` rounds; yields the cumulative (expected) regret after each."""
    rng = np.random.default_rng(seed)
    lqg = LQG1D(cfg.lqg)
    means = cfg.arm_means()
    k = len(means)
    c = cfg.exploration
    mis = MediatorFeedback(means, cfg.sigma, cfg.rounds)
    pulls = np.zeros(k)
    sums = np.zeros(k)
    best = values.max()
    regret = 0.0
    for t in range(cfg.rounds):
        log_t = math.log(max(t, 2))
        if t == 0:
            arm = int(rng.integers(k))
        elif algorithm in ("randomist", "optimist"):
            mu, ess = mis.estimates(cfg.alpha)
            bonus = np.sqrt(cfg.alpha * log_t / ess)
            if algorithm == "optimist":
                index = mu + c * bonus
            else:
                extra = np.ceil(c * cfg.perturbation * ess)
                pseudo = rng.binomial(extra.astype(np.int64), 0.5)
                # The truncated estimate is biased low by at most `bonus`: correct it,
                # then perturb the history (as PHE does) with the ESS as sample count.
                index = (ess * (mu + c * bonus) + pseudo) / (ess + extra)
            arm = argmax_random_tie(index, rng)
        elif algorithm == "ucb1" or algorithm == "phe":
            if (pulls == 0).any():
                arm = int(rng.choice(np.flatnonzero(pulls == 0)))
            elif algorithm == "ucb1":
                arm = argmax_random_tie(sums / pulls + c * np.sqrt(2 * log_t / pulls), rng)
            else:
                extra = np.ceil(c * cfg.perturbation * pulls)
                pseudo = rng.binomial(extra.astype(np.int64), 0.5)
                arm = argmax_random_tie((sums + pseudo) / (pulls + extra), rng)
        elif algorithm == "thompson":
            draw = sums / (pulls + 1) + c * rng.standard_normal(k) / np.sqrt(pulls + 1)
            arm = argmax_random_tie(draw, rng)
        else:
            raise ValueError(f"unknown algorithm {algorithm!r}")
        omega = means[arm] + cfg.sigma * rng.standard_normal()
        reward = float(lqg.rewards(np.array([omega]), rng)[0])
        mis.add(arm, omega, reward)
        pulls[arm] += 1
        sums[arm] += reward
        regret += best - values[arm]
        yield regret


def argmax_random_tie(index: np.ndarray, rng: np.random.Generator) -> int:
    """The index's argmax, ties broken at random."""
    top = np.flatnonzero(index >= index.max() - 1e-12)
    return int(top[0] if len(top) == 1 else rng.choice(top))


def regret_curve(
    cfg: RandomistConfig, algorithm: str, seed: int, values: np.ndarray
) -> tuple[np.ndarray, float]:
    """The cumulative-regret curve of one run, and its speed in rounds per second."""
    start = time.perf_counter()
    curve = np.fromiter(simulate(cfg, algorithm, seed, values), dtype=float, count=cfg.rounds)
    return curve, cfg.rounds / (time.perf_counter() - start)


# ---------------------------------------------------------------- pipeline and metrics


def pipeline(ctx) -> dict[str, float]:
    """Every (algorithm, seed) as a Ray task; curves stored as they finish (a rerun only
    runs the missing ones); then mean regret with a 95% band, logged and plotted."""
    import ray

    cfg: RandomistConfig = ctx.config
    seeds = [ctx.spec.seed + i for i in range(cfg.num_seeds)]
    values = arm_values(cfg)
    ctx.store.put_array(ctx.key("arm_values.npy"), values)

    def result_key(algorithm: str, seed: int) -> str:
        return ctx.key("curves", f"{algorithm}-seed{seed}.npy")

    todo = [(a, s) for a in cfg.algorithms for s in seeds if not ctx.store.exists(result_key(a, s))]
    task = ray.remote(num_cpus=ctx.spec.resources.cpus_per_task)(regret_curve)
    values_ref = ray.put(values)
    pending = {task.remote(cfg, a, s, values_ref): (a, s) for a, s in todo}
    total = len(cfg.algorithms) * len(seeds)
    with ctx.progress(total, "randomist runs", unit="run") as bar:
        bar.update(total - len(todo))
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            algorithm, seed = pending.pop(done[0])
            curve, speed = ray.get(done[0])
            ctx.store.put_array(result_key(algorithm, seed), curve)
            bar.set_postfix(rounds_per_s=f"{speed:.0f}", refresh=False)
            bar.update(1)

    curves = {
        a: np.stack([ctx.store.get_array(result_key(a, s)) for s in seeds]) for a in cfg.algorithms
    }
    steps = list(range(cfg.log_every, cfg.rounds + 1, cfg.log_every))
    if steps[-1] != cfg.rounds:
        steps.append(cfg.rounds)
    for step in steps:
        row = {}
        for algorithm, runs in curves.items():
            mean, half = mean_and_band(runs[:, step - 1])
            row[f"regret/{algorithm}"] = mean
            row[f"regret_band/{algorithm}"] = half
        ctx.tracker.log_metrics(row, step=step)
    ctx.tracker.flush()
    figure = plot_regret(curves)
    ctx.tracker.log_figure(figure, "cumulative_regret")
    ctx.store.put_bytes(ctx.key("plots", "cumulative_regret.png"), figure_png(figure))
    ctx.check_claims({"final_regret": {a: runs[:, -1] for a, runs in curves.items()}})
    return {f"final_regret/{a}": float(runs[:, -1].mean()) for a, runs in curves.items()}


def mean_and_band(samples: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval."""
    samples = np.asarray(samples, dtype=float)
    half = 1.96 * samples.std(ddof=1) / math.sqrt(len(samples)) if len(samples) > 1 else 0.0
    return float(samples.mean()), float(half)


def plot_regret(curves: dict[str, np.ndarray]):
    """Mean cumulative regret over seeds, with a 95% band, one line per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for algorithm, runs in curves.items():
        rounds = np.arange(1, runs.shape[1] + 1)
        mean = runs.mean(axis=0)
        half = 1.96 * runs.std(axis=0, ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else 0
        axis.plot(rounds, mean, label=algorithm)
        axis.fill_between(rounds, mean - half, mean + half, alpha=0.2)
    step_axis(axis, "round t")
    axis.set_ylabel("cumulative regret")
    axis.set_title(f"RANDOMIST on the 1-D LQG ({len(next(iter(curves.values())))} seeds)")
    axis.legend()
    axis.grid(alpha=0.3)
    return figure


def trainable(config: dict) -> None:
    """Tune trial: one seed of each listed algorithm, reporting mean cumulative regret
    (`regret`, and `regret/<algorithm>`) every `log_every` rounds.

    A report carries a checkpoint (the round reached) once `sweep.checkpoint_seconds` have
    passed since the last one (0: every report; the sweep sets 0 under PBT). A run is a
    deterministic function of its config and seed, so a trial restored from a checkpoint
    replays the simulation up to that round without reporting, then goes on: its curve is
    the one an uninterrupted trial draws. (A PBT exploit replays the same rounds under the
    new hyperparameters.)"""
    import json
    import tempfile
    from pathlib import Path

    from ray import tune

    cfg = RandomistConfig.model_validate(config["config"])
    values = arm_values(cfg)
    runs = {a: simulate(cfg, a, int(config.get("seed", 0)), values) for a in cfg.algorithms}
    resume_after = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume_after = json.loads((Path(folder) / "state.json").read_text())["round"]
    # Each checkpoint costs Tune a round trip; a sparse one only costs replay on restore.
    every = float((config.get("sweep") or {}).get("checkpoint_seconds", 0.0))
    last_checkpoint = time.monotonic()
    for t in range(1, cfg.rounds + 1):
        latest = {a: next(run) for a, run in runs.items()}
        if t <= resume_after or not (t % cfg.log_every == 0 or t == cfg.rounds):
            continue
        metrics = {f"regret/{a}": r for a, r in latest.items()}
        metrics["regret"] = float(np.mean(list(latest.values())))
        metrics["rounds"] = t
        if time.monotonic() - last_checkpoint < every:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"round": t}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        last_checkpoint = time.monotonic()


METHOD = Method(
    name="randomist",
    config=RandomistConfig,
    pipeline=pipeline,
    trainable=trainable,
    arms=lambda config: tuple(config.algorithms),
    seed_metrics=("final_regret",),
)
