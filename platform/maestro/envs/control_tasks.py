"""gymnasium's continuous-control tasks for the torch learners (`maestro.rl.td3`,
`maestro.rl.sac`): Pendulum-v1 and five MuJoCo v5 tasks, each with its reward
and termination written as differentiable torch functions of (s, a, s'), for model-based
learners that imagine transitions (MAGE).

`TASKS` is the one table of them. Each reward is the environment's own formula read from
the observation, equal to the environment's reward on real transitions within
`REWARD_TOLERANCE` (float32 rounding; tests/test_control_learners.py checks it):

- `Pendulum-v1`: -(theta^2 + 0.1 theta_dot^2 + 0.001 u^2) with theta and theta_dot of s
  (theta = atan2(sin, cos), already in [-pi, pi]) and u the action clipped to [-2, 2].
- MuJoCo v5 (default arguments): the forward term is w_forward dx/dt, the x position
  differenced over the step, which gymnasium's observation does not hold (it leaves x out
  and its velocities are the end of the step's). So, as MAGE's code did, the observation
  here starts with that dx/dt (`StepVelocityObservation`; 0 after a reset), and the reward
  reads it from s'; control cost w_ctrl |a|^2. Hopper and Walker2d add 1 while healthy,
  from s' (height and angle ranges; Hopper's |state| < 100 is checked on the observation,
  whose velocities gymnasium clips to +/-10), and end the episode when not.
- `Pusher-v5`: -0.5 |object - fingertip| - |object - goal| - 0.1 |a|^2, the positions
  read from s' (gymnasium computes it after the step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium
import numpy as np
import torch

REWARD_TOLERANCE = 1e-4
Reward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Termination = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ControlTask:
    """A gymnasium task with its reward r(s, a, s') and termination d(s') in torch (batched
    over the first dimension; d is 1.0 where the episode ends)."""

    env_id: str
    reward: Reward
    terminated: Termination
    step_velocity: bool = False  # the observation starts with the step's dx/dt

    def make(self, seed: int | None = None) -> gymnasium.Env:
        """The environment (gymnasium's time limit included), its spaces seeded."""
        env = gymnasium.make(self.env_id)
        if self.step_velocity:
            env = StepVelocityObservation(env)
        env.action_space.seed(seed)
        return env

    def spaces(self) -> tuple[gymnasium.spaces.Box, gymnasium.spaces.Box]:
        """(observation space, action space)."""
        env = self.make()
        env.close()
        return env.observation_space, env.action_space


class StepVelocityObservation(gymnasium.ObservationWrapper):
    """The observation with the step's x displacement over its duration (gymnasium's
    `info["x_velocity"]`, what the forward reward pays) in front: 0 after a reset."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        low, high = env.observation_space.low, env.observation_space.high
        self.observation_space = gymnasium.spaces.Box(
            np.concatenate([[-np.inf], low]), np.concatenate([[np.inf], high]), dtype=np.float64
        )
        self.x_velocity = 0.0

    def reset(self, **kwargs):
        self.x_velocity = 0.0
        return super().reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.x_velocity = info["x_velocity"]
        return self.observation(obs), reward, terminated, truncated, info

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.concatenate([[self.x_velocity], observation])


def never(next_obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(next_obs.shape[:-1], dtype=next_obs.dtype, device=next_obs.device)


def pendulum_reward(
    obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    theta = torch.atan2(obs[..., 1], obs[..., 0])
    theta_dot = obs[..., 2]
    u = action[..., 0].clamp(-2.0, 2.0)
    return -(theta**2 + 0.1 * theta_dot**2 + 0.001 * u**2)


def locomotion_reward(ctrl_cost_weight: float, healthy=None) -> Reward:
    """w_forward (= 1) dx/dt of s' - w_ctrl |a|^2, plus 1 where `healthy(s')`."""

    def reward(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        r = next_obs[..., 0] - ctrl_cost_weight * (action**2).sum(-1)
        return r if healthy is None else r + healthy(next_obs).to(r.dtype)

    return reward


def pusher_reward(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """-0.5 |object - fingertip| - |object - goal| - 0.1 |a|^2, positions from s'."""
    tip, thing, goal = next_obs[..., 14:17], next_obs[..., 17:20], next_obs[..., 20:23]
    near = (thing - tip).norm(dim=-1)
    dist = (thing - goal).norm(dim=-1)
    return -0.5 * near - dist - 0.1 * (action**2).sum(-1)


# Observations: dx/dt, then gymnasium's (z, angle, other joints, clipped velocities).
def hopper_healthy(next_obs: torch.Tensor) -> torch.Tensor:
    z, angle = next_obs[..., 1], next_obs[..., 2]
    state_ok = (next_obs[..., 2:].abs() < 100.0).all(-1)
    return (z > 0.7) & (angle > -0.2) & (angle < 0.2) & state_ok


def walker_healthy(next_obs: torch.Tensor) -> torch.Tensor:
    z, angle = next_obs[..., 1], next_obs[..., 2]
    return (z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0)


def unhealthy(healthy) -> Termination:
    def terminated(next_obs: torch.Tensor) -> torch.Tensor:
        return (~healthy(next_obs)).to(next_obs.dtype)

    return terminated


TASKS: dict[str, ControlTask] = {
    "Pendulum-v1": ControlTask("Pendulum-v1", pendulum_reward, never),
    "HalfCheetah-v5": ControlTask("HalfCheetah-v5", locomotion_reward(0.1), never, True),
    "Hopper-v5": ControlTask(
        "Hopper-v5",
        locomotion_reward(1e-3, hopper_healthy),
        unhealthy(hopper_healthy),
        True,
    ),
    "Walker2d-v5": ControlTask(
        "Walker2d-v5",
        locomotion_reward(1e-3, walker_healthy),
        unhealthy(walker_healthy),
        True,
    ),
    "Swimmer-v5": ControlTask("Swimmer-v5", locomotion_reward(1e-4), never, True),
    "Pusher-v5": ControlTask("Pusher-v5", pusher_reward, never),
}


def control_task(env_id: str) -> ControlTask:
    """The task called `env_id`; a one-line error naming the known ones."""
    if env_id not in TASKS:
        raise ValueError(f"env {env_id!r}: not a control task (known: {', '.join(TASKS)})")
    return TASKS[env_id]
