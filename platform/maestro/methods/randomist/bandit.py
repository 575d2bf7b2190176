"""The bandit loop: each round the learner maximises its algorithm's index over the K
hyperpolicies, samples a gain from the chosen one, plays one LQG episode from the run's
start state and records (omega, return). `BanditState` is everything a run has seen, so a
checkpoint holds it whole and a run continued from one is the run that never stopped.

Two regrets are kept per round t, each cumulative:
- `regret`: the expected pseudo-regret, v* - v(k_t), with the arm values v of this run's
  start state (what the theory bounds);
- `return_regret`: 1 - J_t, J_t the normalised return of the episode played (the paper's
  figures). It adds T (1 - v*), which depends on the start state, to the first.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from maestro.envs.lqg import LQG1D
from maestro.methods.randomist import indices
from maestro.methods.randomist.config import RandomistConfig
from maestro.methods.randomist.estimators import MediatorFeedback


def arm_values(cfg: RandomistConfig, x0: float, seed: int = 12345) -> np.ndarray:
    """Expected normalised return of each hyperpolicy from start state `x0`: Monte Carlo
    over gains and episodes with the same draws for every arm (so their differences, which
    regret sums, are sharper than each value), from a fixed seed."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(cfg.value_samples)
    eps = rng.standard_normal((cfg.lqg.horizon, cfg.value_samples))
    gains = cfg.arm_means()[:, None] + cfg.sigma * z[None, :]
    return LQG1D(cfg.lqg).returns(gains, x0, eps).mean(axis=1)


@dataclass
class BanditState:
    """A run after `t` rounds: its start state and arm values, the samples seen, per-arm
    pulls and return sums, both cumulative regrets after each round, and the generator."""

    x0: float
    values: np.ndarray  # from x0; recomputed, not stored
    mis: MediatorFeedback
    pulls: np.ndarray
    sums: np.ndarray
    regret: np.ndarray  # (rounds,), filled up to t
    return_regret: np.ndarray  # (rounds,), filled up to t
    rng: np.random.Generator

    @property
    def t(self) -> int:
        return self.mis.t

    @classmethod
    def start(cls, cfg: RandomistConfig, seed: int) -> BanditState:
        rng = np.random.default_rng(seed)
        x0 = LQG1D(cfg.lqg).start_state(rng)
        k = cfg.num_arms
        return cls(
            x0,
            arm_values(cfg, x0),
            MediatorFeedback(cfg.arm_means(), cfg.sigma, cfg.rounds),
            np.zeros(k),
            np.zeros(k),
            np.zeros(cfg.rounds),
            np.zeros(cfg.rounds),
            rng,
        )

    def to_checkpoint(self) -> dict:
        """The state as a trial checkpoint: JSON values and one bytes entry."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            pulls=self.pulls,
            sums=self.sums,
            regret=self.regret[: self.t],
            return_regret=self.return_regret[: self.t],
            **self.mis.arrays(),
        )
        return {
            "round": self.t,
            "x0": self.x0,
            "rng": json.dumps(self.rng.bit_generator.state),
            "arrays.npz": buffer.getvalue(),
        }

    @classmethod
    def from_checkpoint(cls, cfg: RandomistConfig, checkpoint: dict) -> BanditState:
        arrays = dict(np.load(io.BytesIO(checkpoint["arrays.npz"])))
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(checkpoint["rng"])
        t = len(arrays["regret"])
        regret, return_regret = np.zeros(cfg.rounds), np.zeros(cfg.rounds)
        regret[:t], return_regret[:t] = arrays["regret"], arrays["return_regret"]
        mis = MediatorFeedback.from_arrays(cfg.arm_means(), cfg.sigma, cfg.rounds, arrays)
        x0 = float(checkpoint["x0"])
        return cls(
            x0,
            arm_values(cfg, x0),
            mis,
            arrays["pulls"],
            arrays["sums"],
            regret,
            return_regret,
            rng,
        )


def choose_arm(cfg: RandomistConfig, state: BanditState) -> int:
    """The arm `cfg.algorithm` plays after `state.t` rounds. The first round's arm is
    uniform; UCB1, PHE and Thompson sampling first play every arm once."""
    t, rng, pulls, sums = state.t, state.rng, state.pulls, state.sums
    alpha, a, c = cfg.alpha, cfg.perturbation, cfg.exploration
    algorithm = cfg.algorithm
    if t == 0:
        return int(rng.integers(cfg.num_arms))
    if algorithm in ("ucb1", "phe", "thompson") and (pulls == 0).any():
        return int(rng.choice(np.flatnonzero(pulls == 0)))
    if algorithm == "randomist":
        mu, d2 = state.mis.estimates(alpha)
        index = indices.randomist(mu, d2, t, alpha, a, rng, c).total()
    elif algorithm == "optimist":
        mu, d2 = state.mis.estimates(alpha)
        index = indices.optimist(mu, d2, t, alpha, c)
    elif algorithm == "ucb1":
        index = indices.ucb1(sums, pulls, t, alpha, c)
    elif algorithm == "gpucb":
        mean, sd = indices.gp_posterior(
            cfg.arm_means(), pulls, sums, cfg.gp_length_scale, cfg.gp_noise
        )
        index = indices.gp_ucb(mean, sd, t, alpha, c)
    elif algorithm == "phe":
        index = indices.perturbed_history(sums, pulls, a, rng, c)
    elif algorithm == "thompson":
        index = indices.thompson(sums, pulls, rng, c)
    else:
        raise ValueError(f"unknown algorithm {algorithm!r}")
    return argmax_random_tie(index, rng)


def simulate(cfg: RandomistConfig, state: BanditState) -> Iterator[float]:
    """Play from round `state.t` to `cfg.rounds`, updating `state`; yields the cumulative
    (expected) regret after each round."""
    rng, mis = state.rng, state.mis
    lqg = LQG1D(cfg.lqg)
    means = cfg.arm_means()
    best = state.values.max()
    for t in range(state.t, cfg.rounds):
        arm = choose_arm(cfg, state)
        omega = means[arm] + cfg.sigma * rng.standard_normal()
        eps = rng.standard_normal((cfg.lqg.horizon, 1))
        episode_return = float(lqg.returns(np.array([omega]), state.x0, eps)[0])
        mis.add(arm, omega, episode_return)
        state.pulls[arm] += 1
        state.sums[arm] += episode_return
        before = (state.regret[t - 1], state.return_regret[t - 1]) if t else (0.0, 0.0)
        state.regret[t] = before[0] + best - state.values[arm]
        state.return_regret[t] = before[1] + 1.0 - episode_return
        yield float(state.regret[t])


def argmax_random_tie(index: np.ndarray, rng: np.random.Generator) -> int:
    """The index's argmax, ties broken at random."""
    top = np.flatnonzero(index >= index.max() - 1e-12)
    return int(top[0] if len(top) == 1 else rng.choice(top))
