"""The torch continuous-control learners (maestro.rl.td3, maestro.rl.sac), their loop
(maestro.rl.off_policy) and the tasks' known rewards (maestro.envs.control_tasks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maestro.envs.control_tasks import REWARD_TOLERANCE, TASKS, control_task
from maestro.rl.off_policy import ControlLoop, OffPolicyConfig, model_free_update
from maestro.rl.sac import SAC, SACConfig
from maestro.rl.td3 import TD3, TD3Config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("env_id", sorted(TASKS))
def test_known_rewards_and_ends_are_the_environments_on_real_transitions(env_id):
    task = TASKS[env_id]
    env = task.make(seed=0)
    obs, _ = env.reset(seed=0)
    errors, ends = [], 0
    for _ in range(400):
        action = env.action_space.sample()
        next_obs, r, terminated, truncated, _ = env.step(action)
        s, a, s2 = (
            torch.as_tensor(np.asarray(x), dtype=torch.float32)[None]
            for x in (obs, action, next_obs)
        )
        errors.append(abs(task.reward(s, a, s2).item() - r))
        assert task.terminated(s2).item() == float(terminated)
        ends += terminated
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
    assert max(errors) <= REWARD_TOLERANCE
    if env_id in ("Hopper-v5", "Walker2d-v5"):
        assert ends > 0  # random actions make them fall: the end condition was exercised


def test_an_unknown_task_is_a_one_line_error():
    with pytest.raises(ValueError, match="'Ant-v5': not a control task"):
        control_task("Ant-v5")


def train(learner_class, config_class, env_steps: int, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    cfg = OffPolicyConfig(
        env="Pendulum-v1", env_steps=env_steps, warmup_steps=1000, eval_every=1000, eval_episodes=5
    )
    observation_space, action_space = control_task(cfg.env).spaces()
    learner = learner_class(
        observation_space.shape[0], action_space.shape[0], config_class(hidden=(64, 64))
    )
    loop = ControlLoop(cfg, learner, seed)
    return loop.run(model_free_update(learner, cfg), lambda metrics, step: None, lambda step: None)


# A random policy scores about -1200 to -1500 on Pendulum; a swing-up that holds the pole
# scores above -200. Budgets: about 30 s (TD3) and 45 s (SAC) on one core.
def test_td3_solves_pendulum_in_8000_steps():
    assert train(TD3, TD3Config, 8000)["final_return"] > -400


def test_sac_solves_pendulum_in_7000_steps():
    assert train(SAC, SACConfig, 7000)["final_return"] > -400


class Killed(Exception):
    pass


@pytest.mark.parametrize("learner_class, config_class", [(TD3, TD3Config), (SAC, SACConfig)])
def test_a_killed_trial_resumed_from_its_checkpoint_is_the_trial_that_never_stopped(
    learner_class, config_class
):
    cfg = OffPolicyConfig(
        env="Pendulum-v1", env_steps=1200, warmup_steps=300, eval_every=400, eval_episodes=1,
        checkpoint_every=400,
    )  # fmt: skip

    def fresh() -> ControlLoop:
        torch.manual_seed(3)
        learner = learner_class(3, 1, config_class(hidden=(16, 16), batch_size=32))
        return ControlLoop(cfg, learner, seed=3)

    def run(loop, save) -> list:
        logged = []
        loop.run(
            model_free_update(loop.learner, cfg), lambda m, step: logged.append((step, m)), save
        )
        return logged

    whole = fresh()
    whole_log = run(whole, lambda step: None)

    saved = {}

    def save_then_die(step):
        saved.update(first.state())
        if step >= 800:
            raise Killed

    first = fresh()
    with pytest.raises(Killed):
        run(first, save_then_die)
    assert saved["env_steps"] == 800

    resumed = fresh()
    resumed.load(saved)
    assert resumed.buffer.size == 800
    np.testing.assert_array_equal(resumed.buffer.obs[:800], whole.buffer.obs[:800])
    resumed_log = run(resumed, lambda step: None)

    assert [step for step, _ in resumed_log] == [1200]
    assert resumed_log[-1][1]["eval/return"] == whole_log[-1][1]["eval/return"]
    assert resumed.evaluations == whole.evaluations
    for name in ("obs", "action", "reward", "next_obs", "terminated"):
        np.testing.assert_array_equal(getattr(resumed.buffer, name), getattr(whole.buffer, name))
    for part in ("actor", "critic", "critic_target", "actor_optimizer", "critic_optimizer"):
        a, b = (
            getattr(resumed.learner, part).state_dict(),
            getattr(whole.learner, part).state_dict(),
        )
        if part.endswith("optimizer"):
            a, b = a["state"], b["state"]
            assert a  # the optimiser has moments to compare
        for key in a:
            values_a = a[key].values() if isinstance(a[key], dict) else [a[key]]
            values_b = b[key].values() if isinstance(b[key], dict) else [b[key]]
            for x, y in zip(values_a, values_b, strict=True):
                assert torch.equal(torch.as_tensor(x), torch.as_tensor(y)), (part, key)
