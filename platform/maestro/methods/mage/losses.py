"""MAGE's losses, pure functions returning `(loss, metrics)`.

- `model_loss`: the Gaussian negative log-likelihood of the standardised state change,
  mean over samples and dimensions, summed over the ensemble's members (each member sees
  its own batch).
- `critic_loss`: on imagined transitions from start states s: a = pi(s) (no noise, a leaf
  the loss is differentiated in), s' = s + model sample (reparameterised), r = r(s, a, s')
  known, y = TD3's target (smoothed target action, min of the target twins), delta_i =
  Q_i(s, a) - y, and

      L = w_td * mean_i Huber(delta_i) + w_g * mean_i Huber(|grad_a delta_i|)

  where grad_a delta_i = grad_a Q_i(s, a) - grad_a y: the target's action gradient flows
  through the model, the reward, the target actor and the target critic, and Q_i's is
  taken with `create_graph`, so that the loss's gradient in the critic's weights is a
  second backward through it (double backprop); minimising L moves Q's own action
  gradient towards the one the model implies. With w_g = 0 it is the Dyna-TD3
  loss: the gradient is not computed at all, and the update is TD3's on the imagined
  transitions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maestro.envs.control_tasks import ControlTask
from maestro.methods.mage.model import GaussianEnsemble
from maestro.rl.td3 import TD3, td_loss, td_target


def model_loss(
    model: GaussianEnsemble, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """NLL of (E, B, .) batches, one per member: (mu - target)^2 / var + log var."""
    mean, log_var = model(obs, action)
    target = (next_obs - obs - model.delta_mean) / model.delta_std
    nll = (((mean - target) ** 2) * torch.exp(-log_var) + log_var).mean(dim=(1, 2))
    metrics = {f"model/nll/{i}": value for i, value in enumerate(nll.tolist())}
    return nll.sum(), metrics


def imagined_transition(
    td3: TD3,
    model: GaussianEnsemble,
    task: ControlTask,
    obs: torch.Tensor,
    action_scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, y, r) for start states s: the actor's action as a leaf that gradients are taken
    in, and TD3's target y and the reward r on the model's s' (both differentiable in a)."""
    with torch.no_grad():
        action = td3.actor(obs)
    action.requires_grad_(True)
    next_obs = model.sample_next(obs, action)
    r = task.reward(obs, action * action_scale, next_obs)
    terminated = task.terminated(next_obs)
    y = td_target(td3.actor_target, td3.critic_target, r, next_obs, terminated, td3.cfg)
    return action, y, r


def critic_loss(
    td3: TD3,
    model: GaussianEnsemble,
    task: ControlTask,
    obs: torch.Tensor,
    action_scale: torch.Tensor,
    w_td: float,
    w_g: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """MAGE's critic loss on imagined transitions from `obs` (see the module)."""
    with torch.set_grad_enabled(w_g > 0):  # Dyna-TD3 needs no graph through the model
        action, y, r = imagined_transition(td3, model, task, obs, action_scale)
    q1, q2 = td3.critic(obs, action)
    # The TD term's target is a constant; only the gradient term differentiates y.
    kind = td3.cfg.td_loss
    td = 0.5 * (td_loss(q1 - y.detach(), kind) + td_loss(q2 - y.detach(), kind))
    metrics = {
        "critic/td_loss": td.item(),
        "critic/q": q1.mean().item(),
        "imagined/reward": r.mean().item(),
    }
    loss = w_td * td
    if w_g > 0:
        # grad_a delta_i = grad_a Q_i - grad_a y. Only Q_i's part depends on the critic's
        # weights, so only it keeps its graph for the second backward; grad_a y (through
        # the model, reward and targets) is a constant of the critic's update.
        (grad_y,) = torch.autograd.grad(y.sum(), action)
        norms = []
        for q in (q1, q2):
            (grad_q,) = torch.autograd.grad(q.sum(), action, create_graph=True)
            norms.append((grad_q - grad_y).norm(dim=-1))
        grad = 0.5 * sum(F.huber_loss(n, torch.zeros_like(n)) for n in norms)
        loss = loss + w_g * grad
        metrics["critic/grad_loss"] = grad.item()
    return loss, metrics


def action_gradient_norm(td3: TD3, obs: torch.Tensor) -> float:
    """The mean |grad_a Q1(s, a)| at a = pi(s): the slope the actor climbs."""
    with torch.no_grad():
        action = td3.actor(obs)
    action.requires_grad_(True)
    (grad_a,) = torch.autograd.grad(td3.critic(obs, action)[0].sum(), action)
    return grad_a.norm(dim=-1).mean().item()
