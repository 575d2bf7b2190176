"""The ensemble learner and its interaction loop.

One replay buffer holds every member's transitions, each tagged with the member that
acted. At the start of every episode one member is drawn to act for the whole episode
(`acting_member`): uniformly in an ensemble, the active member (0) with probability
`tandem_p` in a tandem. Every `train_every` env steps one minibatch is drawn from the
buffer and every member learns from it, so a member's share of self-generated data is the
share of the batch it acted in (logged as `data/self_share/<member>`). Targets are synced
every `target_update` steps. Evaluation plays each member, a random member per episode,
and the members' majority vote, epsilon-greedy with `eval_eps`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from maestro.envs.atari import AtariGame
from maestro.envs.minatar import MinAtarGame
from maestro.methods.cerl.config import CerlConfig
from maestro.methods.cerl.losses import double_dqn_target, ensemble_td_loss
from maestro.methods.cerl.model import EnsembleQNetwork
from maestro.rl.networks import frozen_copy, load_parts, parts_to_bytes

TANDEM_ACTIVE = 0  # the member that acts in `tandem_p` of a tandem's episodes
ATARI = "atari/"  # the prefix of an ALE game's name in `env`


def make_game(env: str, seed: int) -> MinAtarGame | AtariGame:
    """`atari/<game>`: the ALE's game; otherwise MinAtar's."""
    if env.startswith(ATARI):
        return AtariGame(env.removeprefix(ATARI), seed)
    return MinAtarGame(env, seed)


def acting_member(cfg: CerlConfig, rng: np.random.Generator) -> int:
    """The member that acts for the next episode."""
    if cfg.mode == "tandem":
        return TANDEM_ACTIVE if rng.random() < cfg.tandem_p else 1 - TANDEM_ACTIVE
    return int(rng.integers(cfg.members))


def epsilon(cfg: CerlConfig, step: int) -> float:
    """Linear decay from `eps_start` to `eps_end` over `eps_decay_steps` env steps."""
    fraction = min(1.0, step / cfg.eps_decay_steps)
    return cfg.eps_start + fraction * (cfg.eps_end - cfg.eps_start)


def majority_vote(actions: np.ndarray, rng: np.random.Generator) -> int:
    """The action most members chose; a tie is broken uniformly."""
    counts = np.bincount(actions)
    return int(rng.choice(np.flatnonzero(counts == counts.max())))


class SharedReplay:
    """The last `capacity` transitions of all members, with who acted in each.

    Observations are stacks of the last `stack` frames (Atari's 4; a MinAtar grid is one
    "frame"), and each frame is stored once: slot i keeps the newest frame of its
    observation and of the next, and the transition's step in its episode. A stack is read
    back from the slots before i; at the start of an episode (whose first observation
    repeats its first frame) the episode's first frame stands in for the missing ones.
    Once the ring is full, the `stack - 1` oldest slots are not sampled: the slots before
    them hold newer transitions."""

    FIELDS = ("frame", "next_frame", "step", "action", "reward", "terminated", "member")

    def __init__(self, obs_shape: tuple[int, ...], stack: int, capacity: int):
        frame_shape = obs_shape[1:] if stack > 1 else obs_shape
        self.stack, self.capacity, self.size, self.position = stack, capacity, 0, 0
        self.frame = np.zeros((capacity, *frame_shape), np.uint8)
        self.next_frame = np.zeros((capacity, *frame_shape), np.uint8)
        self.step = np.zeros(capacity, np.int64)  # the transition's step in its episode
        self.action = np.zeros(capacity, np.int64)
        self.reward = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.member = np.zeros(capacity, np.int64)

    def add(self, obs, action: int, reward: float, next_obs, terminated: bool, member: int,
            step: int) -> None:  # fmt: skip
        i = self.position
        self.frame[i], self.next_frame[i] = self.newest(obs), self.newest(next_obs)
        self.step[i] = step
        self.action[i], self.reward[i], self.terminated[i] = action, reward, terminated
        self.member[i] = member
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def newest(self, obs: np.ndarray) -> np.ndarray:
        """The frame of `obs` this buffer stores: its last (stacked frames) or all of it."""
        return obs[-1] if self.stack > 1 else obs

    def observations(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The observations and next observations of the transitions at `index`."""
        if self.stack == 1:
            return self.frame[index], self.next_frame[index]
        back = np.arange(self.stack - 1, -1, -1)  # oldest frame first
        lag = np.minimum(back[None, :], self.step[index][:, None])
        frames = self.frame[(index[:, None] - lag) % self.capacity]
        shifted = np.concatenate([frames[:, 1:], self.next_frame[index][:, None]], axis=1)
        return frames, shifted

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.size < self.capacity:
            index = rng.integers(self.size, size=batch_size)
        else:
            offset = rng.integers(self.stack - 1, self.capacity, size=batch_size)
            index = (self.position + offset) % self.capacity
        obs, next_obs = self.observations(index)
        batch = {name: getattr(self, name)[index] for name in ("action", "reward", "terminated",
                                                                "member")}  # fmt: skip
        return {"obs": obs, "next_obs": next_obs, **batch}

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays = {name: getattr(self, name)[: self.size] for name in self.FIELDS}
        np.savez(buffer, position=self.position, **arrays)
        return buffer.getvalue()

    def load_bytes(self, data: bytes) -> None:
        saved = np.load(io.BytesIO(data))
        self.size, self.position = len(saved["action"]), int(saved["position"])
        for name in self.FIELDS:
            getattr(self, name)[: self.size] = saved[name]


