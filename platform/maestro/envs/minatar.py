"""MinAtar games (Young, Tian, "MinAtar: An Atari-Inspired Testbed for Thorough and
Reproducible Reinforcement Learning Experiments", 2019, arXiv:1903.03176) as small
episodic tasks for the discrete-action learners.

The observation is the game's 10 x 10 grid of channels (objects), as float32 in the
channel-first layout convolutions take; actions are the game's minimal action set;
sticky actions (probability 0.1) as the MinAtar paper. An episode is cut (truncated, not
terminated) after `max_steps`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")


@dataclass
class MinAtarGame:
    """One MinAtar game with its own random stream."""

    game: str
    seed: int
    sticky_action_prob: float = 0.1
    max_steps: int = 10_000
    steps: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.game not in GAMES:
            raise ValueError(f"MinAtar game {self.game!r}: one of {', '.join(GAMES)}")
        from minatar import Environment

        self.env = Environment(self.game, sticky_action_prob=self.sticky_action_prob)
        self.env.seed(self.seed)
        self.actions = list(self.env.minimal_action_set())

    obs_scale = 1.0  # the grid is 0/1 already
    stack = 1  # frames per observation: the grid is the whole state

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        height, width, channels = self.env.state_shape()
        return channels, height, width

    def observe(self) -> np.ndarray:
        return np.ascontiguousarray(self.env.state().transpose(2, 0, 1), dtype=np.float32)

    def reset(self) -> np.ndarray:
        self.env.reset()
        self.steps = 0
        return self.observe()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        """(observation, reward, terminated, truncated) after `action` (an index into the
        minimal action set)."""
        reward, terminated = self.env.act(self.actions[action])
        self.steps += 1
        return self.observe(), float(reward), bool(terminated), self.steps >= self.max_steps

    def state(self) -> bytes:
        """The game's random generator and the action a sticky step repeats, between
        episodes (a checkpoint)."""
        name, keys, position, has_gauss, gauss = self.env.random.get_state()
        return json.dumps(
            [name, keys.tolist(), position, has_gauss, gauss, int(self.env.last_action)]
        ).encode()

    def load_state(self, data: bytes) -> None:
        name, keys, position, has_gauss, gauss, last_action = json.loads(data)
        self.env.random.set_state((name, np.array(keys, np.uint32), position, has_gauss, gauss))
        self.env.last_action = last_action
