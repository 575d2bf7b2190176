"""The ensemble's Q-networks: N members, each a DQN (convolutions with ReLUs, a hidden layer
of `hidden` units) with one Q-head, or N under CERL. `convs` lists the convolutions as
(filters, kernel, stride): MinAtar's DQN has one, (16, 3, 1) with 128 hidden units; the
Nature DQN (Atari) three, (32, 8, 4), (64, 4, 2), (64, 3, 1) with 512. With a shared encoder
the members' heads read one encoder, whose gradient from each member is scaled by 1/N (so
the encoder takes the members' mean gradient).

The members are computed together, not one after another: their convolutions are grouped
convolutions and their linear layers batched matrix products over a leading member
dimension. Each member's weights are still its own, initialised as torch's `Conv2d` and
`Linear` would (uniform in +-1/sqrt(fan in)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` in the forward pass, its gradient times `scale` in the backward pass."""
    return x * scale + (x - x * scale).detach()


def member_parameter(members: int, *shape: int, fan_in: int) -> nn.Parameter:
    """Weights of `members` layers, each uniform in +-1/sqrt(fan_in)."""
    bound = 1 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(members, *shape).uniform_(-bound, bound))


class EnsembleQNetwork(nn.Module):
    """`forward(obs)` -> Q of shape (members, heads, batch, actions); observations are
    multiplied by `scale` first (1/255 for Atari's pixels)."""

    def __init__(
        self,
        obs_shape: tuple[int, int, int],
        num_actions: int,
        members: int,
        heads: int,
        shared_encoder: bool,
        convs: tuple[tuple[int, int, int], ...] = ((16, 3, 1),),
        hidden: int = 128,
        scale: float = 1.0,
    ):
        super().__init__()
        c, h, w = obs_shape
        self.members, self.heads, self.num_actions = members, heads, num_actions
        self.encoders = n = 1 if shared_encoder else members
        self.strides, self.scale = [stride for _, _, stride in convs], scale
        self.conv_weights, self.conv_biases = nn.ParameterList(), nn.ParameterList()
        for filters, kernel, stride in convs:
            fan_in = c * kernel * kernel
            self.conv_weights.append(member_parameter(n, filters, c, kernel, kernel, fan_in=fan_in))
            self.conv_biases.append(member_parameter(n, filters, fan_in=fan_in))
            c, h, w = filters, (h - kernel) // stride + 1, (w - kernel) // stride + 1
        features = c * h * w
        self.hidden_weight = member_parameter(n, features, hidden, fan_in=features)
        self.hidden_bias = member_parameter(n, 1, hidden, fan_in=features)
        self.head_weight = member_parameter(members, hidden, heads * num_actions, fan_in=hidden)
        self.head_bias = member_parameter(members, 1, heads * num_actions, fan_in=hidden)

    @property
    def shared_encoder(self) -> bool:
        return self.encoders == 1 and self.members > 1

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Each encoder's hidden features: (encoders, batch, hidden)."""
        n, batch = self.encoders, obs.shape[0]
        x = (obs * self.scale).repeat(1, n, 1, 1)  # each encoder's copy, side by side
        for weight, bias, stride in zip(self.conv_weights, self.conv_biases, self.strides,
                                        strict=True):  # fmt: skip
            x = F.relu(F.conv2d(x, weight.flatten(0, 1), bias.flatten(), stride, groups=n))
        x = x.view(batch, n, -1).transpose(0, 1)  # (encoders, batch, features)
        return F.relu(torch.baddbmm(self.hidden_bias, x, self.hidden_weight))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = self.encode(obs)
        if self.shared_encoder:
            shared = scale_gradient(features, 1 / self.members)
            features = shared.expand(self.members, -1, -1)
        q = torch.baddbmm(self.head_bias, features, self.head_weight)
        return q.view(self.members, -1, self.heads, self.num_actions).transpose(1, 2)

    def main_heads(self, q: torch.Tensor) -> torch.Tensor:
        """Each member's own head (the one that acts and makes its targets): (members,
        batch, actions) from `forward`'s output."""
        if self.heads == 1:
            return q[:, 0]
        index = torch.arange(self.members, device=q.device)
        return q[index, index]
