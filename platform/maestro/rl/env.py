"""The NetHack env as RLlib's env runners make it (registered as `ENV_NAME`), and its
per-episode measures (`envs/nethack.py` `EpisodeStats`) summed into the env runners'
metrics under `STATS_KEY` (read back per iteration by `results.iteration_metrics`)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.callbacks.callbacks import RLlibCallback

from maestro.envs.nethack import EPISODE_FIELDS, EpisodeStats, make_env

ENV_NAME = "maestro-nethack"
STATS_KEY = "maestro"


class IgnoreResetSeed(gym.Wrapper):
    """Drops the seed RLlib passes to the first reset: each env's games come from its own
    seed (see `make_training_env`), which RLlib's `seed + worker_index (+ i)` scheme
    would make collide between workers."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return self.env.reset(options=options)


_envs_created = 0


def training_env_seed(env_config: dict[str, Any]) -> int:
    """The seed of the next env an env creator makes: from (seed, resume epoch, worker
    index, creation order in the process), so a rerun replays the games and a resumed run
    plays new ones."""
    global _envs_created
    worker = int(getattr(env_config, "worker_index", 0))
    root = np.random.SeedSequence([env_config["seed"], env_config["epoch"], worker, _envs_created])
    _envs_created += 1
    return int(root.generate_state(1)[0])


def make_training_env(env_config: dict[str, Any]) -> gym.Env:
    """RLlib's env creator: the task's deterministic env with `EpisodeStats`, seeded by
    `training_env_seed`."""
    env = make_env(
        env_config["task"],
        seed=training_env_seed(env_config),
        max_episode_steps=env_config["max_episode_steps"],
    )
    return IgnoreResetSeed(EpisodeStats(env))


class EpisodeStatsCallback(RLlibCallback):
    """Env-runner side: sums of `EpisodeStats` fields over finished episodes, plus their
    count, into the env runner's metrics (exact per-iteration means at the driver)."""

    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
        info = episode.get_infos(-1)
        if metrics_logger is None or "episode_score" not in info:
            return
        metrics_logger.log_value((STATS_KEY, "episodes"), 1, reduce="sum")
        for name in EPISODE_FIELDS:
            metrics_logger.log_value(
                (STATS_KEY, f"{name}_sum"), float(info[f"episode_{name}"]), reduce="sum"
            )
