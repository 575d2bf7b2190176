"""CERL (maestro.methods.cerl): who acts, the loss of the N x N heads, the share of
self-generated data, and a trial that resumes exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from mlflow.tracking import MlflowClient

from maestro.methods.cerl.config import CerlConfig
from maestro.methods.cerl.losses import double_dqn_target, ensemble_td_loss
from maestro.methods.cerl.model import EnsembleQNetwork
from maestro.methods.cerl.train import EnsembleLoop, acting_member, majority_vote

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**changes) -> CerlConfig:
    base = dict(
        env="breakout", members=2, convs=[[4, 3, 1]], hidden=16, env_steps=1500, buffer_size=2000,
        learning_starts=200, batch_size=16, target_update=100, eps_decay_steps=500,
        eval_every=500, eval_episodes=2, checkpoint_every=400,
    )  # fmt: skip
    return CerlConfig(**(base | changes))


def test_the_acting_member_is_uniform_and_the_tandem_split_is_p():
    rng = np.random.default_rng(0)
    counts = np.bincount([acting_member(tiny(members=5), rng) for _ in range(20_000)])
    assert np.allclose(counts / 20_000, 0.2, atol=0.01)
    active = [acting_member(tiny(mode="tandem", tandem_p=0.9), rng) for _ in range(20_000)]
    assert np.mean(np.array(active) == 0) == pytest.approx(0.9, abs=0.01)
    assert majority_vote(np.array([2, 1, 2, 0]), rng) == 2


def test_the_cerl_loss_is_each_head_against_its_members_target():
    torch.manual_seed(0)
    members, batch = 3, 5
    q = torch.randn(members, members, batch)
    y = torch.randn(members, batch)
    loss, _ = ensemble_td_loss(q, y, aux_weight=0.5)
    expected = sum(
        (1.0 if i == j else 0.5) * F.smooth_l1_loss(q[i, j], y[j])
        for i in range(members)
        for j in range(members)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # Off-diagonal weight 0: the N independent Double-DQN losses, each on its own head.
    alone, _ = ensemble_td_loss(q, y, aux_weight=0.0)
    own = sum(F.smooth_l1_loss(q[i, i], y[i]) for i in range(members))
    single_head, _ = ensemble_td_loss(q.diagonal().T.unsqueeze(1), y, aux_weight=0.0)
    assert alone.item() == pytest.approx(own.item()) == pytest.approx(single_head.item())


def test_double_dqn_targets_by_hand():
    online = torch.tensor([[1.0, 3.0, 2.0]])
    target = torch.tensor([[10.0, 20.0, 30.0]])
    y = double_dqn_target(online, target, torch.tensor([1.0]), torch.tensor([0.0]), 0.5)
    assert y.tolist() == [11.0]  # online picks action 1, the target values it at 20
    ended = double_dqn_target(online, target, torch.tensor([1.0]), torch.tensor([1.0]), 0.5)
    assert ended.tolist() == [1.0]


def test_the_batched_members_are_separate_networks():
    torch.manual_seed(0)
    net = EnsembleQNetwork((4, 10, 10), 3, members=3, heads=3, shared_encoder=False,
                           convs=((2, 3, 1),), hidden=8)  # fmt: skip
    obs = torch.randn(5, 4, 10, 10)
    q = net(obs)
    for i in range(3):
        x = F.relu(F.conv2d(obs, net.conv_weights[0][i], net.conv_biases[0][i])).flatten(1)
        h = F.relu(x @ net.hidden_weight[i] + net.hidden_bias[i])
        alone = (h @ net.head_weight[i] + net.head_bias[i]).view(5, 3, 3).transpose(0, 1)
        assert torch.allclose(q[i], alone, atol=1e-5)
    q[0].sum().backward()  # member 0's output moves member 0's weights only
    grad = net.conv_weights[0].grad
    assert grad[1:].abs().sum() == 0 and grad[0].abs().sum() > 0


def test_a_shared_encoder_takes_the_members_mean_gradient():
    torch.manual_seed(0)
    net = EnsembleQNetwork((4, 10, 10), 3, members=4, heads=1, shared_encoder=True,
                           convs=((2, 3, 1),), hidden=8)  # fmt: skip
    obs = torch.randn(6, 4, 10, 10)
    net(obs).sum().backward()
    scaled = net.conv_weights[0].grad.clone()
    net.zero_grad()
    features = net.encode(obs).expand(4, -1, -1)
    torch.baddbmm(net.head_bias, features, net.head_weight).sum().backward()
    assert torch.allclose(scaled, net.conv_weights[0].grad / 4, atol=1e-6)


def test_members_act_whole_episodes_and_the_self_share_is_what_the_batches_held():
    logged: list[tuple[int, dict]] = []
    loop = EnsembleLoop(tiny(), seed=0)
    loop.run(lambda metrics, step: logged.append((step, metrics)), lambda step: None)
    # Every episode's transitions carry one member.
    start = 0
    for _member, end, _ in loop.episode_returns:
        assert len(set(loop.replay.member[start:end])) == 1
        start = end
    assert {m for m, _, _ in loop.episode_returns} == {0, 1}
    for _, metrics in logged:
        shares = [metrics["data/self_share/0"], metrics["data/self_share/1"]]
        assert sum(shares) == pytest.approx(1.0)
    # A 100% tandem: every batch is the active member's own data.
    tandem = EnsembleLoop(tiny(mode="tandem", tandem_p=1.0, env_steps=600), seed=0)
    records: list[dict] = []
    tandem.run(lambda metrics, step: records.append(metrics), lambda step: None)
    assert records[-1]["data/self_share/0"] == 1.0 and records[-1]["data/self_share/1"] == 0.0
    assert set(records[-1]) >= {"eval/member/0", "eval/member/1", "eval/vote", "loss/own_heads"}


def test_a_resumed_trial_ends_as_the_uninterrupted_one():
    cfg = tiny(cerl=True)
    whole = EnsembleLoop(cfg, seed=3)
    whole.run(lambda m, s: None, lambda s: None)
    saved: list[dict] = []
    first = EnsembleLoop(cfg, seed=3)

    def save_and_stop(step):
        saved.append(first.state())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.run(lambda m, s: None, save_and_stop)
    resumed = EnsembleLoop(cfg, seed=3)
    resumed.load(saved[0])
    resumed.run(lambda m, s: None, lambda s: None)
    assert resumed.evaluations == whole.evaluations
    for a, b in zip(resumed.learner.q.parameters(), whole.learner.q.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_continuous_cerl_critic_loss_is_sac_on_the_own_head_plus_huber_on_the_others():
    from maestro.methods.cerl.continuous import cerl_critic_loss

    torch.manual_seed(0)
    q1, q2, y = torch.randn(6, 3) * 20, torch.randn(6, 3) * 20, torch.randn(3, 6) * 20
    loss, _ = cerl_critic_loss(q1, q2, y, own=1, aux_weight=0.5, huber_delta=10.0)
    sac = 0.5 * (((q1[:, 1] - y[1]) ** 2).mean() + ((q2[:, 1] - y[1]) ** 2).mean())
    others = sum(
        0.5 * (F.huber_loss(q1[:, j], y[j], delta=10.0) + F.huber_loss(q2[:, j], y[j], delta=10.0))
        for j in (0, 2)
    )
    assert loss.item() == pytest.approx((sac + 0.5 * others).item(), rel=1e-6)
    alone, _ = cerl_critic_loss(q1, q2, y, own=1, aux_weight=0.0, huber_delta=10.0)
    assert alone.item() == pytest.approx(sac.item(), rel=1e-6)


def test_the_continuous_acting_member_is_uniform_per_episode_and_repeatable():
    from maestro.methods.cerl.continuous import acting_member

    drawn = [acting_member(3, episode, 4) for episode in range(8000)]
    assert np.allclose(np.bincount(drawn) / 8000, 0.25, atol=0.02)
    assert drawn[:50] == [acting_member(3, episode, 4) for episode in range(50)]


def test_cerl_runs_end_to_end_with_the_tandem_claim(tmp_path, mlflow_server):
    """The tandem spec, tiny, through `maestro run` on Ray and MLflow: the trials log the
    members' returns and self shares, the parent gets the plot and the active/passive
    claim."""
    spec = yaml.safe_load((ROOT / "jobs/cerl/tandem.yaml").read_text())
    spec["config"] = {**spec["config"], **tiny(mode="tandem").model_dump(mode="json")}
    spec["trials"]["seeds"] = 2
    spec.pop("presets")
    spec["tracking"]["run_name"] = "tandem"
    path = tmp_path / "tandem.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url,
           "MAESTRO_STORE": str(tmp_path / "store")}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "maestro", "run", str(path)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "claim passive_below_active:" in done.stdout
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("cerl-tandem").experiment_id
    (parent,) = client.search_runs([experiment], "attributes.run_name = 'tandem'")
    assert parent.data.tags["maestro.claim.passive_below_active"] in (
        "reproduced", "contradicted", "inconclusive"
    )  # fmt: skip
    assert "plots/eval_return.png" in {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")
    }
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    for child in children:
        metrics = child.data.metrics
        assert {"active_return", "passive_return", "eval/vote"} <= set(metrics)
        shares = client.get_metric_history(child.info.run_id, "data/self_share/0")
        assert [p.step for p in shares] == [500, 1000, 1500]
        assert all(0.6 < p.value <= 1.0 for p in shares)  # the active member's 90%


def test_atari_games_are_preprocessed_as_dqn_and_resume_from_their_state():
    from maestro.envs.atari import AtariGame

    game = AtariGame("breakout", seed=0)
    obs = game.reset()
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8 and game.num_actions == 4
    for _ in range(30):
        obs, reward, terminated, truncated = game.step(1)  # FIRE, then keep firing
    saved = game.state()
    ahead = [game.step(step % 4)[0] for step in range(40)]
    again = AtariGame("breakout", seed=0)
    again.reset()
    again.load_state(saved)
    replay = [again.step(step % 4)[0] for step in range(40)]
    # The emulator and its sticky actions go on as they would have: the same newest frames.
    assert all(np.array_equal(a[-1], b[-1]) for a, b in zip(ahead, replay, strict=True))
    assert not all(np.array_equal(a[-1], ahead[0][-1]) for a in ahead)  # the game moved
    with pytest.raises(ValueError, match="Atari game"):
        AtariGame("no_such_game", seed=0)


def test_the_replay_reads_back_stacked_observations_from_single_frames():
    """Episodes of stacked frames (the first observation repeats its first frame), through
    a ring that wraps: every sampled observation and next observation is the one added."""
    from maestro.methods.cerl.train import SharedReplay

    rng = np.random.default_rng(0)
    replay = SharedReplay((4, 3, 3), stack=4, capacity=23)
    added = {}
    for episode in range(6):
        frames = [rng.integers(0, 255, (3, 3), dtype=np.uint8)]
        obs = np.stack([frames[0]] * 4)
        for step in range(int(rng.integers(1, 9))):
            frames.append(rng.integers(0, 255, (3, 3), dtype=np.uint8))
            next_obs = np.concatenate([obs[1:], frames[-1][None]])
            added[replay.position] = (obs, next_obs)
            replay.add(obs, 0, 0.0, next_obs, False, episode % 2, step)
            obs = next_obs
    assert replay.size == 23
    kept = {i for i in range(23) if (i - replay.position) % 23 >= 3}  # not the 3 oldest
    for i in kept:
        obs, next_obs = replay.observations(np.array([i]))
        assert np.array_equal(obs[0], added[i][0]) and np.array_equal(next_obs[0], added[i][1])
    sampled = replay.sample(500, rng)
    # Only the slots whose earlier frames are still their episode's are drawn.
    valid = {added[i][0].tobytes() for i in kept}
    assert sampled["obs"].shape == (500, 4, 3, 3)
    assert all(obs.tobytes() in valid for obs in sampled["obs"])
