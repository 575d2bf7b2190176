"""Where Maestro bends RLlib for speed (docs/performance.md), RLlib computes what it did:
the env runner's acting connectors (`maestro.rl.acting`) against RLlib's default pipelines
(RLlib's own env runner in this process, real NLE, the same weights and torch seed sample
the same episodes through both, across fragment cuts and episode ends), and APPO's learner
queue waiting for a batch instead of polling (`maestro.rl.appo.WaitingCircularBuffer`)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import maestro.rl.env
from maestro.envs.nethack import make_env
from maestro.rl.acting import ModuleToEnv
from maestro.rl.agent import AgentConfig, module_spec
from maestro.rl.appo import WaitingCircularBuffer
from maestro.rl.training import TrainingConfig, algorithm_config

from .conftest import TINY_AGENT

# Ray is first imported through `maestro.rl` (which settles its auth mode), so RLlib's own
# names are imported in the tests.


def sample_twice(algo_config, monkeypatch, weights=None):
    """Two sample calls of a fresh in-process env runner (torch seeded just before) and the
    module's weights it acted with. Its envs play the games this process's first envs play."""
    monkeypatch.setattr(maestro.rl.env, "_envs_created", 0)
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    runner = SingleAgentEnvRunner(config=algo_config, worker_index=0)
    if weights is not None:
        runner.module.set_state(weights)
    weights = runner.module.get_state()
    torch.manual_seed(7)
    episodes = runner.sample(explore=True) + runner.sample(explore=True)
    runner.stop()
    return episodes, weights


@pytest.mark.parametrize("core", ["lstm", "gru", "mlp"])
def test_acting_connectors_sample_what_rllibs_default_pipelines_sample(core, monkeypatch):
    from ray.rllib.core.columns import Columns

    # 3 envs, fragments of 8 steps, episodes cut at 12: the second call continues episodes
    # cut by the first, and new episodes start within it.
    config = TrainingConfig(
        num_env_runners=0,
        num_envs_per_env_runner=3,
        rollout_fragment_length=8,
        max_episode_steps=12,
        agent=AgentConfig(core=core, **TINY_AGENT),
    )
    maestro = algorithm_config("score", config, seed=0, epoch=0, settings=None)
    rllib = maestro.copy(copy_frozen=False).env_runners(
        env_to_module_connector=None,
        module_to_env_connector=None,
        add_default_connectors_to_env_to_module_pipeline=True,
        add_default_connectors_to_module_to_env_pipeline=True,
    )
    ours, weights = sample_twice(maestro, monkeypatch)
    theirs, _ = sample_twice(rllib, monkeypatch, weights)

    assert len(ours) == len(theirs) >= 6
    assert sum(episode.is_done for episode in ours) >= 3
    keys = {Columns.ACTION_LOGP, Columns.ACTION_DIST_INPUTS, "weights_seq_no"}
    if core != "mlp":
        keys.add(Columns.STATE_OUT)
    for a, b in zip(ours, theirs, strict=True):
        assert (a.t_started, len(a), a.is_done) == (b.t_started, len(b), b.is_done)
        for key in a.get_observations():
            np.testing.assert_array_equal(a.get_observations()[key], b.get_observations()[key])
        assert a.get_actions().dtype == b.get_actions().dtype
        np.testing.assert_array_equal(a.get_actions(), b.get_actions())
        np.testing.assert_array_equal(a.get_rewards(), b.get_rewards())
        assert set(a.extra_model_outputs) == set(b.extra_model_outputs) == keys
        for key in keys - {Columns.STATE_OUT}:
            x, y = a.get_extra_model_outputs(key), b.get_extra_model_outputs(key)
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)
        if core != "mlp":
            x, y = (e.get_extra_model_outputs(Columns.STATE_OUT) for e in (a, b))
            assert set(x) == set(y)
            for name in x:
                np.testing.assert_array_equal(x[name], y[name])
    # Not a sampler that always plays one action.
    assert len(np.unique(np.concatenate([e.get_actions() for e in ours]))) > 3


def test_module_to_env_refuses_an_output_it_would_drop():
    from ray.rllib.core.columns import Columns

    env = make_env("score")
    spec = module_spec(AgentConfig(core="mlp", **TINY_AGENT), rollout_fragment_length=8)
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    env.close()
    batch = {Columns.ACTION_DIST_INPUTS: torch.zeros(2, 23), Columns.VF_PREDS: torch.zeros(2)}
    with pytest.raises(ValueError, match="vf_preds"):
        ModuleToEnv()(rl_module=spec.build(), batch=batch, episodes=[None, None], explore=True)


def test_appo_learner_queue_waits_for_a_batch_without_polling():
    # Two iterations per batch (num_epochs: 2): one put, two gets.
    queue = WaitingCircularBuffer(num_batches=4, iterations_per_batch=2)
    got = []

    def learner_thread():
        start = time.thread_time()
        got.append(queue.get())
        got.append(time.thread_time() - start)

    thread = threading.Thread(target=learner_thread)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()
    queue.put("batch")
    thread.join(timeout=5)
    # RLlib's CircularBuffer spent about 0.06 s of CPU polling through the same 0.5 s.
    assert got[0] == "batch" and got[1] < 0.02
    assert queue.get() == "batch"
    assert len(queue) == 0
