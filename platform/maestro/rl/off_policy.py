"""The interaction loop of the torch off-policy learners (`maestro.rl.td3`, `maestro.rl.sac`,
and methods built on them): act in one environment of `maestro.envs.control_tasks`, store
transitions in a `ReplayBuffer`, call the method's update after every env step, evaluate
the deterministic policy, and checkpoint at episode ends.

A trial resumes exactly: a checkpoint (`ControlLoop.state`) holds the learner (networks,
targets, optimisers), the replay buffer, the loop's counters and both random generators
(numpy's for exploration and sampling, torch's for target noise and imagined transitions),
and is taken between episodes, whose start states come from (seed, episode number). (On
a GPU, the GPU's own generator is not saved: a resumed trial goes on from the same state,
with other draws.)

Evaluation episodes start from (seed, episode number) too, the same states at every
evaluation, so a curve's changes are the policy's.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from maestro.envs.control_tasks import ControlTask, control_task
from maestro.rl.replay import ReplayBuffer


class OffPolicyConfig(BaseModel):
    """How a learner meets its environment: budget, warm-up, updates, evaluation."""

    model_config = ConfigDict(extra="forbid")

    env: str = "Pendulum-v1"
    env_steps: int = Field(default=15_000, ge=1, description="the trial's budget")
    warmup_steps: int = Field(default=1000, ge=0, description="uniform random actions first")
    updates_per_step: int = Field(default=1, ge=1, description="learner updates per env step")
    buffer_size: int | None = Field(default=None, ge=1, description="None: the whole budget")
    eval_every: int = Field(default=1000, ge=1, description="env steps between evaluations")
    eval_episodes: int = Field(default=10, ge=1)
    checkpoint_every: int = Field(default=5000, ge=1, description="env steps (at episode ends)")

    @model_validator(mode="after")
    def _check(self) -> OffPolicyConfig:
        control_task(self.env)
        if self.eval_every > self.env_steps:
            raise ValueError(f"eval_every ({self.eval_every}) exceeds env_steps ({self.env_steps})")
        return self


class Learner(Protocol):
    def act(self, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray: ...
    def to_bytes(self) -> bytes: ...
    def load_bytes(self, data: bytes) -> None: ...


def start_seed(seed: int, episode: int, evaluation: bool = False) -> int:
    """The reset seed of a trial's `episode` (its evaluation episodes draw from another
    stream)."""
    return int(np.random.SeedSequence([seed, int(evaluation), episode]).generate_state(1)[0])


def evaluate(task: ControlTask, learner: Learner, episodes: int, seed: int) -> list[float]:
    """The deterministic policy's return on `episodes` episodes (the same start states for
    a given seed)."""
    env = task.make()
    scale = env.action_space.high
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=start_seed(seed, episode, evaluation=True))
        total, done = 0.0, False
        while not done:
            obs, r, terminated, truncated, _ = env.step(learner.act(obs) * scale)
            total += float(r)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


@dataclass
class ControlLoop:
    """One learner's interaction with one environment, and what it carries across a
    restart."""

    cfg: OffPolicyConfig
    learner: Learner
    seed: int
    task: ControlTask = field(init=False)
    buffer: ReplayBuffer = field(init=False)
    rng: np.random.Generator = field(init=False)
    env_steps: int = 0
    episodes: int = 0
    evaluations: list[float] = field(default_factory=list)  # mean return of each evaluation

    def __post_init__(self) -> None:
        self.task = control_task(self.cfg.env)
        self.env = self.task.make(self.seed)
        self.obs_dim = self.env.observation_space.shape[0]
        self.action_dim = self.env.action_space.shape[0]
        high = self.env.action_space.high
        if not np.allclose(self.env.action_space.low, -high):
            raise ValueError(f"{self.cfg.env}: the learners assume a symmetric action box")
        self.action_scale = high
        self.buffer = ReplayBuffer(
            self.obs_dim, self.action_dim, self.cfg.buffer_size or self.cfg.env_steps
        )
        self.rng = np.random.default_rng(self.seed)

    @property
    def exploring(self) -> bool:
        """Still in warm-up: acting uniformly at random, no learner updates yet."""
        return self.env_steps < self.cfg.warmup_steps

    def state(self) -> dict[str, Any]:
        """The checkpoint: JSON values and bytes (`TrialContext.checkpoint`'s form)."""
        return {
            "learner.pt": self.learner.to_bytes(),
            "replay.npz": self.buffer.to_bytes(),
            "torch_rng.pt": torch.get_rng_state().numpy().tobytes(),
            "numpy_rng": self.rng.bit_generator.state,
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "evaluations": self.evaluations,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.learner.load_bytes(state["learner.pt"])
        self.buffer.load_bytes(state["replay.npz"])
        torch.set_rng_state(torch.frombuffer(bytearray(state["torch_rng.pt"]), dtype=torch.uint8))
        self.rng.bit_generator.state = state["numpy_rng"]
        self.env_steps, self.episodes = state["env_steps"], state["episodes"]
        self.evaluations = list(state["evaluations"])

    def run(
        self,
        update: Callable[[ControlLoop], dict[str, float]],
        log: Callable[[dict[str, float], int], None],
        save: Callable[[int], None],
        progress: Any = None,
        episode_start: Callable[[int], None] | None = None,
    ) -> dict[str, float]:
        """Interact until the budget is spent. After every env step `update(self)` runs
        the method's learning (it reads `exploring`, `buffer`, `rng`) and returns metrics;
        every `eval_every` steps `log` gets the evaluation, those metrics' means since the
        last log, the throughput of acting and learning (`perf/env_steps_per_s`) and the
        evaluation's time (`perf/eval_seconds`); at an episode's end past `checkpoint_every` steps
        since the last, and at the end, `save(env_steps)`; before each episode's first step,
        `episode_start(episode number)` when given. Returns the final metrics."""
        cfg = self.cfg
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        episode_returns: list[float] = []
        last_save, since, started = self.env_steps, self.env_steps, time.perf_counter()
        obs, _ = self.env.reset(seed=start_seed(self.seed, self.episodes))
        episode_return = 0.0
        if episode_start is not None:
            episode_start(self.episodes)
        while self.env_steps < cfg.env_steps:
            if self.exploring:
                action = self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
            else:
                action = self.learner.act(obs, self.rng)
            next_obs, r, terminated, truncated, _ = self.env.step(action * self.action_scale)
            self.buffer.add(obs, action, float(r), next_obs, terminated)
            self.env_steps += 1
            episode_return += float(r)
            obs = next_obs
            for name, value in update(self).items():
                sums[name] += value
                counts[name] += 1
            if progress is not None:
                progress.update(1)
            if self.env_steps % cfg.eval_every == 0:
                seconds = time.perf_counter() - started
                returns = evaluate(self.task, self.learner, cfg.eval_episodes, self.seed)
                self.evaluations.append(float(np.mean(returns)))
                row = {name: sums[name] / counts[name] for name in sums}
                row["eval/return"] = self.evaluations[-1]
                row["perf/env_steps_per_s"] = (self.env_steps - since) / seconds
                row["perf/eval_seconds"] = time.perf_counter() - started - seconds
                if episode_returns:
                    row["train/episode_return"] = float(np.mean(episode_returns))
                log(row, self.env_steps)
                sums.clear()
                counts.clear()
                episode_returns.clear()
                since, started = self.env_steps, time.perf_counter()
            if terminated or truncated:
                episode_returns.append(episode_return)
                self.episodes += 1
                if self.env_steps - last_save >= cfg.checkpoint_every:
                    save(self.env_steps)
                    last_save = self.env_steps
                obs, _ = self.env.reset(seed=start_seed(self.seed, self.episodes))
                episode_return = 0.0
                if episode_start is not None:
                    episode_start(self.episodes)
        save(self.env_steps)
        return self.final_metrics()

    def final_metrics(self) -> dict[str, float]:
        """`final_return`: the last evaluation's mean return; `mean_return`: the mean over
        all evaluations (the area under the curve over the budget, sample efficiency)."""
        return {
            "final_return": self.evaluations[-1],
            "mean_return": float(np.mean(self.evaluations)),
        }


def model_free_update(learner, cfg: OffPolicyConfig) -> Callable[[ControlLoop], dict[str, float]]:
    """The plain off-policy update: after warm-up, `updates_per_step` learner updates per
    env step, each on a batch of the learner's `batch_size` real transitions."""

    def update(loop: ControlLoop) -> dict[str, float]:
        if loop.exploring:
            return {}
        metrics: dict[str, float] = {}
        for _ in range(cfg.updates_per_step):
            batch = loop.buffer.sample(learner.cfg.batch_size, loop.rng, learner.device)
            metrics.update(learner.update(batch))
        return metrics

    return update
