"""The replay buffer of the torch off-policy learners (`maestro.rl.td3`, `maestro.rl.sac`):
a ring of the last `capacity` transitions (s, a, r, s', terminated), sampled uniformly.

`terminated` is the environment's own end (a fall), not a time limit: a learner bootstraps
through a truncation. The buffer is part of a trial's checkpoint (`to_bytes`), so a resumed
trial samples from the same contents.
"""

from __future__ import annotations

import io

import numpy as np
import torch

FIELDS = ("obs", "action", "reward", "next_obs", "terminated")


class ReplayBuffer:
    """The last `capacity` transitions, as float32 arrays."""

    def __init__(self, obs_dim: int, action_dim: int, capacity: int):
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.action = np.zeros((capacity, action_dim), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.size = 0
        self.position = 0  # where the next transition goes

    def add(self, obs, action, reward: float, next_obs, terminated: bool) -> None:
        i = self.position
        self.obs[i], self.action[i], self.reward[i] = obs, action, reward
        self.next_obs[i], self.terminated[i] = next_obs, terminated
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(
        self, batch_size: int, rng: np.random.Generator, device: str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """`batch_size` transitions drawn uniformly (with replacement), tensors on `device`."""
        return self.batch(rng.integers(0, self.size, size=batch_size), device)

    def batch(self, index: np.ndarray, device: str = "cpu") -> dict[str, torch.Tensor]:
        """The transitions at `index` (positions in the buffer), tensors on `device`."""
        return {name: torch.from_numpy(getattr(self, name)[index]).to(device) for name in FIELDS}

    def to_bytes(self) -> bytes:
        """The filled part and the write position, as one `.npz`."""
        buffer = io.BytesIO()
        filled = {name: getattr(self, name)[: self.size] for name in FIELDS}
        np.savez(buffer, size=self.size, position=self.position, **filled)
        return buffer.getvalue()

    def load_bytes(self, data: bytes) -> None:
        """Contents and write position from `to_bytes` (same capacity and shapes)."""
        saved = np.load(io.BytesIO(data))
        self.size, self.position = int(saved["size"]), int(saved["position"])
        for name in FIELDS:
            getattr(self, name)[: self.size] = saved[name]