class EnsembleDQN:
    """N Double-DQN members (one network module holding them all), RMSProp."""

    def __init__(self, obs_shape, num_actions: int, cfg: CerlConfig, scale: float = 1.0):
        self.cfg = cfg
        heads = cfg.members if cfg.cerl else 1
        self.q = EnsembleQNetwork(
            obs_shape, num_actions, cfg.members, heads, cfg.shared_encoder, cfg.convs,
            cfg.hidden, scale,
        ).to(cfg.device)  # fmt: skip
        self.q_target = frozen_copy(self.q)
        self.optimizer = torch.optim.RMSprop(
            self.q.parameters(), lr=cfg.lr, alpha=cfg.rms_alpha, eps=cfg.rms_eps, centered=True
        )

    def tensor(self, array: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype, device=self.cfg.device)

    @torch.no_grad()
    def greedy_actions(self, obs: np.ndarray) -> np.ndarray:
        """Every member's greedy action at `obs`: (members,)."""
        q = self.q.main_heads(self.q(self.tensor(obs[None])))
        return q[:, 0].argmax(-1).cpu().numpy()

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One gradient step of every member on `batch`."""
        obs, next_obs = self.tensor(batch["obs"]), self.tensor(batch["next_obs"])
        action = self.tensor(batch["action"], torch.int64)
        reward, terminated = self.tensor(batch["reward"]), self.tensor(batch["terminated"])
        with torch.no_grad():
            q_next_online = self.q.main_heads(self.q(next_obs))
            q_next_target = self.q_target.main_heads(self.q_target(next_obs))
            y = double_dqn_target(q_next_online, q_next_target, reward, terminated, self.cfg.gamma)
        q = self.q(obs)
        index = action.view(1, 1, -1, 1).expand(*q.shape[:3], 1)
        loss, metrics = ensemble_td_loss(q.gather(-1, index).squeeze(-1), y, self.cfg.aux_weight)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {**metrics, "q/mean": float(q.detach().mean())}

    def sync_targets(self) -> None:
        self.q_target.load_state_dict(self.q.state_dict())

    PARTS = ("q", "q_target", "optimizer")

    def to_bytes(self) -> bytes:
        return parts_to_bytes(self, self.PARTS)

    def load_bytes(self, data: bytes) -> None:
        load_parts(self, self.PARTS, data, self.cfg.device)


class EnsembleLoop:
    """Acting, learning, evaluating and checkpointing one trial."""

    def __init__(self, cfg: CerlConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.game = make_game(cfg.env, seed)
        torch.manual_seed(seed)  # the networks' initial weights
        self.learner = EnsembleDQN(
            self.game.obs_shape, self.game.num_actions, cfg, self.game.obs_scale
        )
        self.replay = SharedReplay(self.game.obs_shape, self.game.stack, cfg.buffer_size)
        self.rng = np.random.default_rng(seed)
        self.env_steps = 0
        self.checkpointed = 0  # the env step of the last checkpoint
        self.episode_returns: list[tuple[int, int, float]] = []  # (member, end step, return)
        self.evaluations: list[dict[str, float]] = []

    def run(self, log: Callable, save: Callable, progress=None) -> dict[str, float]:
        """Interact until `env_steps`; returns the final metrics."""
        cfg = self.cfg
        obs, member, episode_return = self.game.reset(), acting_member(cfg, self.rng), 0.0
        episode_step = 0
        window: dict[str, list[float]] = {}
        started, steps_at_start = time.perf_counter(), self.env_steps
        while self.env_steps < cfg.env_steps:
            if self.rng.random() < epsilon(cfg, self.env_steps):
                action = int(self.rng.integers(self.game.num_actions))
            else:
                action = int(self.learner.greedy_actions(obs)[member])
            next_obs, reward, terminated, truncated = self.game.step(action)
            learned = float(np.sign(reward)) if cfg.clip_rewards else reward
            self.replay.add(obs, action, learned, next_obs, terminated, member, episode_step)
            episode_step += 1
            obs, episode_return = next_obs, episode_return + reward
            self.env_steps += 1
            if self.env_steps >= cfg.learning_starts and self.env_steps % cfg.train_every == 0:
                batch = self.replay.sample(cfg.batch_size, self.rng)
                for name, value in self.learner.update(batch).items():
                    window.setdefault(name, []).append(value)
                for i in range(cfg.members):
                    window.setdefault(f"data/self_share/{i}", []).append(
                        float(np.mean(batch["member"] == i))
                    )
            if self.env_steps % cfg.target_update == 0:
                self.learner.sync_targets()
            if terminated or truncated:
                self.episode_returns.append((member, self.env_steps, episode_return))
                # Checkpoints at episode ends: nothing of an episode in flight to keep.
                if self.env_steps >= self.checkpointed + cfg.checkpoint_every:
                    self.checkpointed = self.env_steps
                    save(self.env_steps)
                obs, member, episode_return = self.game.reset(), acting_member(cfg, self.rng), 0.0
                episode_step = 0
            if progress is not None:
                progress.update(1)
            if self.env_steps % cfg.eval_every == 0:
                seconds = time.perf_counter() - started
                metrics = {name: float(np.mean(v)) for name, v in window.items()}
                metrics["perf/env_steps_per_s"] = (self.env_steps - steps_at_start) / seconds
                metrics.update(self.evaluate())
                log(metrics, self.env_steps)
                window = {}
                started, steps_at_start = time.perf_counter(), self.env_steps
        return self.final()

    def play(self, choose: Callable[[np.ndarray], int], game: MinAtarGame | AtariGame) -> float:
        obs, total, done = game.reset(), 0.0, False
        while not done:
            if self.rng.random() < self.cfg.eval_eps:
                action = int(self.rng.integers(game.num_actions))
            else:
                action = choose(obs)
            obs, reward, terminated, truncated = game.step(action)
            total, done = total + reward, terminated or truncated
        return total

    def evaluate(self) -> dict[str, float]:
        """Mean return over `eval_episodes` of each member (greedy), of a random member
        per episode, and of the majority vote, on a game of its own."""
        cfg = self.cfg
        game = make_game(cfg.env, self.seed + 1_000_000 + self.env_steps)
        result = {}
        for i in range(cfg.members):
            returns = [self.play(lambda o, i=i: int(self.learner.greedy_actions(o)[i]), game)
                       for _ in range(cfg.eval_episodes)]  # fmt: skip
            result[f"eval/member/{i}"] = float(np.mean(returns))
        members = [result[f"eval/member/{i}"] for i in range(cfg.members)]
        result["eval/member_mean"] = float(np.mean(members))
        randoms = []
        for _ in range(cfg.eval_episodes):
            chosen = int(self.rng.integers(cfg.members))
            randoms.append(
                self.play(lambda o, i=chosen: int(self.learner.greedy_actions(o)[i]), game)
            )
        result["eval/random_member"] = float(np.mean(randoms))
        votes = [self.play(lambda o: majority_vote(self.learner.greedy_actions(o), self.rng), game)
                 for _ in range(cfg.eval_episodes)]  # fmt: skip
        result["eval/vote"] = float(np.mean(votes))
        self.evaluations.append(result)
        return result

    def final(self) -> dict[str, float]:
        last = self.evaluations[-1] if self.evaluations else self.evaluate()
        metrics = {
            "member_return": last["eval/member_mean"],
            "vote_return": last["eval/vote"],
            "random_member_return": last["eval/random_member"],
        }
        if self.cfg.mode == "tandem":
            metrics["active_return"] = last[f"eval/member/{TANDEM_ACTIVE}"]
            metrics["passive_return"] = last[f"eval/member/{1 - TANDEM_ACTIVE}"]
        return metrics

    def state(self) -> dict[str, Any]:
        return {
            "learner": self.learner.to_bytes(),
            "replay": self.replay.to_bytes(),
            "rng": self.rng.bit_generator.state,
            "game": self.game.state(),
            "env_steps": self.env_steps,
            "evaluations": self.evaluations,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.learner.load_bytes(state["learner"])
        self.replay.load_bytes(state["replay"])
        self.rng.bit_generator.state = state["rng"]
        self.game.load_state(state["game"])
        self.env_steps = self.checkpointed = state["env_steps"]
        self.evaluations = state["evaluations"]
