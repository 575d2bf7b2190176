"""MCMC-RANDOMIST: RANDOMIST over a compact box of hyperpolicy means, against PGPE.

Metelli, Papini, D'Oro, Restelli, "Policy Optimization as Online Learning with Mediator
Feedback", AAAI 2021 (arXiv:2012.08225), section 6; what Maestro runs of it:
`docs/methods/randomist_mcmc.md`.

The policies are linear, a = W s, on Mountain Car (continuous) or continuous CartPole
(`maestro.envs.continuous_control`, which also holds each problem's box, std, return range
and horizon). A hyperpolicy is N(theta, diag(std^2)) over W. Every round plays one episode:

- `mcmc_randomist`: sample W from the current hyperpolicy, play, record (theta, W, return);
  then run `mcmc_steps` steps of a random-walk Metropolis-Hastings chain over theta in the
  box, started at the last hyperpolicy mean, with the hyperpolicy's std as proposal std,
  targeting P(theta's perturbed index is the maximum over the executed hyperpolicies); its
  last point is the next hyperpolicy. The index and that probability are in `compact.py`.
- `pgpe`: PGPE with symmetric sampling (Sehnke et al. 2010): rounds come in pairs, the
  episodes of theta + eps and theta - eps (eps ~ N(0, diag(std^2))), then theta moves by
  learning_rate * eps * (R+ - R-) / (2 width of the return range), clipped to the box.

Both start at theta = 0, as the official code does. A trial is one (algorithm, env, seed);
its rounds are sequential (each hyperpolicy depends on every earlier episode), and trials
run in parallel over the Ray cluster. It logs `return` (the last episode's) and
`average_return` (the mean of all its episodes so far, the paper's metric) every
`log_every` rounds, checkpoints its whole state every `checkpoint_every` rounds, and
returns `final_average_return`. `aggregate` plots the mean average-return curve per arm
with a 95% band.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from maestro.envs.continuous_control import PROBLEMS, episode_return
from maestro.methods import Method
from maestro.methods.randomist.compact import MediatorHistory, metropolis_hastings, pgpe_update


class MCMCConfig(BaseModel):
    """The spec's `config:` block: one algorithm on one problem (a trial). The problem's
    box, std, return range and horizon come with `env` (`PROBLEMS`)."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["mcmc_randomist", "pgpe"] = "mcmc_randomist"
    env: Literal["mountain_car", "cartpole"] = "mountain_car"
    rounds: int = Field(default=5000, ge=2, description="episodes per trial")
    perturbation: float = Field(default=1.1, gt=0, description="a: pseudo-rewards per unit of ESS")
    alpha: float = Field(default=2.0, gt=0, description="confidence exponent: delta_t ~ t^-alpha")
    mcmc_steps: int = Field(default=10, ge=1, description="Metropolis-Hastings steps per round")
    learning_rate: float = Field(default=1.0, gt=0, description="PGPE's step on the mean")
    log_every: int = Field(default=50, ge=1, description="rounds between logged points")
    checkpoint_every: int = Field(default=500, ge=1, description="rounds between checkpoints")


