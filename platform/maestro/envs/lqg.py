"""The one-dimensional linear-quadratic-Gaussian regulator RANDOMIST is tested on, with the
constants of the paper's code (proceduralia/randomist, `envs/lqg1d.py`):

    u_h     = clip(theta x_h, -max_action, max_action)
    x_{h+1} = clip(x_h + u_h + noise_std eps_h, -max_pos, max_pos),   eps_h ~ N(0, 1)
    r_h     = 1 - (q x_h^2 + r u_h^2) / (q max_pos^2 + r max_action^2)

A policy is the gain theta. An episode lasts `horizon` steps from a start state x_0 that a
run draws once from U[-max_pos, max_pos] and keeps; its return is the discounted sum of r_h
divided by sum_h gamma^h, so it lies in [0, 1]. Everything is vectorised over gains.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class LQGConfig(BaseModel):
    """The LQG problem's constants (the paper's by default)."""

    model_config = ConfigDict(extra="forbid")

    horizon: int = Field(default=20, ge=1)
    gamma: float = Field(default=0.99, gt=0, le=1)
    q: float = Field(default=0.9, ge=0)
    r: float = Field(default=0.9, ge=0)
    max_pos: float = Field(default=4.0, gt=0)
    max_action: float = Field(default=4.0, gt=0)
    noise_std: float = Field(default=0.1, ge=0)


class LQG1D:
    """Episodes of linear policies u = theta * x on the 1-D LQG."""

    def __init__(self, config: LQGConfig):
        self.config = config
        c = config
        self.max_cost = c.q * c.max_pos**2 + c.r * c.max_action**2

    def start_state(self, rng: np.random.Generator) -> float:
        """A run's start state, x_0 ~ U[-max_pos, max_pos]."""
        return float(rng.uniform(-self.config.max_pos, self.config.max_pos))

    def returns(self, thetas: np.ndarray, x0: float, eps: np.ndarray) -> np.ndarray:
        """The normalised return of one episode per gain in `thetas`, from `x0`, with the
        standard-normal noise `eps` (shape (horizon, ...), broadcast against `thetas`)."""
        c = self.config
        thetas = np.asarray(thetas, dtype=float)
        x = np.full(np.broadcast_shapes(thetas.shape, eps.shape[1:]), x0)
        total = np.zeros_like(x)
        discount = 1.0
        for h in range(c.horizon):
            u = np.clip(thetas * x, -c.max_action, c.max_action)
            total += discount * (1.0 - (c.q * x**2 + c.r * u**2) / self.max_cost)
            x = np.clip(x + u + c.noise_std * eps[h], -c.max_pos, c.max_pos)
            discount *= c.gamma
        return total / sum(c.gamma**h for h in range(c.horizon))
