"""Evaluating Motif's agent: it plays fresh games of the task (seeds apart from the training
games'), sampling its actions, and the same games are played with uniformly random actions
for comparison; each game is measured with `EpisodeStats` (`envs/nethack.py`), as in
training, so training and evaluation figures mean the same. `AgentPolicy` (an agent playing
one observation at a time) also collects datasets from a trained agent
(`maestro.feedback.collect`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns

from maestro.envs.nethack import EPISODE_FIELDS, EpisodeStats, make_env
from maestro.feedback.collect import RandomPolicy

# Evaluation games come from seed + this, never from the training games' seeds.
EVAL_SEED_OFFSET = 1_000_003


@dataclass
class EpisodeRecord:
    """One evaluation episode's `EpisodeStats` measures."""

    extrinsic_return: float
    score: int
    depth: int
    distinct_messages: int
    length: int
    success: int


class AgentPolicy:
    """An agent's RLModule playing one observation at a time (collect.py's `Policy`):
    actions sampled from its policy (greedy NetHack policies loop on one action), its
    recurrent state carried from step to step and reset with each episode."""

    def __init__(self, module):
        self.module = module
        self.recurrent = module.is_stateful()
        # The keys the module was built for (MaestroMotif's agent also reads `skill`).
        self.keys = tuple(module.observation_space.spaces)
        self.reset(0)

    def reset(self, seed: int) -> None:
        """Start an episode: the initial recurrent state, the sampling stream from `seed`."""
        self.generator = torch.Generator().manual_seed(seed)
        initial = self.module.get_initial_state()
        self.state = {k: torch.from_numpy(v)[None] for k, v in initial.items()}

    @torch.no_grad()
    def act(self, observation: dict[str, np.ndarray]) -> int:
        obs = {k: torch.from_numpy(np.array(observation[k]))[None] for k in self.keys}
        if self.recurrent:
            obs = {k: v[:, None] for k, v in obs.items()}
        out = self.module.forward_exploration({Columns.OBS: obs, Columns.STATE_IN: self.state})
        self.state = out.get(Columns.STATE_OUT, self.state)
        logits = out[Columns.ACTION_DIST_INPUTS].reshape(-1)
        return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator))


def evaluate_agent(
    module,
    task: str,
    episodes: int,
    seed: int,
    max_episode_steps: int,
    on_step: Callable[[dict[str, np.ndarray]], None] | None = None,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
    make_game_env: Callable[..., Any] | None = None,
) -> list[EpisodeRecord]:
    """Play `episodes` fresh games of `task` (deterministic given `seed`), sampling
    actions from the policy (`AgentPolicy`). `module` None plays uniformly random actions:
    the baseline on the same games. `on_step` sees each observation, `on_episode` each
    finished episode's record. `make_game_env(task, seed, max_episode_steps)` builds the
    env played instead of `EpisodeStats(make_env(...))` (MaestroMotif: with its skill
    layer); its info must carry `EpisodeStats`'s episode measures."""
    make_game_env = make_game_env or (lambda *game: EpisodeStats(make_env(*game)))
    env = make_game_env(task, seed, max_episode_steps)
    policy = RandomPolicy(int(env.action_space.n)) if module is None else AgentPolicy(module)
    records = []
    for _ in range(episodes):
        observation, _ = env.reset()
        # Each game's own policy seed (`SeededNetHack`): a game's actions do not depend on
        # how long the games before it were.
        policy.reset(env.get_wrapper_attr("policy_seed"))
        if on_step:
            on_step(observation)
        while True:
            action = policy.act(observation)
            observation, _, terminated, truncated, info = env.step(action)
            if on_step:
                on_step(observation)
            if terminated or truncated:
                records.append(
                    EpisodeRecord(**{name: info[f"episode_{name}"] for name in EPISODE_FIELDS})
                )
                if on_episode:
                    on_episode(records[-1])
                break
    env.close()
    return records


def eval_metrics(records: list[EpisodeRecord], task: str, prefix: str = "eval") -> dict[str, float]:
    """Means of the evaluation episodes (success rate only for tasks with a success)."""
    if not records:
        return {}
    metrics = {
        f"{prefix}/{name}": float(np.mean([getattr(r, name) for r in records]))
        for name in EPISODE_FIELDS
        if name != "success"
    }
    if task != "score":
        metrics[f"{prefix}/success_rate"] = float(np.mean([r.success for r in records]))
    metrics[f"{prefix}/episodes"] = float(len(records))
    return metrics


def evaluate_with_progress(
    module, games: dict[str, Any], progress: Callable[..., Any] | None, desc: str
) -> list[EpisodeRecord]:
    """`evaluate_agent(module, **games)` with a bar counting episodes when `progress`
    makes bars (an evaluation of long NetHack games otherwise looks like a hang)."""
    if progress is None or not games["episodes"]:
        return evaluate_agent(module, **games)
    with progress(games["episodes"], desc, "episode") as bar:
        return evaluate_agent(module, **games, on_episode=lambda _: bar.update(1))
