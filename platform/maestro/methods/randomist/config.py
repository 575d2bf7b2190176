"""The spec's `config:` block for RANDOMIST: one algorithm on one LQG arm grid (a trial);
the spec's `trials.arms` set `algorithm` (and `perturbation`) per arm to compare them.
The defaults are the paper's (docs/methods/randomist.md has the table)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from maestro.envs.lqg import LQGConfig

Algorithm = Literal["randomist", "optimist", "ucb1", "gpucb", "phe", "thompson"]


class RandomistConfig(BaseModel):
    """The spec's `config:` block for RANDOMIST."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Algorithm = "randomist"
    # The MIS state holds a (rounds x num_arms) table: a million rounds of 49 arms is 0.4 GB.
    rounds: int = Field(default=5000, ge=2, le=1_000_000, description="T, episodes per run")
    num_arms: int = Field(default=49, ge=2, le=10_000)
    theta_min: float = -1.0
    theta_max: float = 1.0
    sigma: float = Field(default=0.15, gt=0, description="hyperpolicy standard deviation")
    alpha: float = Field(default=2.0, gt=0, description="confidence exponent: delta_t ~ t^-alpha")
    perturbation: float = Field(
        default=1.1, gt=0, description="a: pseudo-rewards per (effective) sample"
    )
    # Maestro's own knob, 1 in every paper preset: jobs/randomist/sweep.yaml sweeps it.
    exploration: float = Field(default=1.0, gt=0, description="scales every exploration term")
    gp_length_scale: float = Field(default=1.0, gt=0, description="GP-UCB's RBF length scale")
    gp_noise: float = Field(default=1e-10, gt=0, description="GP-UCB's noise variance")
    value_samples: int = Field(
        default=20000, ge=100, le=1_000_000, description="MC samples per arm value"
    )
    log_every: int = Field(default=50, ge=1, description="rounds between logged points")
    checkpoint_every: int = Field(
        default=1000, ge=1, description="rounds between checkpoints (under PBT: log_every)"
    )
    lqg: LQGConfig = Field(default_factory=LQGConfig)

    @model_validator(mode="after")
    def _check(self) -> RandomistConfig:
        if self.theta_min >= self.theta_max:
            raise ValueError("theta_min must be below theta_max")
        if self.log_every > self.rounds:
            raise ValueError(f"log_every ({self.log_every}) must not exceed rounds ({self.rounds})")
        return self

    def arm_means(self) -> np.ndarray:
        """The hyperpolicy means: an even grid over [theta_min, theta_max]."""
        return np.linspace(self.theta_min, self.theta_max, self.num_arms)
