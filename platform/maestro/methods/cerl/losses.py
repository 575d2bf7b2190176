"""The ensemble's losses, as pure functions returning `(loss, metrics)`.

Member j's Double-DQN target on a transition (s, a, r, s', d):

    y_j = r + gamma (1 - d) Q_j^target(s', argmax_a' Q_j(s', a'))

with Q_j member j's own head. Without CERL each member regresses its own target; with
CERL (Lin et al., "The Curse of Diversity in Ensemble-Based Exploration", ICLR 2024,
arXiv:2405.04342) member i has a head per member, head (i, j) regresses y_j, and the
loss is

    L = sum_i sum_j W_ij Huber(Q_ij(s, a) - y_j),   W_ii = 1, W_ij = aux_weight (i != j)

so with aux_weight 0 it is the N independent Double-DQN losses. Huber with delta 1 (DQN),
the mean over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def double_dqn_target(
    q_next_online: torch.Tensor,
    q_next_target: torch.Tensor,
    reward: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """y = r + gamma (1 - d) Q_target(s', argmax Q_online(s')); inputs (..., batch,
    actions) and (batch,), output (..., batch)."""
    best = q_next_online.argmax(-1, keepdim=True)
    return reward + gamma * (1 - terminated) * q_next_target.gather(-1, best).squeeze(-1)


def head_weights(members: int, heads: int, aux_weight: float) -> torch.Tensor:
    """W (members, heads): 1 for a member's own head, `aux_weight` for the others."""
    if heads == 1:
        return torch.ones(members, 1)
    return torch.eye(members) + aux_weight * (1 - torch.eye(members))


def ensemble_td_loss(
    q_taken: torch.Tensor, targets: torch.Tensor, aux_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """L for Q(s, a) of every head, `q_taken` (members, heads, batch), against the members'
    targets `targets` (members, batch): head j of each member against y_j (heads = members),
    or a member's only head against its own target (heads = 1)."""
    members, heads, _ = q_taken.shape
    goal = targets.unsqueeze(0).expand(members, -1, -1) if heads > 1 else targets.unsqueeze(1)
    huber = F.smooth_l1_loss(q_taken, goal, reduction="none").mean(-1)  # (members, heads)
    weights = head_weights(members, heads, aux_weight).to(huber)
    own = huber.diagonal() if heads > 1 else huber[:, 0]
    metrics = {"loss/own_heads": float(own.detach().mean())}
    if heads > 1:
        metrics["loss/other_heads"] = float(
            (huber.detach().sum() - own.detach().sum()) / (members * (heads - 1))
        )
    return (weights * huber).sum(), metrics
