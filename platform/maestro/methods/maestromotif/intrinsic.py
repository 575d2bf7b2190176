"""MaestroMotif's reward on the learner: each step rewarded by the acting skill's model.

    r_int(t) = 1[r_k(x_t) >= eps_k] * r_k(x_t) / N_episode(k, x_t)^beta

where k is the skill acting at observation t (its `skill`), x_t the reward input of that
observation (the message and the clipped level change, `captions.reward_input`), r_k skill
k's reward model normalised with its training statistics, eps_k its threshold and N the
count of (k, x_t) so far in the episode. The agent trains on Motif's combination of r_int
and the env reward (`maestro.feedback.intrinsic`; the paper: a1 = 0.1, no env reward).

`SkillRewards` is the framework-free core: thresholded rewards of keys `"<k>|<x>"`, which
Motif's `IntrinsicReward` caches and counts per episode like captions. `SkillRewardConnector`
is Motif's learner connector reading those keys from the observations instead of captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from maestro.envs.nethack import captions
from maestro.feedback.intrinsic import IntrinsicReward, IntrinsicRewardConfig
from maestro.feedback.intrinsic_connector import SETTINGS_KEY, IntrinsicRewardConnector
from maestro.feedback.reward_model import RewardModel
from maestro.methods.maestromotif.captions import reward_input


def skill_key(skill: int, text: str) -> str:
    """The key of reward input `text` judged by skill `skill`'s model."""
    return f"{skill}|{text}"


class SkillRewards:
    """Normalised rewards of skill keys, each by its skill's model, 0 below its eps."""

    def __init__(self, models: Sequence[RewardModel], thresholds: Sequence[float]):
        if len(models) != len(thresholds):
            raise ValueError("one threshold per skill model")
        self.models = list(models)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)

    def __call__(self, keys: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(keys), dtype=np.float64)
        by_skill: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            by_skill.setdefault(int(key.split("|", 1)[0]), []).append(index)
        for skill, indices in by_skill.items():
            texts = [keys[i].split("|", 1)[1] for i in indices]
            values = np.asarray(self.models[skill].normalised(texts), dtype=np.float64)
            out[indices] = np.where(values >= self.thresholds[skill], values, 0.0)
        return out


class SkillRewardConnector(IntrinsicRewardConnector):
    """Motif's intrinsic-reward learner connector with per-skill rewards (module docs):
    `reward_models` (each skill's `RewardModel.to_bytes`, in skill order) and `thresholds`
    (eps per skill)."""

    def intrinsic_reward(
        self,
        mix: IntrinsicRewardConfig,
        *,
        reward_models: list[bytes],
        thresholds: list[float],
    ) -> IntrinsicReward:
        models = [RewardModel.from_bytes(data) for data in reward_models]
        # SkillRewards applies each skill's eps; none is left for the shared threshold.
        return IntrinsicReward(SkillRewards(models, thresholds), -np.inf, mix.beta)

    def count_shaped(self, observations: dict[str, np.ndarray], r_int: np.ndarray) -> None:
        """r_int and steps per acting skill (`skill_metrics` in train.py)."""
        skills = np.asarray(observations["skill"], dtype=np.int64)
        for skill in np.unique(skills).tolist():
            acting = skills == skill
            self.totals[f"skill_intrinsic_sum/{skill}"] += float(r_int[acting].sum())
            self.totals[f"skill_steps/{skill}"] += int(acting.sum())

    def step_captions(self, observations: dict[str, np.ndarray]) -> list[str]:
        return [
            skill_key(int(skill), reward_input(message, int(change)))
            for skill, message, change in zip(
                observations["skill"],
                captions(observations["message"]),
                observations["level_change"],
                strict=True,
            )
        ]


def skill_learner_settings(
    models: Sequence[RewardModel], thresholds: Sequence[float], intrinsic: IntrinsicRewardConfig
) -> dict[str, Any]:
    """The `learner_config_dict` entry that rewards each step by its skill's model."""
    return {
        SETTINGS_KEY: {
            "connector_class": SkillRewardConnector,
            "reward_models": [model.to_bytes() for model in models],
            "thresholds": [float(eps) for eps in thresholds],
            "intrinsic": intrinsic.model_dump(),
        }
    }
