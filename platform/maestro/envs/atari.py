"""Atari 2600 games through the Arcade Learning Environment (`ale-py`, which ships the ROMs),
preprocessed as DQN's (Mnih et al., Nature 2015) for the discrete-action learners.

Each agent step repeats the action for 4 frames and keeps the pixel-wise maximum of the last
two (flicker); frames are grey, resized to 84 x 84 (bilinear), and the observation is the
last 4 of them, uint8, channel first. Sticky actions with probability 0.25 (Machado et al.,
JAIR 2018) make the games stochastic; an episode ends at game over (a lost life does not
end it) and is cut (truncated) after 27,000 agent steps (108,000 frames). Rewards are the
game's; learners clip them if they want. `state()` / `load_state()` carry the emulator with
its random generator, so a checkpointed trial resumes the same game.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

FRAME_SKIP = 4
FRAMES = 4  # stacked in an observation
SIZE = 84


@dataclass
class AtariGame:
    """One ALE game with its own emulator and random stream."""

    game: str
    seed: int
    sticky_action_prob: float = 0.25
    max_steps: int = 27_000
    steps: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        from ale_py import ALEInterface, LoggerMode, roms

        ALEInterface.setLoggerMode(LoggerMode.Error)
        self.ale = ALEInterface()
        self.ale.setInt("random_seed", self.seed)
        self.ale.setFloat("repeat_action_probability", self.sticky_action_prob)
        self.ale.setInt("frame_skip", 1)
        try:
            self.ale.loadROM(roms.get_rom_path(self.game))
        except Exception as exc:  # ale-py raises its own error types for unknown ROMs
            raise ValueError(f"Atari game {self.game!r}: {exc}") from None
        self.actions = list(self.ale.getMinimalActionSet())
        self.frames: deque[np.ndarray] = deque(maxlen=FRAMES)

    obs_scale = 1 / 255  # pixels
    stack = FRAMES  # frames per observation

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        return FRAMES, SIZE, SIZE

    def frame(self, screens: list[np.ndarray] | None = None) -> np.ndarray:
        """The current screen (or the pixel-wise maximum of `screens`), grey, 84 x 84."""
        from PIL import Image

        grey = np.maximum.reduce(screens) if screens else self.ale.getScreenGrayscale()
        return np.asarray(Image.fromarray(grey).resize((SIZE, SIZE), Image.BILINEAR))

    def observe(self) -> np.ndarray:
        return np.stack(self.frames)

    def reset(self) -> np.ndarray:
        self.ale.reset_game()
        self.steps = 0
        first = self.frame()
        self.frames.extend([first] * FRAMES)
        return self.observe()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        """(observation, reward, terminated, truncated) after `action` (an index into the
        minimal action set), repeated for 4 frames."""
        reward, last_two = 0.0, []
        for repeat in range(FRAME_SKIP):
            reward += self.ale.act(self.actions[action])
            if repeat >= FRAME_SKIP - 2:
                last_two.append(self.ale.getScreenGrayscale())
            if self.ale.game_over():
                break
        self.frames.append(self.frame(last_two))
        self.steps += 1
        return self.observe(), float(reward), self.ale.game_over(), self.steps >= self.max_steps

    def state(self) -> bytes:
        """The emulator and its random generator, between episodes (a checkpoint)."""
        return bytes(self.ale.cloneState(include_rng=True).serialize())

    def load_state(self, data: bytes) -> None:
        from ale_py import ALEState

        self.ale.restoreState(ALEState(data))
