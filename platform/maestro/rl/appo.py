"""Maestro's APPO learner: RLlib's APPO torch learner with a learner queue that waits
instead of polling, and a choice of loss (`RLlibConfig.appo_loss`):

- `rllib`: RLlib's APPO (IMPACT): the policy ratio against a target network that trails
  the policy, v-trace weights from the target network, no advantage normalisation.
- `sample_factory`: Sample Factory's APPO, the algorithm of Motif's and MaestroMotif's
  papers, with the target network left out of the loss:

      rho_t  = pi(a_t|x_t) / mu(a_t|x_t)   (mu: the behaviour policy that acted)
      v_s, A_t = v-trace(min(rho_t, 1) as both rho and c, V, r, gamma)   (no gradient)
      A_t   <- (A_t - mean A) / std A   over the batch's valid steps
      L_pi  = -mean min(rho_t A_t, clip(rho_t, 1 / (1 + eps), 1 + eps) A_t)
      L_V   = mean (V(x_t) - v_s)^2
      L     = L_pi + vf_loss_coeff L_V - entropy_coeff mean H(pi(.|x_t))

  with rho_t clamped to [0.05, 20] first, as Sample Factory does, and its value loss
  (RLlib's has a factor 1/2). Two differences: Sample Factory also clips V against the
  behaviour's value estimates, which RLlib's batches do not carry; and it derives a
  fragment's bootstrap value from its last step's (V - r) / gamma, where RLlib appends the
  fragment's next observation, whose V is used. v-trace is computed here (`vtrace`):
  RLlib's `vtrace_torch` mishandles that appended step.

`sample_factory_loss` is the loss on time-major tensors, without RLlib types; the learner
only lays the batch out for it (RLlib's `make_time_major`, the bootstrap step it appends to
each fragment masked out of the loss) and logs its metrics.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.appo.torch.appo_torch_learner import APPOTorchLearner
from ray.rllib.algorithms.appo.utils import CircularBuffer
from ray.rllib.algorithms.impala.torch.vtrace_torch_v2 import make_time_major
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY

# Where `rllib_config` puts `RLlibConfig.appo_loss` in `config.learner_config_dict`.
APPO_LOSS_KEY = "appo_loss"
# Sample Factory's bounds on the policy ratio before clipping ("probably noise anyway").
RATIO_RANGE = (0.05, 20.0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.sum(x * mask) / torch.sum(mask)


def vtrace(
    rho: torch.Tensor,
    v: torch.Tensor,
    bootstrap_v: torch.Tensor,
    r: torch.Tensor,
    discount: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """V-trace targets v_s and policy-gradient advantages with rho = c = `rho` (already
    clipped), time-major [T, B]; steps with mask 0 add nothing:

        delta_t = mask_t rho_t (r_t + discount_t V_{t+1} - V_t)
        v_t     = V_t + delta_t + discount_t rho_t (v_{t+1} - V_{t+1})
        A_t     = rho_t (r_t + discount_t v_{t+1} - V_t)

    with V_T = v_T = `bootstrap_v`. RLlib's `vtrace_torch` has no mask: the step it appends
    to a fragment for bootstrapping (mask 0, discount 0 on it) still adds its
    rho (0 - V) to the target of the step before, which loses the bootstrap value."""
    v_tp1 = torch.cat([v[1:], bootstrap_v[None]])
    delta = mask * rho * (r + discount * v_tp1 - v)
    v_s_minus_v = torch.zeros_like(bootstrap_v)
    v_s_minus_v_t = []
    for t in reversed(range(len(r))):
        v_s_minus_v = delta[t] + discount[t] * rho[t] * v_s_minus_v
        v_s_minus_v_t.append(v_s_minus_v)
    v_s = v + torch.stack(v_s_minus_v_t[::-1])
    v_s_tp1 = torch.cat([v_s[1:], bootstrap_v[None]])
    return v_s, rho * (r + discount * v_s_tp1 - v)


def sample_factory_loss(
    *,
    logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    values: torch.Tensor,
    bootstrap_values: torch.Tensor,
    rewards: torch.Tensor,
    discounts: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    eps: float,
    vf_loss_coeff: float,
    entropy_coeff: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sample Factory's APPO loss (the module docstring) and its metrics. All tensors but
    `bootstrap_values` ([B], V after the last step) are time-major [T, B]; `logp`,
    `values` and `entropy` carry the gradient; `discounts` is gamma where the step did not
    end the episode, else 0; `mask` is 1 on the steps the loss counts."""
    rho = torch.exp(logp - behaviour_logp).clamp(*RATIO_RANGE)
    with torch.no_grad():
        v_s, advantages = vtrace(
            rho.detach().clamp(max=1.0), values.detach(), bootstrap_values, rewards, discounts, mask
        )
        advantage_mean = masked_mean(advantages, mask)
        n = torch.sum(mask)
        advantage_std = torch.sqrt(torch.sum((advantages - advantage_mean) ** 2 * mask) / (n - 1))
        advantages = (advantages - advantage_mean) / advantage_std.clamp_min(1e-7)
    clipped_rho = rho.clamp(1.0 / (1.0 + eps), 1.0 + eps)
    policy_loss = -masked_mean(torch.minimum(rho * advantages, clipped_rho * advantages), mask)
    vf_loss = masked_mean((values - v_s) ** 2, mask)
    mean_entropy = masked_mean(entropy, mask)
    loss = policy_loss + vf_loss_coeff * vf_loss - entropy_coeff * mean_entropy
    metrics = {
        POLICY_LOSS_KEY: policy_loss,
        VF_LOSS_KEY: vf_loss,
        ENTROPY_KEY: mean_entropy,
        "mean_rho": masked_mean(rho.detach(), mask),
        "advantage_std": advantage_std,
    }
    return loss, metrics


