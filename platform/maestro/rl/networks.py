"""Networks and update pieces that the torch actor-critic learners share (`maestro.rl.td3`,
`maestro.rl.sac`): MLPs, the twin critic, optimisers, Polyak averaging."""

from __future__ import annotations

import copy
import io
from typing import Any, Literal

import torch
from torch import nn

Activation = Literal["relu", "swish"]
Optimizer = Literal["adam", "radam"]


def mlp(
    in_dim: int, hidden: tuple[int, ...], out_dim: int, activation: Activation
) -> nn.Sequential:
    """Linear layers of `hidden` units with `activation` between them, linear output."""
    act = nn.ReLU if activation == "relu" else nn.SiLU  # swish = SiLU
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), act()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class TwinCritic(nn.Module):
    """Two independent Q(s, a) networks (clipped double Q-learning reads their minimum)."""

    def __init__(
        self, obs_dim: int, action_dim: int, hidden: tuple[int, ...], activation: Activation
    ):
        super().__init__()
        self.q1 = mlp(obs_dim + action_dim, hidden, 1, activation)
        self.q2 = mlp(obs_dim + action_dim, hidden, 1, activation)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


def make_optimizer(
    params, kind: Optimizer, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Adam, or RAdam with decoupled weight decay (what MAGE's code trains with)."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.RAdam(params, lr=lr, weight_decay=weight_decay, decoupled_weight_decay=True)


def frozen_copy(network: nn.Module) -> nn.Module:
    """A target network: a copy that no optimiser moves and no gradient is kept for."""
    target = copy.deepcopy(network)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: target <- (1 - tau) target + tau source."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, tau)


def apply_gradients(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, grad_clip: float | None
) -> None:
    """One optimiser step on `loss`, gradients clipped by value when `grad_clip` is set."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        for group in optimizer.param_groups:
            torch.nn.utils.clip_grad_value_(group["params"], grad_clip)
    optimizer.step()


def parts_to_bytes(learner: Any, parts: tuple[str, ...], **values: Any) -> bytes:
    """The state dicts of `learner`'s `parts` (networks, optimisers) and `values`, as one
    torch file (a trial's checkpoint entry)."""
    buffer = io.BytesIO()
    torch.save({name: getattr(learner, name).state_dict() for name in parts} | values, buffer)
    return buffer.getvalue()


def load_parts(learner: Any, parts: tuple[str, ...], data: bytes, device: str) -> dict[str, Any]:
    """Load `parts_to_bytes`'s state dicts into `learner`; returns the saved file (its
    `values` are the learner's to read)."""
    saved = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    for name in parts:
        getattr(learner, name).load_state_dict(saved[name])
    return saved
