"""Sample Factory's APPO loss (`maestro.rl.appo`): v-trace and the loss on tensors worked
out by hand."""

import pytest
import torch
from ray.rllib.algorithms.impala.torch.vtrace_torch_v2 import vtrace_torch

from maestro.rl.appo import sample_factory_loss, vtrace
from maestro.rl.training import TrainingConfig

GAMMA = 0.9


def column(*xs: float) -> torch.Tensor:
    """A time-major [T, 1] tensor."""
    return torch.tensor(xs).reshape(-1, 1)


def test_vtrace_off_policy_by_hand():
    # V = (1, 0.5), r = (1, 0), bootstrap 2, rho = c = (0.5, 1):
    # v_1 = 0.5 + (0 + 0.9 * 2 - 0.5) = 1.8
    # v_0 = 1 + 0.5 (1 + 0.9 * 0.5 - 1) + 0.9 * 0.5 (1.8 - 0.5) = 1.81
    # A_1 = 1.3, A_0 = 0.5 (1 + 0.9 * 1.8 - 1) = 0.81
    v_s, a = vtrace(
        rho=column(0.5, 1.0),
        v=column(1.0, 0.5),
        bootstrap_v=torch.tensor([2.0]),
        r=column(1.0, 0.0),
        discount=column(GAMMA, GAMMA),
        mask=column(1.0, 1.0),
    )
    assert v_s.flatten().tolist() == pytest.approx([1.81, 1.8])
    assert a.flatten().tolist() == pytest.approx([0.81, 1.3])


def test_vtrace_cuts_at_the_end_of_an_episode():
    # The episode ends at t = 0 (discount 0): its target is r_0, whatever follows.
    v_s, a = vtrace(
        rho=column(1.0, 1.0),
        v=column(1.0, 5.0),
        bootstrap_v=torch.tensor([7.0]),
        r=column(3.0, 0.0),
        discount=column(0.0, GAMMA),
        mask=column(1.0, 1.0),
    )
    assert v_s[0].item() == pytest.approx(3.0)
    assert a[0].item() == pytest.approx(2.0)


def test_vtrace_bootstraps_from_the_appended_step():
    # RLlib appends the fragment's next observation as a step with mask 0 (discount 0 on
    # it) for its value. On policy with r = 0 and V = 1 the targets are the discounted
    # bootstrap: 0.81 and 0.9. RLlib's vtrace_torch, without the mask, loses it (0, 0).
    args = dict(
        rho=column(1.0, 1.0, 1.0),
        v=column(1.0, 1.0, 1.0),
        bootstrap_v=torch.tensor([1.0]),
        r=column(0.0, 0.0, 0.0),
        discount=column(GAMMA, GAMMA, 0.0),
        mask=column(1.0, 1.0, 0.0),
    )
    v_s, a = vtrace(**args)
    assert v_s[:2].flatten().tolist() == pytest.approx([0.81, 0.9])
    assert a[:2].flatten().tolist() == pytest.approx([-0.19, -0.1])
    rllib_v_s, _ = vtrace_torch(
        target_action_log_probs=torch.zeros(3, 1),
        behaviour_action_log_probs=torch.zeros(3, 1),
        discounts=args["discount"],
        rewards=args["r"],
        values=args["v"],
        bootstrap_values=args["bootstrap_v"],
    )
    assert rllib_v_s[:2].flatten().tolist() == pytest.approx([0.0, 0.0])


def loss_inputs(logp_shift=(0.0, 0.0, 0.0), entropy=(1.0, 1.0, 1.0)):
    """Two real steps (on policy, v-trace advantages 1.62 and 1.3) and the appended one."""
    behaviour_logp = column(-1.0, -2.0, -3.0)
    return dict(
        logp=(behaviour_logp + column(*logp_shift)).requires_grad_(),
        behaviour_logp=behaviour_logp,
        values=column(1.0, 0.5, 2.0).requires_grad_(),
        bootstrap_values=torch.tensor([0.0]),
        rewards=column(1.0, 0.0, 0.0),
        discounts=column(GAMMA, GAMMA, 0.0),
        entropy=column(*entropy).requires_grad_(),
        mask=column(1.0, 1.0, 0.0),
        eps=0.1,
        vf_loss_coeff=0.5,
        entropy_coeff=0.01,
    )


def test_loss_on_policy_by_hand():
    inputs = loss_inputs()
    loss, metrics = sample_factory_loss(**inputs)
    # On policy: v_1 = 0.5 + (0 + 0.9 * 2 - 0.5) = 1.8 (A_1 = 1.3),
    # v_0 = 1 + (1 + 0.45 - 1) + 0.9 * 1.3 = 2.62 (A_0 = 1 + 0.9 * 1.8 - 1 = 1.62);
    # normalised over the two steps (std with n - 1), A = (+1/sqrt 2, -1/sqrt 2), whose mean
    # is the policy loss: 0.
    assert metrics["mean_rho"].item() == pytest.approx(1.0)
    assert metrics["advantage_std"].item() == pytest.approx(0.32 / 2**0.5)
    assert metrics["policy_loss"].item() == pytest.approx(0.0, abs=1e-6)
    vf_loss = ((1.0 - 2.62) ** 2 + (0.5 - 1.8) ** 2) / 2
    assert metrics["vf_loss"].item() == pytest.approx(vf_loss)
    assert loss.item() == pytest.approx(0.5 * vf_loss - 0.01 * 1.0)
    loss.backward()
    # d(-mean rho A)/d logp_t = -A_t / 2 at rho = 1; nothing reaches the appended step.
    grad = inputs["logp"].grad.flatten().tolist()
    assert grad == pytest.approx([-0.5 / 2**0.5, 0.5 / 2**0.5, 0.0])


def test_loss_clips_the_ratio_against_the_behaviour_policy():
    # rho = 1.5 > 1 + eps on both steps: the step with a positive advantage gets no policy
    # gradient (clipped), the one with a negative advantage keeps it (rho A < clip(rho) A).
    inputs = loss_inputs(logp_shift=(torch.log(torch.tensor(1.5)).item(),) * 2 + (0.0,))
    loss, _ = sample_factory_loss(**inputs)
    loss.backward()
    grad = inputs["logp"].grad.flatten()
    assert grad[0].item() == 0.0
    assert grad[1].item() == pytest.approx(1.5 * 0.5 / 2**0.5)


def test_loss_ignores_what_the_mask_leaves_out():
    loss, _ = sample_factory_loss(**loss_inputs())
    shifted, _ = sample_factory_loss(
        **loss_inputs(logp_shift=(0.0, 0.0, 4.0), entropy=(1.0, 1.0, 9.0))
    )
    assert shifted.item() == pytest.approx(loss.item())


def test_sample_factory_loss_is_appos():
    with pytest.raises(ValueError, match="needs algorithm appo"):
        TrainingConfig(algorithm="ppo", appo_loss="sample_factory")
