"""Motif's intrinsic reward from a caption reward model (docs/methods/motif.md):

    r_int(c) = 1[r(c) >= eps] * r(c) / N_episode(c)^beta

where c is the caption of the observation the action was taken from, r the reward model's
output normalised with its training statistics, eps the threshold stored with the model,
and N_episode(c) how many times caption c has been seen so far in the episode (this
occurrence included). The agent trains on, as Motif:

    a1 * r_int + a2 * clip(scale * r_env, -clip, clip)

The reward model is evaluated once per distinct caption: captions repeat heavily, so a cache
makes the reward almost free on the learner.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class IntrinsicRewardConfig(BaseModel):
    """The numbers of Motif's reward combination (in every Motif spec)."""

    model_config = ConfigDict(extra="forbid")

    coef_intrinsic: float = Field(default=0.1, ge=0, description="a1")
    coef_extrinsic: float = Field(default=0.0, ge=0, description="a2")
    extrinsic_scale: float = Field(default=0.1, gt=0, description="r_env's scale before a2")
    extrinsic_clip: float | None = Field(
        default=10.0, gt=0, description="|scale * r_env| clipped to this (None: no clip)"
    )
    beta: float = Field(default=3.0, ge=0, description="count exponent")
    threshold_quantile: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="eps as a quantile of the normalised rewards of the dataset's distinct "
        "captions; None uses the reward model's own threshold",
    )


class IntrinsicReward:
    """Cached, batched r_int for captions, with per-episode counts kept by the caller."""

    def __init__(
        self,
        normalised_reward: Callable[[list[str]], np.ndarray],
        threshold: float,
        beta: float,
    ):
        self.normalised_reward = normalised_reward
        self.threshold = threshold
        self.beta = beta
        self.cache: dict[str, float] = {}

    def caption_rewards(self, captions: Sequence[str]) -> np.ndarray:
        """Normalised, thresholded r(c) for each caption (model calls only for new ones)."""
        new = sorted({c for c in captions if c not in self.cache})
        if new:
            values = np.asarray(self.normalised_reward(new), dtype=np.float64)
            kept = np.where(values >= self.threshold, values, 0.0)
            self.cache.update(zip(new, kept.tolist(), strict=True))
        return np.array([self.cache[c] for c in captions], dtype=np.float64)

    def episode_rewards(self, captions: Sequence[str], counts: Counter) -> np.ndarray:
        """r_int for consecutive captions of one episode; `counts` carries the episode's
        caption counts across calls (a fresh Counter at each episode start)."""
        base = self.caption_rewards(captions)
        out = np.empty(len(captions), dtype=np.float64)
        for i, caption in enumerate(captions):
            counts[caption] += 1
            out[i] = base[i] / counts[caption] ** self.beta
        return out


def combine(
    intrinsic: np.ndarray, extrinsic: np.ndarray, config: IntrinsicRewardConfig
) -> np.ndarray:
    """The reward the agent trains on: a1 * r_int + a2 * clip(scale * r_env, -clip, clip)."""
    scaled = config.extrinsic_scale * np.asarray(extrinsic, dtype=np.float64)
    if config.extrinsic_clip is not None:
        scaled = np.clip(scaled, -config.extrinsic_clip, config.extrinsic_clip)
    return config.coef_intrinsic * np.asarray(intrinsic) + config.coef_extrinsic * scaled