class WaitingCircularBuffer(CircularBuffer):
    """APPO's learner queue (RLlib's `CircularBuffer`) whose `get` waits on the semaphore
    that `put` releases once per sample it adds, where RLlib's polls every 0.1 ms: on 2
    cores the polling took CPU the env runner needed (docs/performance.md). Each `get`
    takes one release, so it never waits while a sample is there; a sample dropped from a
    full buffer leaves a release behind, and that `get` polls as RLlib's does."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        self._items_available.acquire()
        return super().get(block, timeout)


class MaestroAPPOLearner(APPOTorchLearner):
    """RLlib's APPO torch learner with a `WaitingCircularBuffer` and the loss named by
    `config.learner_config_dict[APPO_LOSS_KEY]` (absent: RLlib's)."""

    def build(self) -> None:
        super().build()
        # The learner thread already holds the queue it made, so that object changes
        # class instead of being replaced.
        queue = self._learner_thread_in_queue
        if type(queue) is CircularBuffer:
            queue.__class__ = WaitingCircularBuffer
        self.appo_loss = self.config.learner_config_dict.get(APPO_LOSS_KEY, "rllib")

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out) -> torch.Tensor:
        if self.appo_loss == "rllib":
            return super().compute_loss_for_module(
                module_id=module_id, config=config, batch=batch, fwd_out=fwd_out
            )
        module = self.module[module_id].unwrapped()

        def time_major(x: torch.Tensor) -> torch.Tensor:
            return make_time_major(
                x,
                trajectory_len=config.get_rollout_fragment_length(),
                recurrent_seq_len=batch.get("seq_lens"),
            )

        mask = time_major(batch[Columns.LOSS_MASK].float())
        values = time_major(
            module.compute_values(batch, embeddings=fwd_out.get(Columns.EMBEDDINGS))
        )
        pi = module.get_train_action_dist_cls().from_logits(fwd_out[Columns.ACTION_DIST_INPUTS])
        terminated = time_major(batch[Columns.TERMINATEDS]).float()
        # Each row ends with the step RLlib appends for bootstrapping (masked out), so the
        # value after a row's last step is never read: any value will do there.
        bootstrap_values = torch.cat([values[0][1:], values[0][:1]])
        loss, metrics = sample_factory_loss(
            logp=time_major(pi.logp(batch[Columns.ACTIONS])),
            behaviour_logp=time_major(batch[Columns.ACTION_LOGP]),
            values=values,
            bootstrap_values=bootstrap_values,
            rewards=time_major(batch[Columns.REWARDS]),
            discounts=(1.0 - terminated) * config.gamma * mask,
            entropy=time_major(pi.entropy()),
            mask=mask,
            eps=config.clip_param,
            vf_loss_coeff=config.vf_loss_coeff,
            entropy_coeff=self.entropy_coeff_schedulers_per_module[module_id].get_current_value(),
        )
        self.metrics.log_dict(metrics, key=module_id, window=1)
        return loss
