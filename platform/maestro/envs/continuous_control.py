"""Mountain Car (continuous) and a continuous-force CartPole, played by linear policies
a = W s (no bias), for MCMC-RANDOMIST and PGPE (docs/methods/randomist_mcmc.md).

`PROBLEMS` is the one table of each problem's constants, the values of the official code
(github.com/proceduralia/randomist, `run_rl_experiment.py`): horizon, the box that the
hyperpolicy means live in, the hyperpolicy standard deviation per parameter, and the
return range that the algorithms normalise by.

- `mountain_car`: gymnasium's `MountainCarContinuous-v0` (`make_env`). `episode_return`
  replays its dynamics in plain floats, float32 state included, so its returns are the
  gymnasium environment's (tests/test_randomist_mcmc.py checks it).
- `cartpole`: gymnasium has no continuous CartPole. `ContinuousCartPole` has CartPole's
  physics (Euler steps of 0.02 s) with a force in [-10, 10] N instead of +/-10 N, as the
  official `envs/cartpole.py`: the action is the force in newtons, clipped to
  [-10, 10]; reward 1 for every step, the failing step included; the episode ends when
  |x| > 2.4 or |angle| > 12 degrees, or after 200 steps. Start: every state variable
  uniform in [-0.05, 0.05].

The policy's action is clipped to the action space before the environment sees it (the
official code clipped only the force, so Mountain Car charged the unclipped action's
square; here the reward charges the clipped one).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit


@dataclass(frozen=True)
class Problem:
    """A control problem's constants (the official values)."""

    name: str
    state_dim: int
    horizon: int
    box: tuple[tuple[float, float], ...]  # per parameter: (low, high) of hyperpolicy means
    std: tuple[float, ...]  # hyperpolicy standard deviation per parameter
    return_range: tuple[float, float]

    @property
    def lower(self) -> np.ndarray:
        return np.array([low for low, _ in self.box], dtype=float)

    @property
    def upper(self) -> np.ndarray:
        return np.array([high for _, high in self.box], dtype=float)

    @property
    def width(self) -> float:
        """Width of the return range."""
        return self.return_range[1] - self.return_range[0]


PROBLEMS: dict[str, Problem] = {
    "mountain_car": Problem(
        name="mountain_car",
        state_dim=2,  # position, velocity
        horizon=999,
        box=((-1.0, 1.0), (0.0, 20.0)),
        std=(0.15, 3.0),
        return_range=(-5.0, 95.0),
    ),
    "cartpole": Problem(
        name="cartpole",
        state_dim=4,  # x, x velocity, angle, angular velocity
        horizon=200,
        box=((-2.0, 2.0), (0.0, 4.0), (0.0, 10.0), (0.0, 12.0)),
        std=(1.0, 1.0, 1.0, 1.0),
        return_range=(0.0, 200.0),
    ),
}

# CartPole's constants (gymnasium's CartPole-v1 and the official envs/cartpole.py alike).
GRAVITY = 9.8
MASS_CART = 1.0
MASS_POLE = 0.1
TOTAL_MASS = MASS_CART + MASS_POLE
HALF_LENGTH = 0.5
POLE_MASS_LENGTH = MASS_POLE * HALF_LENGTH
FORCE_MAG = 10.0
TAU = 0.02
ANGLE_LIMIT = 12 * 2 * math.pi / 360
X_LIMIT = 2.4

# Mountain Car's (gymnasium's MountainCarContinuous-v0).
CAR_POWER = 0.0015
CAR_MAX_SPEED = 0.07
CAR_MIN_POSITION = -1.2
CAR_MAX_POSITION = 0.6
CAR_GOAL_POSITION = 0.45


def float32(value: float) -> float:
    """`value` rounded to single precision, as a Python float."""
    return struct.unpack("f", struct.pack("f", value))[0]


def cartpole_step(
    state: tuple[float, float, float, float], force: float
) -> tuple[tuple[float, float, float, float], bool]:
    """One Euler step of the cart-pole under `force` (newtons): the next state and whether
    the episode ends there."""
    x, x_dot, theta, theta_dot = state
    cos, sin = math.cos(theta), math.sin(theta)
    temp = (force + POLE_MASS_LENGTH * theta_dot * theta_dot * sin) / TOTAL_MASS
    theta_acc = (GRAVITY * sin - cos * temp) / (
        HALF_LENGTH * (4.0 / 3.0 - MASS_POLE * cos * cos / TOTAL_MASS)
    )
    x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS
    x = x + TAU * x_dot
    x_dot = x_dot + TAU * x_acc
    theta = theta + TAU * theta_dot
    theta_dot = theta_dot + TAU * theta_acc
    done = x < -X_LIMIT or x > X_LIMIT or theta < -ANGLE_LIMIT or theta > ANGLE_LIMIT
    return (x, x_dot, theta, theta_dot), done


