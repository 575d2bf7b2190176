"""Figures read from RLlib: what an iteration's result says (env steps sampled, episode
measures, losses) and what the learners counted since the last iteration."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from maestro.envs.nethack import EPISODE_FIELDS
from maestro.rl.env import STATS_KEY


def nested(result: dict, *keys: str, default: Any = None) -> Any:
    """`result[k1][k2]...`, or `default` where a key is missing."""
    for key in keys:
        if not isinstance(result, dict) or key not in result:
            return default
        result = result[key]
    return result


def count(value: Any) -> float:
    """A summed metric as a number: RLlib reports NaN for a sum nothing was added to."""
    return 0.0 if value is None or not math.isfinite(value) else float(value)


def finite(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics that have a finite value, as floats (what a tracker can log)."""
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}


def learner_stats(algo, maxima: Collection[str] = ()) -> dict[str, float]:
    """What the learners' `drain_stats()` returned since the last call (a learner class
    that defines it counts, e.g., its gradient updates), summed over all learners; the
    keys in `maxima` are sizes, not counts, and take the largest learner's value."""
    totals: dict[str, float] = {}
    for call in algo.learner_group.foreach_learner(lambda learner: learner.drain_stats()):
        for key, value in call.get().items():
            if key in maxima:
                totals[key] = max(totals.get(key, 0), value)
            else:
                totals[key] = totals.get(key, 0) + value
    return totals


def iteration_metrics(
    result: dict, learner: dict[str, float], env_steps: int, seconds: float
) -> dict[str, float]:
    """Tracker metrics of one iteration: throughput, gradient updates (from `learner`,
    see `learner_stats`), env steps trained, the losses, and per-episode means of the
    `EpisodeStats` measures over the episodes the env runners finished in it
    (`train/<field>`, with `train/episodes`)."""
    metrics = {
        "env_steps_per_s": env_steps / seconds if seconds > 0 else 0.0,
        "learner/gradient_updates": learner.get("gradient_updates", 0),
        "learner/env_steps_trained": count(
            nested(result, "learners", "__all_modules__", "num_env_steps_trained")
        ),
    }
    stats = nested(result, "env_runners", STATS_KEY, default={})
    episodes = count(stats.get("episodes"))
    if episodes:
        for name in EPISODE_FIELDS:
            if name == "success":
                continue
            metrics[f"train/{name}"] = stats[f"{name}_sum"] / episodes
        metrics["train/episodes"] = episodes
    module = nested(result, "learners", "default_policy", default={})
    for name in ("policy_loss", "vf_loss", "entropy"):
        if name in module:
            metrics[f"learner/{name}"] = module[name]
    return finite(metrics)


def sampled_env_steps(result: dict) -> int:
    """Env steps the env runners sampled in this iteration."""
    return int(count(nested(result, "env_runners", "num_env_steps_sampled")))
