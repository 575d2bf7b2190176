"""A one-dimensional linear-quadratic-Gaussian control problem (RANDOMIST's test bed).

    x_{h+1} = x_h + u_h + noise,   u_h = theta * x_h,   cost_h = q x_h^2 + r u_h^2

A policy is the gain `theta`. An episode starts from x_0 ~ U[x0_min, x0_max] and lasts
`horizon` steps. Its return is mapped into [0, 1] as `1 - min(cost / cost_scale, 1)`, so
bandit algorithms that assume bounded rewards apply. Everything is vectorised over policies.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class LQGConfig(BaseModel):
    """The LQG problem's constants."""

    model_config = ConfigDict(extra="forbid")

    horizon: int = Field(default=10, ge=1)
    gamma: float = Field(default=0.95, gt=0, le=1)
    q: float = Field(default=1.0, ge=0)
    r: float = Field(default=1.0, ge=0)
    x0_min: float = 0.5
    x0_max: float = 1.0
    noise_std: float = Field(default=0.1, ge=0)
    cost_scale: float = Field(default=2.0, gt=0)


class LQG1D:
    """Rollouts of linear policies u = theta * x on the 1-D LQG."""

    def __init__(self, config: LQGConfig):
        self.config = config

    def rewards(self, thetas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One episode per gain in `thetas`; the normalised return of each, in [0, 1]."""
        c = self.config
        thetas = np.asarray(thetas, dtype=float)
        x = rng.uniform(c.x0_min, c.x0_max, size=thetas.shape)
        cost = np.zeros_like(x)
        discount = 1.0
        for _ in range(c.horizon):
            u = thetas * x
            cost += discount * (c.q * x**2 + c.r * u**2)
            x = x + u + c.noise_std * rng.standard_normal(x.shape)
            # Unstable gains blow up; the normalised reward is 0 for them anyway.
            x = np.clip(x, -1e3, 1e3)
            discount *= c.gamma
        return 1.0 - np.minimum(cost / c.cost_scale, 1.0)

    def expected_reward(
        self, thetas: np.ndarray, samples: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Monte Carlo estimate of the mean normalised return of each gain."""
        thetas = np.asarray(thetas, dtype=float)
        repeated = np.repeat(thetas[:, None], samples, axis=1)
        return self.rewards(repeated, rng).mean(axis=1)