class ContinuousCartPole(gymnasium.Env):
    """CartPole with a continuous force: the action (shape (1,)) is the force in newtons,
    clipped to [-10, 10]. Reward 1 per step, the failing step included; no time limit of
    its own (`make_env` adds the horizon)."""

    metadata = {"render_modes": []}

    def __init__(self):
        high = np.array(
            [X_LIMIT * 2, np.inf, ANGLE_LIMIT * 2, np.inf],
            dtype=np.float32,
        )
        self.action_space = spaces.Box(-FORCE_MAG, FORCE_MAG, shape=(1,), dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.state: tuple[float, float, float, float] | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state = tuple(float(v) for v in self.np_random.uniform(-0.05, 0.05, size=4))
        return np.array(self.state, dtype=np.float32), {}

    def step(self, action):
        if self.state is None:
            raise RuntimeError("call reset before step")
        force = min(max(float(np.asarray(action).reshape(-1)[0]), -FORCE_MAG), FORCE_MAG)
        self.state, done = cartpole_step(self.state, force)
        return np.array(self.state, dtype=np.float32), 1.0, done, False, {}


def make_env(name: str) -> gymnasium.Env:
    """The gymnasium environment of problem `name`, with its horizon as time limit."""
    problem = PROBLEMS[name]
    if name == "mountain_car":
        return gymnasium.make("MountainCarContinuous-v0", max_episode_steps=problem.horizon)
    if name == "cartpole":
        return TimeLimit(ContinuousCartPole(), max_episode_steps=problem.horizon)
    raise KeyError(f"no problem {name!r} (known: {', '.join(PROBLEMS)})")


def episode_return(name: str, weights: np.ndarray, seed: int) -> float:
    """The return of one episode of the linear policy a = clip(weights . s) on problem
    `name`, from the start state that `make_env(name).reset(seed=seed)` gives. Plain
    floats, no environment object: this is the inner loop of every trial."""
    w = [float(v) for v in np.asarray(weights, dtype=float).reshape(-1)]
    start = np.random.default_rng(seed)  # what gymnasium's reset(seed=seed) draws from
    if name == "mountain_car":
        return mountain_car_return(w, float(start.uniform(-0.6, -0.4)))
    if name == "cartpole":
        return cartpole_return(w, tuple(float(v) for v in start.uniform(-0.05, 0.05, size=4)))
    raise KeyError(f"no problem {name!r} (known: {', '.join(PROBLEMS)})")


def mountain_car_return(w: list[float], position: float) -> float:
    """Mountain Car from (position, 0) for at most 999 steps: gymnasium's step, whose
    state is stored in float32 after every step (and `3 * position` computed in float32
    from then on), replayed in floats."""
    w_position, w_velocity = w
    velocity = 0.0
    total = 0.0
    for step in range(PROBLEMS["mountain_car"].horizon):
        observed = w_position * float32(position) + w_velocity * float32(velocity)
        action = min(max(observed, -1.0), 1.0)
        angle = 3 * position if step == 0 else float32(3 * position)
        velocity = velocity + (action * CAR_POWER - 0.0025 * math.cos(angle))
        velocity = min(max(velocity, -CAR_MAX_SPEED), CAR_MAX_SPEED)
        position = min(max(position + velocity, CAR_MIN_POSITION), CAR_MAX_POSITION)
        if position == CAR_MIN_POSITION and velocity < 0:
            velocity = 0.0
        done = position >= CAR_GOAL_POSITION and velocity >= 0
        total += (100.0 if done else 0.0) - action * action * 0.1
        if done:
            break
        position, velocity = float32(position), float32(velocity)
    return total


def cartpole_return(w: list[float], state: tuple[float, float, float, float]) -> float:
    """Continuous CartPole from `state` for at most 200 steps; the policy sees the float32
    observation, as it would through `ContinuousCartPole`."""
    total = 0.0
    for _ in range(PROBLEMS["cartpole"].horizon):
        action = sum(wi * float32(si) for wi, si in zip(w, state, strict=True))
        state, done = cartpole_step(state, min(max(action, -FORCE_MAG), FORCE_MAG))
        total += 1.0
        if done:
            break
    return total
