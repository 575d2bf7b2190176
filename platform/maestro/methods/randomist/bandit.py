"""The bandit loop: each round the learner maximises its algorithm's index over the K
hyperpolicies, samples a gain from the chosen one, plays one LQG episode and records
(omega, reward). `BanditState` is everything a run has seen, so a checkpoint holds it
whole and a run continued from one is the run that never stopped."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from maestro.envs.lqg import LQG1D
from maestro.methods.randomist.config import RandomistConfig
from maestro.methods.randomist.estimators import MediatorFeedback


def arm_values(cfg: RandomistConfig, seed: int = 12345) -> np.ndarray:
    """Expected normalised return of each hyperpolicy (Monte Carlo over gains and
    episodes; a fixed seed so every run of a spec scores regret against the same values)."""
    rng = np.random.default_rng(seed)
    lqg = LQG1D(cfg.lqg)
    means = cfg.arm_means()
    gains = means[:, None] + cfg.sigma * rng.standard_normal((len(means), cfg.value_samples))
    return lqg.rewards(gains, rng).mean(axis=1)


@dataclass
class BanditState:
    """A run after `t` rounds: the samples seen, per-arm pulls and reward sums, the
    cumulative regret after each round, and the random generator."""

    mis: MediatorFeedback
    pulls: np.ndarray
    sums: np.ndarray
    regret: np.ndarray  # (rounds,), filled up to t
    rng: np.random.Generator

    @property
    def t(self) -> int:
        return self.mis.t

    @classmethod
    def start(cls, cfg: RandomistConfig, seed: int) -> BanditState:
        k = cfg.num_arms
        return cls(
            MediatorFeedback(cfg.arm_means(), cfg.sigma, cfg.rounds),
            np.zeros(k),
            np.zeros(k),
            np.zeros(cfg.rounds),
            np.random.default_rng(seed),
        )

    def to_checkpoint(self) -> dict:
        """The state as a trial checkpoint: JSON values and one bytes entry."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            pulls=self.pulls,
            sums=self.sums,
            regret=self.regret[: self.t],
            **self.mis.arrays(),
        )
        return {
            "round": self.t,
            "rng": json.dumps(self.rng.bit_generator.state),
            "arrays.npz": buffer.getvalue(),
        }

    @classmethod
    def from_checkpoint(cls, cfg: RandomistConfig, checkpoint: dict) -> BanditState:
        arrays = dict(np.load(io.BytesIO(checkpoint["arrays.npz"])))
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(checkpoint["rng"])
        regret = np.zeros(cfg.rounds)
        regret[: len(arrays["regret"])] = arrays["regret"]
        mis = MediatorFeedback.from_arrays(cfg.arm_means(), cfg.sigma, cfg.rounds, arrays)
        return cls(mis, arrays["pulls"], arrays["sums"], regret, rng)


def simulate(cfg: RandomistConfig, state: BanditState, values: np.ndarray) -> Iterator[float]:
    """Play from round `state.t` to `cfg.rounds`, updating `state`; yields the cumulative
    (expected) regret after each round."""
    rng, mis, pulls, sums = state.rng, state.mis, state.pulls, state.sums
    lqg = LQG1D(cfg.lqg)
    means = cfg.arm_means()
    k = len(means)
    c = cfg.exploration
    algorithm = cfg.algorithm
    best = values.max()
    for t in range(state.t, cfg.rounds):
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
        state.regret[t] = (state.regret[t - 1] if t else 0.0) + (best - values[arm])
        yield float(state.regret[t])


def argmax_random_tie(index: np.ndarray, rng: np.random.Generator) -> int:
    """The index's argmax, ties broken at random."""
    top = np.flatnonzero(index >= index.max() - 1e-12)
    return int(top[0] if len(top) == 1 else rng.choice(top))
