"""SAC with a learned temperature (Haarnoja et al., "Soft Actor-Critic Algorithms and
Applications", arXiv:1812.05905) in PyTorch, readable top to bottom: config, networks,
losses (pure functions returning `(loss, metrics)`), the update step.

Actions live in [-1, 1] (a tanh-squashed Gaussian); `maestro.rl.off_policy` scales them to
the environment's bounds. One update:

    a' ~ pi(.|s'),  y = r + gamma (1 - terminated) (min_i Q_i_target(s', a') - alpha log pi(a'|s'))
    critic loss = mean over the two critics of (Q_i(s, a) - y)^2
    actor loss  = E_{a ~ pi(.|s)} [alpha log pi(a|s) - min_i Q_i(s, a)]
    alpha loss  = -log alpha (log pi(a|s) + target entropy),  target entropy = -dim(A)
    targets <- Polyak averages of the critics with rate tau.
"""

from __future__ import annotations

import math

import numpy as np
import torch
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

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # the paper's code


class SACConfig(BaseModel):
    """SAC's settings; the defaults are the paper's."""

    model_config = ConfigDict(extra="forbid")

    hidden: tuple[int, ...] = (256, 256)
    activation: Activation = "relu"
    optimizer: Optimizer = "adam"
    actor_lr: float = Field(default=3e-4, gt=0)
    critic_lr: float = Field(default=3e-4, gt=0)
    alpha_lr: float = Field(default=3e-4, gt=0)
    gamma: float = Field(default=0.99, gt=0, le=1)
    tau: float = Field(default=0.005, gt=0, le=1)
    batch_size: int = Field(default=256, ge=1)
    initial_alpha: float = Field(default=1.0, gt=0)
    target_entropy: float | None = Field(default=None, description="None: -dim(A)")


class GaussianActor(nn.Module):
    """pi(a|s): a Gaussian squashed by tanh into [-1, 1]."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: SACConfig):
        super().__init__()
        self.net = mlp(obs_dim, cfg.hidden, 2 * action_dim, cfg.activation)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised sample and its log-probability (tanh's Jacobian included)."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        u = mean + std * torch.randn_like(mean)
        log_prob = (-0.5 * ((u - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(
            -1
        )
        # log(1 - tanh(u)^2), written stably
        log_prob = log_prob - (2 * (math.log(2) - u - nn.functional.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), log_prob

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action (evaluation): tanh of the mean."""
        return torch.tanh(self.net(obs).chunk(2, dim=-1)[0])


def soft_target(
    actor: GaussianActor,
    critic_target: TwinCritic,
    r: torch.Tensor,
    next_obs: torch.Tensor,
    terminated: torch.Tensor,
    alpha: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """y = r + gamma (1 - terminated) (min_i Q_i_target(s', a') - alpha log pi(a'|s'))."""
    a_next, log_prob = actor(next_obs)
    q1, q2 = critic_target(next_obs, a_next)
    return r + gamma * (1.0 - terminated) * (torch.min(q1, q2) - alpha * log_prob)


def critic_loss(
    critic: TwinCritic, obs: torch.Tensor, action: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    q1, q2 = critic(obs, action)
    loss = 0.5 * (((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean())
    return loss, {"critic/td_loss": loss.item(), "critic/q": q1.mean().item()}


def actor_loss(
    actor: GaussianActor, critic: TwinCritic, obs: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The actor's loss, and log pi of its sampled actions (the temperature's loss reads
    them)."""
    action, log_prob = actor(obs)
    q1, q2 = critic(obs, action)
    loss = (alpha * log_prob - torch.min(q1, q2)).mean()
    return loss, log_prob, {"actor/loss": loss.item(), "actor/entropy": -log_prob.mean().item()}


def alpha_loss(
    log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float
) -> tuple[torch.Tensor, dict[str, float]]:
    loss = -(log_alpha * (log_prob.detach() + target_entropy)).mean()
    return loss, {"alpha": log_alpha.exp().item()}


class SAC:
    """The networks, critic targets, temperature and optimisers, and the update step."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: SACConfig, device: str = "cpu"):
        self.obs_dim, self.action_dim, self.cfg, self.device = obs_dim, action_dim, cfg, device
        self.target_entropy = (
            -float(action_dim) if cfg.target_entropy is None else cfg.target_entropy
        )
        self.updates = 0
        self.reinitialise()

    def reinitialise(self) -> None:
        """Fresh networks, targets, temperature and optimisers (the buffer stays)."""
        cfg = self.cfg
        self.actor = GaussianActor(self.obs_dim, self.action_dim, cfg).to(self.device)
        self.critic = TwinCritic(self.obs_dim, self.action_dim, cfg.hidden, cfg.activation)
        self.critic.to(self.device)
        self.critic_target = frozen_copy(self.critic)
        self.log_alpha = torch.tensor(
            math.log(cfg.initial_alpha), device=self.device, requires_grad=True
        )
        self.actor_optimizer = make_optimizer(self.actor.parameters(), cfg.optimizer, cfg.actor_lr)
        self.critic_optimizer = make_optimizer(
            self.critic.parameters(), cfg.optimizer, cfg.critic_lr
        )
        self.alpha_optimizer = make_optimizer([self.log_alpha], cfg.optimizer, cfg.alpha_lr)

    @torch.no_grad()
    def act(self, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """A sampled action when exploring (`rng` given: the sample's noise is torch's),
        the mode otherwise."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        action = self.actor(obs_t)[0] if rng is not None else self.actor.mode(obs_t)
        return action.cpu().numpy().astype(np.float32)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One SAC update on a batch of real transitions."""
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            y = soft_target(
                self.actor,
                self.critic_target,
                batch["reward"],
                batch["next_obs"],
                batch["terminated"],
                alpha,
                self.cfg.gamma,
            )
        loss, metrics = critic_loss(self.critic, batch["obs"], batch["action"], y)
        apply_gradients(loss, self.critic_optimizer, None)
        self.critic.requires_grad_(False)  # the actor's loss moves the actor only
        loss, log_prob, actor_metrics = actor_loss(self.actor, self.critic, batch["obs"], alpha)
        apply_gradients(loss, self.actor_optimizer, None)
        self.critic.requires_grad_(True)
        loss, alpha_metrics = alpha_loss(self.log_alpha, log_prob, self.target_entropy)
        apply_gradients(loss, self.alpha_optimizer, None)
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        self.updates += 1
        return {**metrics, **actor_metrics, **alpha_metrics}

    def to_bytes(self) -> bytes:
        """Networks, targets, temperature, optimiser states and the update count."""
        return parts_to_bytes(self, PARTS, log_alpha=self.log_alpha.detach(), updates=self.updates)

    def load_bytes(self, data: bytes) -> None:
        saved = load_parts(self, PARTS, data, self.device)
        with torch.no_grad():
            self.log_alpha.copy_(saved["log_alpha"])
        self.updates = saved["updates"]


PARTS = (
    "actor",
    "critic",
    "critic_target",
    "actor_optimizer",
    "critic_optimizer",
    "alpha_optimizer",
)
