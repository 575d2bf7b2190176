"""MAGE's learner: TD3 plus the dynamics ensemble, and the update that the interaction loop
(`maestro.rl.off_policy.ControlLoop`) calls after every env step.

- Every `model.train_every` env steps (warm-up included) the ensemble trains on the whole
  replay buffer: `model.batches` batches rounded up to whole epochs, each member on its own
  shuffle of the buffer.
- After warm-up, `loop.updates_per_step` critic updates per env step (an actor update every
  `td3.policy_delay` of them), each on `imagined_batch` start states drawn from the buffer
  (MAGE, Dyna-TD3) or on `td3.batch_size` real transitions (TD3).
- Divergence reset, as MAGE's code: when the weighted TD loss exceeds
  `divergence_td_loss` or |actor loss| exceeds `divergence_actor_loss`, actor, critic and
  their targets start afresh (the models and the buffer stay).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from maestro.envs.control_tasks import ControlTask
from maestro.methods.mage import losses
from maestro.methods.mage.config import MageConfig
from maestro.methods.mage.model import GaussianEnsemble
from maestro.rl.networks import apply_gradients, make_optimizer
from maestro.rl.off_policy import ControlLoop
from maestro.rl.replay import ReplayBuffer
from maestro.rl.td3 import TD3

GRADIENT_PROBE = 256  # start states on which the logged |grad_a Q| is measured


class MageLearner:
    """What a MAGE trial learns and checkpoints: TD3, and for the model-based arms the
    ensemble and its optimiser."""

    def __init__(self, cfg: MageConfig, task: ControlTask):
        observation_space, action_space = task.spaces()
        obs_dim, action_dim = observation_space.shape[0], action_space.shape[0]
        self.cfg, self.task = cfg, task
        self.device = cfg.device
        self.action_scale = torch.as_tensor(
            action_space.high, dtype=torch.float32, device=self.device
        )
        self.td3 = TD3(obs_dim, action_dim, cfg.td3, self.device)
        self.resets = 0
        self.model: GaussianEnsemble | None = None
        if cfg.algorithm == "mage":
            self.model = GaussianEnsemble(obs_dim, action_dim, cfg.model).to(self.device)
            self.model.requires_grad_(False)  # the critic's loss differentiates through it
            self.model_optimizer = make_optimizer(
                self.model.parameters(), "radam", cfg.model.lr, cfg.model.weight_decay
            )

    def act(self, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.td3.act(obs, rng)

    def update(self, loop: ControlLoop) -> dict[str, float]:
        """The learning after one env step (see the module)."""
        metrics: dict[str, float] = {}
        if self.model is not None and loop.env_steps % self.cfg.model.train_every == 0:
            metrics.update(self.train_model(loop.buffer, loop.rng))
        if loop.exploring:
            return metrics
        for _ in range(loop.cfg.updates_per_step):
            if self.model is None:
                batch = loop.buffer.sample(self.cfg.td3.batch_size, loop.rng, self.device)
                step_metrics = self.td3.update(batch)
            else:
                obs = loop.buffer.sample(self.cfg.imagined_batch, loop.rng, self.device)["obs"]
                step_metrics = self.imagined_update(obs)
            metrics.update(step_metrics)
            if self.diverged(step_metrics):
                self.td3.reinitialise()
                self.resets += 1
        if loop.env_steps % loop.cfg.eval_every == 0:  # a snapshot where the loop logs
            probe = loop.buffer.sample(GRADIENT_PROBE, loop.rng, self.device)["obs"]
            metrics["critic/grad_a_q_norm"] = losses.action_gradient_norm(self.td3, probe)
            metrics["critic/resets"] = self.resets
        return metrics

    def imagined_update(self, obs: torch.Tensor) -> dict[str, float]:
        """One MAGE (or, w_g = 0, Dyna-TD3) critic step, and TD3's delayed actor step."""
        loss, metrics = losses.critic_loss(
            self.td3, self.model, self.task, obs, self.action_scale, self.cfg.w_td, self.cfg.w_g
        )
        return {**metrics, **self.td3.step(loss, obs)}

    def diverged(self, metrics: dict[str, float]) -> bool:
        return (
            self.cfg.w_td * metrics["critic/td_loss"] > self.cfg.divergence_td_loss
            or abs(metrics.get("actor/loss", 0.0)) > self.cfg.divergence_actor_loss
        )

    def train_model(self, buffer: ReplayBuffer, rng: np.random.Generator) -> dict[str, float]:
        """Train every member on the buffer: `batches` batches in whole epochs, each member
        on its own shuffle; standardisation from the buffer first."""
        model, cfg = self.model, self.cfg.model
        size = buffer.size
        data = {
            name: torch.from_numpy(getattr(buffer, name)[:size]).to(self.device)
            for name in ("obs", "action", "next_obs")
        }
        model.normalise_to(data["obs"], data["action"], data["next_obs"])
        per_epoch = math.ceil(size / cfg.batch_size)
        metrics: dict[str, float] = {}
        model.requires_grad_(True)
        for _ in range(math.ceil(cfg.batches / per_epoch)):
            order = np.stack([rng.permutation(size) for _ in range(cfg.ensemble_size)])
            for start in range(0, size, cfg.batch_size):
                index = torch.from_numpy(order[:, start : start + cfg.batch_size]).to(self.device)
                loss, metrics = losses.model_loss(
                    model, data["obs"][index], data["action"][index], data["next_obs"][index]
                )
                apply_gradients(loss, self.model_optimizer, cfg.grad_clip)
        model.requires_grad_(False)
        return metrics

    def to_bytes(self) -> bytes:
        """TD3's state, the ensemble's and its optimiser's, the reset count."""
        buffer = io.BytesIO()
        state = {"td3": self.td3.to_bytes(), "resets": self.resets}
        if self.model is not None:
            state["model"] = self.model.state_dict()
            state["model_optimizer"] = self.model_optimizer.state_dict()
        torch.save(state, buffer)
        return buffer.getvalue()

    def load_bytes(self, data: bytes) -> None:
        saved = torch.load(io.BytesIO(data), map_location=self.device, weights_only=True)
        self.td3.load_bytes(saved["td3"])
        self.resets = saved["resets"]
        if self.model is not None:
            self.model.load_state_dict(saved["model"])
            self.model_optimizer.load_state_dict(saved["model_optimizer"])
