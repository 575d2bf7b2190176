"""MAGE's dynamics model: an ensemble of Gaussian networks, each predicting the state change
s' - s from (s, a) as a diagonal Gaussian.

Inputs and targets are standardised with the mean and standard deviation of the replay
buffer (set before each training, `normalise_to`); the log-variance (in standardised
units) is squashed into [log_var_min, log_var_max] by a sigmoid, as in MAGE's code. An
imagined s' comes from a member drawn at random per sample, reparameterised
(s' = s + mu + sigma eps), so it is differentiable in the action.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from maestro.methods.mage.config import ModelConfig


class EnsembleLinear(nn.Module):
    """`members` independent linear layers applied in one batched matmul: (E, B, in) ->
    (E, B, out)."""

    def __init__(self, members: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = math.sqrt(6.0 / (in_dim + out_dim))  # Xavier-uniform, as MAGE's code
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(members, 1, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class GaussianEnsemble(nn.Module):
    """E Gaussian models of the state change, with the standardisation they were trained
    under (buffers: saved and loaded with the weights)."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        sizes = (obs_dim + action_dim, *cfg.hidden)
        self.hidden = nn.ModuleList(
            EnsembleLinear(cfg.ensemble_size, a, b) for a, b in zip(sizes, sizes[1:], strict=False)
        )
        self.out = EnsembleLinear(cfg.ensemble_size, sizes[-1], 2 * obs_dim)
        for name, size in (("in", obs_dim + action_dim), ("delta", obs_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(size))
            self.register_buffer(f"{name}_std", torch.ones(size))

    def normalise_to(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> None:
        """Standardise inputs and targets by these transitions' statistics."""
        x, delta = torch.cat([obs, action], -1), next_obs - obs
        self.in_mean.copy_(x.mean(0))
        self.in_std.copy_(x.std(0).clamp_min(1e-6))
        self.delta_mean.copy_(delta.mean(0))
        self.delta_std.copy_(delta.std(0).clamp_min(1e-6))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's mean and log-variance of the standardised state change: (E, B, d)
        for inputs (B, .) shared by all members, or (E, B, .) one batch per member."""
        x = (torch.cat([obs, action], -1) - self.in_mean) / self.in_std
        if x.dim() == 2:
            x = x.expand(self.cfg.ensemble_size, *x.shape)
        for layer in self.hidden:
            x = nn.functional.silu(layer(x))
        mean, raw = self.out(x).chunk(2, dim=-1)
        low, high = self.cfg.log_var_min, self.cfg.log_var_max
        return mean, low + (high - low) * torch.sigmoid(raw)

    def sample_next(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """s' for each (s, a), reparameterised (differentiable in a). The samples are dealt
        at random to the members, the same number each (the batch is a multiple of the
        ensemble's size), so each member runs on its share only."""
        members, batch = self.cfg.ensemble_size, obs.shape[0]
        order = torch.randperm(batch, device=obs.device)
        shares = (
            obs[order].view(members, batch // members, -1),
            action[order].view(members, batch // members, -1),
        )
        mean, log_var = self(*shares)
        delta = (mean + (0.5 * log_var).exp() * torch.randn_like(mean)).reshape(batch, -1)
        delta = delta[torch.argsort(order)]
        return obs + self.delta_mean + self.delta_std * delta
