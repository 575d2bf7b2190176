"""TD3 (Fujimoto, van Hoof, Meger, "Addressing Function Approximation Error in Actor-Critic
Methods", ICML 2018) in PyTorch, readable top to bottom: config, networks, losses (pure
functions returning `(loss, metrics)`), the update step.

Actions live in [-1, 1] here (a tanh actor); `maestro.rl.off_policy` scales them to the
environment's bounds. One update:

    a' = clip(pi_target(s') + clip(N(0, policy_noise), -noise_clip, noise_clip), -1, 1)
    y  = r + gamma (1 - terminated) min(Q1_target(s', a'), Q2_target(s', a'))
    critic loss = mean over the two critics of l(Q_i(s, a) - y)   (l: squared or Huber)
    every `policy_delay` updates: actor loss = -Q(s, pi(s)) (Q1, or min(Q1, Q2)), then
    targets <- Polyak averages with rate tau.

The original sums the two critics' squared errors; the mean is half of it, which Adam
does not see (it is invariant to the loss's scale), and is what MAGE's code minimises.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from maestro.rl.networks import (
    Activation,
    Optimizer,
    TwinCritic,
    apply_gradients,
    frozen_copy,
    load_parts,
    make_optimizer,
    mlp,
    parts_to_bytes,
    soft_update,
)


class TD3Config(BaseModel):
    """TD3's settings; the defaults are the paper's."""

    model_config = ConfigDict(extra="forbid")

    hidden: tuple[int, ...] = (256, 256)
    activation: Activation = "relu"
    optimizer: Optimizer = "adam"
    actor_lr: float = Field(default=3e-4, gt=0)
    critic_lr: float = Field(default=3e-4, gt=0)
    gamma: float = Field(default=0.99, gt=0, le=1)
    tau: float = Field(default=0.005, gt=0, le=1)
    batch_size: int = Field(default=256, ge=1)
    policy_noise: float = Field(default=0.2, ge=0, description="target policy smoothing")
    noise_clip: float = Field(default=0.5, ge=0)
    policy_delay: int = Field(default=2, ge=1, description="critic updates per actor update")
    exploration_noise: float = Field(default=0.1, ge=0, description="Gaussian, acting")
    td_loss: Literal["squared", "huber"] = "squared"
    actor_q: Literal["q1", "min"] = "q1"
    grad_clip: float | None = Field(default=None, gt=0, description="by value")


class Actor(nn.Module):
    """The deterministic policy pi(s) in [-1, 1]."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: TD3Config):
        super().__init__()
        self.net = mlp(obs_dim, cfg.hidden, action_dim, cfg.activation)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))


def td_target(
    actor_target: nn.Module,
    critic_target: TwinCritic,
    r: torch.Tensor,
    next_obs: torch.Tensor,
    terminated: torch.Tensor,
    cfg: TD3Config,
) -> torch.Tensor:
    """y = r + gamma (1 - terminated) min_i Q_i_target(s', a') with a smoothed target
    action a'. Differentiable in r and s' (MAGE differentiates it in the action)."""
    a_next = actor_target(next_obs)
    noise = (torch.randn_like(a_next) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
    q1, q2 = critic_target(next_obs, (a_next + noise).clamp(-1.0, 1.0))
    return r + cfg.gamma * (1.0 - terminated) * torch.min(q1, q2)


def td_loss(delta: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean squared or Huber (delta 1) TD error."""
    if kind == "huber":
        return F.huber_loss(delta, torch.zeros_like(delta))
    return (delta**2).mean()


def critic_loss(
    critic: TwinCritic, obs: torch.Tensor, action: torch.Tensor, y: torch.Tensor, cfg: TD3Config
) -> tuple[torch.Tensor, dict[str, float]]:
    """The mean over the two critics of the TD loss towards the target y."""
    q1, q2 = critic(obs, action)
    loss = 0.5 * (td_loss(q1 - y, cfg.td_loss) + td_loss(q2 - y, cfg.td_loss))
    return loss, {"critic/td_loss": loss.item(), "critic/q": q1.mean().item()}


def actor_loss(
    actor: Actor, critic: TwinCritic, obs: torch.Tensor, cfg: TD3Config
) -> tuple[torch.Tensor, dict[str, float]]:
    """-Q(s, pi(s)), Q1's or the twins' minimum."""
    q1, q2 = critic(obs, actor(obs))
    q = q1 if cfg.actor_q == "q1" else torch.min(q1, q2)
    loss = -q.mean()
    return loss, {"actor/loss": loss.item()}


class TD3:
    """The networks, their targets and optimisers, and the update step."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: TD3Config, device: str = "cpu"):
        self.obs_dim, self.action_dim, self.cfg, self.device = obs_dim, action_dim, cfg, device
        self.updates = 0
        self.reinitialise()

    def reinitialise(self) -> None:
        """Fresh networks, targets and optimisers (a reset keeps the replay buffer)."""
        cfg = self.cfg
        self.actor = Actor(self.obs_dim, self.action_dim, cfg).to(self.device)
        self.critic = TwinCritic(self.obs_dim, self.action_dim, cfg.hidden, cfg.activation)
        self.critic.to(self.device)
        self.actor_target, self.critic_target = frozen_copy(self.actor), frozen_copy(self.critic)
        self.actor_optimizer = make_optimizer(self.actor.parameters(), cfg.optimizer, cfg.actor_lr)
        self.critic_optimizer = make_optimizer(
            self.critic.parameters(), cfg.optimizer, cfg.critic_lr
        )

    @torch.no_grad()
    def act(self, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """pi(s), plus clipped Gaussian exploration noise when `rng` is given."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        action = self.actor(obs_t).cpu().numpy()
        if rng is not None:
            action = action + rng.normal(0.0, self.cfg.exploration_noise, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One TD3 update on a batch of real transitions."""
        with torch.no_grad():
            y = td_target(
                self.actor_target,
                self.critic_target,
                batch["reward"],
                batch["next_obs"],
                batch["terminated"],
                self.cfg,
            )
        loss, metrics = critic_loss(self.critic, batch["obs"], batch["action"], y, self.cfg)
        return {**metrics, **self.step(loss, batch["obs"])}

    def step(self, loss: torch.Tensor, obs: torch.Tensor) -> dict[str, float]:
        """A critic step on `loss`; every `policy_delay` of them an actor step on `obs` and
        the targets' Polyak update. Returns the actor's metrics when it moved."""
        apply_gradients(loss, self.critic_optimizer, self.cfg.grad_clip)
        self.updates += 1
        if self.updates % self.cfg.policy_delay:
            return {}
        self.critic.requires_grad_(False)  # the actor's loss moves the actor only
        loss, metrics = actor_loss(self.actor, self.critic, obs, self.cfg)
        apply_gradients(loss, self.actor_optimizer, self.cfg.grad_clip)
        self.critic.requires_grad_(True)
        soft_update(self.actor_target, self.actor, self.cfg.tau)
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        return metrics

    def to_bytes(self) -> bytes:
        """Networks, targets, optimiser states and the update count."""
        return parts_to_bytes(self, PARTS, updates=self.updates)

    def load_bytes(self, data: bytes) -> None:
        self.updates = load_parts(self, PARTS, data, self.device)["updates"]


PARTS = ("actor", "critic", "actor_target", "critic_target", "actor_optimizer", "critic_optimizer")