@dataclass
class TrialState:
    """A trial after `t` rounds: the hyperpolicy mean of the next round, every return so
    far, the random generator, and the algorithm's own state (MCMC-RANDOMIST: the executed
    history and its chains' acceptance counts; PGPE: the pair in progress)."""

    mean: np.ndarray
    returns: np.ndarray  # (rounds,), filled up to t
    rng: np.random.Generator
    t: int = 0
    history: MediatorHistory | None = None
    accepted: int = 0
    proposed: int = 0
    noise: np.ndarray | None = None  # PGPE: eps of the pair whose first episode is played
    return_plus: float | None = None  # PGPE: that first episode's return

    @classmethod
    def start(cls, cfg: MCMCConfig, seed: int) -> TrialState:
        problem = PROBLEMS[cfg.env]
        history = None
        if cfg.algorithm == "mcmc_randomist":
            history = MediatorHistory(np.array(problem.std), cfg.rounds)
        return cls(
            mean=np.zeros(len(problem.std)),
            returns=np.zeros(cfg.rounds),
            rng=np.random.default_rng(seed),
            history=history,
        )

    def average_return(self) -> float:
        return float(self.returns[: self.t].mean())

    def to_checkpoint(self) -> dict:
        """The state as a trial checkpoint: JSON values and one bytes entry."""
        arrays = {"returns": self.returns[: self.t]}
        if self.history is not None:
            arrays.update({f"history_{k}": v for k, v in self.history.arrays().items()})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return {
            "round": self.t,
            "mean": self.mean.tolist(),
            "rng": json.dumps(self.rng.bit_generator.state),
            "accepted": self.accepted,
            "proposed": self.proposed,
            "noise": None if self.noise is None else self.noise.tolist(),
            "return_plus": self.return_plus,
            "arrays.npz": buffer.getvalue(),
        }

    @classmethod
    def from_checkpoint(cls, cfg: MCMCConfig, checkpoint: dict) -> TrialState:
        """The state `to_checkpoint` saved, going on to `cfg.rounds`."""
        arrays = dict(np.load(io.BytesIO(checkpoint["arrays.npz"])))
        t = int(checkpoint["round"])
        returns = np.zeros(cfg.rounds)
        returns[:t] = arrays["returns"]
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(checkpoint["rng"])
        history = None
        if cfg.algorithm == "mcmc_randomist":
            saved = {k.removeprefix("history_"): v for k, v in arrays.items() if k != "returns"}
            history = MediatorHistory.from_arrays(
                np.array(PROBLEMS[cfg.env].std), cfg.rounds, saved
            )
        noise = checkpoint["noise"]
        return cls(
            mean=np.array(checkpoint["mean"], dtype=float),
            returns=returns,
            rng=rng,
            t=t,
            history=history,
            accepted=int(checkpoint["accepted"]),
            proposed=int(checkpoint["proposed"]),
            noise=None if noise is None else np.array(noise, dtype=float),
            return_plus=checkpoint["return_plus"],
        )


def play(cfg: MCMCConfig, state: TrialState) -> Iterator[int]:
    """Play rounds `state.t` to `cfg.rounds`, updating `state`; yields the number of rounds
    played after each."""
    problem = PROBLEMS[cfg.env]
    std = np.array(problem.std)
    rng = state.rng
    for t in range(state.t, cfg.rounds):
        if cfg.algorithm == "mcmc_randomist":
            params = state.mean + std * rng.standard_normal(len(std))
            reward = episode_return(cfg.env, params, int(rng.integers(2**32)))
            state.history.add(state.mean, params, reward)
            if t + 1 < cfg.rounds:  # the last round's next hyperpolicy is never played
                state.mean = next_hyperpolicy(cfg, state)
        else:
            if state.noise is None:
                state.noise = std * rng.standard_normal(len(std))
                params = state.mean + state.noise
            else:
                params = state.mean - state.noise
            reward = episode_return(cfg.env, params, int(rng.integers(2**32)))
            if state.return_plus is None:
                state.return_plus = reward
            else:
                state.mean = pgpe_update(
                    state.mean,
                    state.noise,
                    state.return_plus,
                    reward,
                    cfg.learning_rate,
                    problem.width,
                    problem.lower,
                    problem.upper,
                )
                state.noise, state.return_plus = None, None
        state.returns[t] = reward
        state.t = t + 1
        yield state.t


def next_hyperpolicy(cfg: MCMCConfig, state: TrialState) -> np.ndarray:
    """The last point of a Metropolis-Hastings chain from the last hyperpolicy mean,
    targeting the probability that a mean's perturbed index is the maximum."""
    problem = PROBLEMS[cfg.env]
    history = state.history
    rivals = history.rivals(cfg.alpha, cfg.perturbation, problem.width)

    def log_density(theta: np.ndarray) -> float:
        return history.log_prob_max(theta, rivals, cfg.alpha, cfg.perturbation, problem.width)

    chain, accepted = metropolis_hastings(
        log_density,
        state.mean,
        np.array(problem.std),
        cfg.mcmc_steps,
        state.rng,
        problem.lower,
        problem.upper,
    )
    state.accepted += accepted
    state.proposed += cfg.mcmc_steps
    return chain[-1]


def round_metrics(state: TrialState) -> dict[str, float]:
    """What a trial logs at a round."""
    metrics = {
        "return": float(state.returns[state.t - 1]),
        "average_return": state.average_return(),
    }
    if state.proposed:
        metrics["mcmc_acceptance"] = state.accepted / state.proposed
    return metrics


def trial(ctx) -> dict[str, float]:
    """One algorithm on one problem and seed: `return`, `average_return` (and MCMC's
    acceptance rate) every `log_every` rounds, the whole state every `checkpoint_every`
    rounds, every episode's return stored at the end."""
    cfg: MCMCConfig = ctx.config
    saved = ctx.restore()
    state = TrialState.from_checkpoint(cfg, saved) if saved else TrialState.start(cfg, ctx.seed)
    for t in play(cfg, state):
        if t % cfg.checkpoint_every == 0 and t < cfg.rounds:
            ctx.checkpoint(state.to_checkpoint(), step=t)
        if t % cfg.log_every == 0 or t == cfg.rounds:
            ctx.log(round_metrics(state), step=t)
    ctx.store.put_array(ctx.key("returns.npy"), state.returns)
    return {"final_average_return": state.average_return()}


def aggregate(ctx, results) -> None:
    """Mean average return per arm with a 95% band over seeds: `average_return/<arm>` and
    `average_return_band/<arm>` on the run every `log_every` rounds, and the plot (one
    panel per problem)."""
    from maestro.methods.randomist import log_arm_means, per_arm_curves
    from maestro.spec import arm_config

    cfg: MCMCConfig = ctx.config
    spec = ctx.spec.resolved()
    averages = {
        arm: np.cumsum(returns, axis=1) / np.arange(1, returns.shape[1] + 1)
        for arm, returns in per_arm_curves(ctx, results, "returns").items()
    }
    log_arm_means(ctx, "average_return", averages, cfg.log_every)
    envs = {arm: MCMCConfig.model_validate(arm_config(spec, arm)).env for arm in averages}
    ctx.save_plot(plot_average_returns(averages, envs), "average_return")


def plot_average_returns(averages: dict[str, np.ndarray], envs: dict[str, str]):
    """Mean average return over seeds with a 95% band, one line per arm, one panel per
    problem. A matplotlib `Figure` of its own: no pyplot, nothing to close."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from maestro.report import plot_band
    from maestro.tracking import step_axis

    problems = sorted(set(envs.values()))
    figure = Figure(figsize=(6.5 * len(problems), 4.5))
    axes = figure.subplots(1, len(problems), squeeze=False)
    colours = colormaps["tab10"]
    for axis, problem in zip(axes[0], problems, strict=True):
        for index, (arm, runs) in enumerate(averages.items()):
            if envs[arm] != problem:
                continue
            rounds = np.arange(1, runs.shape[1] + 1)
            seeds = [list(zip(rounds.tolist(), run.tolist(), strict=True)) for run in runs]
            plot_band(axis, seeds, colours(index % 10), f"{arm} ({len(runs)} seeds)")
        step_axis(axis, "episodes")
        axis.set_ylabel("average return")
        axis.set_title(problem.replace("_", " "))
        axis.legend()
        axis.grid(alpha=0.3)
    return figure


METHOD = Method(
    name="randomist_mcmc",
    config=MCMCConfig,
    trial=trial,
    metrics=("final_average_return",),
    step="rounds",
    aggregate=aggregate,
)
