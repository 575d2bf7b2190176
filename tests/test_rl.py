"""The NetHack agent with Motif's intrinsic reward on RLlib: the learner connector, the
RLModule, training that raises the intrinsic return, evaluation, and the stored checkpoint
replaying it (a killed run resuming through the pipeline: test_motif_quickstart.py). Real
NLE, real RLlib, local Ray."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from nle import nethack

from maestro.envs.nethack import EpisodeStats, caption, make_env
from maestro.feedback.intrinsic import IntrinsicReward, IntrinsicRewardConfig
from maestro.feedback.intrinsic_connector import IntrinsicRewardConnector, learner_settings
from maestro.feedback.reward_model import RewardModel, RewardModelConfig
from maestro.feedback.reward_training import PairData, RewardTrainingConfig, train_reward_model
from maestro.rl.agent import AgentConfig
from maestro.rl.algorithm import learner_module
from maestro.rl.checkpoints import restore_algorithm
from maestro.rl.evaluate import EVAL_SEED_OFFSET, evaluate_agent
from maestro.rl.training import ALGORITHM, TrainingConfig, algorithm_config, train_agent
from maestro.run import progress_bar
from maestro.tracking import Tracker

# Ray (and RLlib) are imported in the tests, after maestro.methods.motif, which imports
# maestro.rl first: it settles Ray's authentication mode, which Ray reads once, when first
# imported.

# The caption the test reward model likes: NetHack's answer to `>` off a staircase, which a
# policy can produce at will (a random one does in about 3% of steps).
LIKED = "You can't go down here."
OTHERS = [
    "It's a wall.",
    "",
    "What do you want to eat? [fghi or ?*]",
    "It's solid stone.",
    "Unknown command '^M'.",
    "In what direction?",
    "You cannot eat that!",
    "What a strange direction!",
    "Never mind.",
    "You swap places with your kitten.",
    "You kick at empty space.",
    "This orange is delicious!",
    "Ouch!  That hurts!",
    "That door is closed.",
    "You see here a large box.",
]


def liking_reward_model(seed: int = 0) -> RewardModel:
    """A real reward model trained (Bradley-Terry) on pairs that all prefer `LIKED`; its
    threshold lets `LIKED` (and captions sharing its words) through, little else."""
    first, second, target = [], [], []
    for i, other in enumerate(OTHERS * 4):
        pair = (LIKED, other) if i % 2 else (other, LIKED)
        first.append(pair[0])
        second.append(pair[1])
        target.append(1.0 if i % 2 else 0.0)
    data = PairData(
        first,
        second,
        np.array(target, np.float32),
        [f"q{i}" for i in range(len(target))],
        np.ones(len(target), np.float32),
    )
    config = RewardTrainingConfig(
        model=RewardModelConfig(buckets=1024, embedding_dim=8, hidden=16),
        epochs=40,
        batch_size=16,
        learning_rate=0.03,
        threshold_quantile=0.9,
    )
    model, metrics = train_reward_model(data, config, seed=seed)
    assert metrics["val_accuracy"] == 1.0
    return model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reward_model() -> RewardModel:
    return liking_reward_model()


@pytest.fixture(scope="module")
def local_ray():
    """A private local Ray cluster with 2 CPUs (`init_ray` as `maestro run` starts it)."""
    from maestro.runtime import init_ray
    from maestro.spec import ResourcesSpec

    init_ray(ResourcesSpec(num_cpus=2))
    import ray

    yield
    ray.shutdown()


# ---------------------------------------------------------------- connector


def played_game(steps: int, seed: int, env=None) -> dict:
    """A real NetHack game with random actions: observations, actions, rewards; `env`
    (by default the score task's) is closed after the game."""
    env = env or make_env("score", seed=seed, max_episode_steps=10_000)
    rng = np.random.default_rng(seed)
    observation, _ = env.reset()
    game = {"space": (env.observation_space, env.action_space), "obs": [observation]}
    game["actions"], game["rewards"] = [], []
    for _ in range(steps):
        action = int(rng.integers(env.action_space.n))
        observation, reward, terminated, truncated, _ = env.step(action)
        game["obs"].append(observation)
        game["actions"].append(action)
        game["rewards"].append(reward)
        if terminated or truncated:
            break
    env.close()
    return game


def fragments(game: dict, cuts: list[int], ends: bool) -> list:
    """The game as an EnvRunner hands it to the learner: an episode cut (`cut()`) at the
    given steps, each piece numpy'd, rewards read-only as when they come out of Ray's
    object store. With `ends`, the last step terminates the episode."""
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    episode = SingleAgentEpisode(observation_space=game["space"][0], action_space=game["space"][1])
    episode.add_env_reset(observation=game["obs"][0])
    pieces = []
    steps = len(game["actions"])
    for t in range(steps):
        episode.add_env_step(
            game["obs"][t + 1],
            game["actions"][t],
            game["rewards"][t],
            terminated=ends and t == steps - 1,
        )
        if t + 1 in cuts:
            successor = episode.cut()
            pieces.append(episode.to_numpy())
            episode = successor
    pieces.append(episode.to_numpy())
    for piece in pieces:
        piece.rewards.data.flags.writeable = False
    return pieces


def test_connector_carries_caption_counts_across_fragments(reward_model):
    game = played_game(600, seed=3)
    # Each action is rewarded for the caption of the observation it was taken from.
    step_captions = [caption(o["message"]) for o in game["obs"][:-1]]
    extrinsic = np.asarray(game["rewards"], dtype=np.float64)
    beta, a1, a2 = 0.5, 1.0, 0.1
    # The reference: the whole episode at once, one Counter.
    reference = IntrinsicReward(reward_model.normalised, reward_model.norm.threshold, beta)
    r_int = reference.episode_rewards(step_captions, Counter())
    assert (r_int > 0).sum() >= 5, "the game must show liked captions for this test to bite"
    assert Counter(step_captions)[LIKED] >= 2, "and repeat one, so counts matter"

    mix = IntrinsicRewardConfig(coef_intrinsic=a1, coef_extrinsic=a2, beta=beta)
    connector = IntrinsicRewardConnector(
        reward_model=reward_model.to_bytes(), intrinsic=mix.model_dump()
    )
    n = len(step_captions)
    cuts = [n // 6, n // 2, n // 2 + 1, 4 * n // 5]
    pieces = fragments(game, cuts, ends=True)
    assert [p.t_started for p in pieces] == [0, *cuts]
    for piece in pieces:
        connector(rl_module=None, batch={}, episodes=[piece], explore=False, shared_data={})
    shaped = np.concatenate([p.get_rewards() for p in pieces])
    # Motif's mix: the env reward scaled by 0.1 and clipped to [-10, 10] (the defaults).
    scaled = np.clip(0.1 * extrinsic, -10, 10)
    assert (extrinsic != 0).any(), "the game must score for the mix to be checked"
    np.testing.assert_allclose(shaped, a1 * r_int + a2 * scaled, rtol=1e-5, atol=1e-6)
    stats = connector.drain()
    assert stats["episodes"] == 1
    assert stats["intrinsic_return_sum"] == pytest.approx(r_int.sum(), rel=1e-6)
    assert stats["extrinsic_return_sum"] == pytest.approx(extrinsic.sum(), rel=1e-6)
    assert stats["steps"] == len(step_captions)
    assert stats["fragments_without_predecessor"] == 0
    assert stats["distinct_captions"] == len(set(step_captions))

    # A fragment whose predecessor never reached this learner starts fresh counts, is
    # counted, and its episode's (partial) returns are not reported.
    lossy = IntrinsicRewardConnector(
        reward_model=reward_model.to_bytes(), intrinsic=mix.model_dump()
    )
    pieces = fragments(game, cuts[1::2], ends=True)
    for piece in (pieces[0], pieces[2]):
        lossy(rl_module=None, batch={}, episodes=[piece], explore=False, shared_data={})
    last = cuts[3]
    fresh = reference.episode_rewards(step_captions[last:], Counter())
    np.testing.assert_allclose(
        pieces[2].get_rewards(), a1 * fresh + a2 * scaled[last:], rtol=1e-5, atol=1e-6
    )
    stats = lossy.drain()
    assert stats["fragments_without_predecessor"] == 1
    assert stats["episodes"] == 0


def test_learner_pipeline_shapes_rewards_before_the_algorithms_own_pieces(reward_model):
    """In the learner that RLlib builds (APPO and PPO), the connector comes first and the
    train batch carries the combined rewards."""
    from ray.rllib.core.columns import Columns

    game = played_game(64, seed=5)
    extrinsic = np.asarray(game["rewards"], dtype=np.float64)
    expected = IntrinsicReward(reward_model.normalised, reward_model.norm.threshold, 0.0)
    # Each action is rewarded for the caption of the observation it was taken from.
    step_captions = [caption(o["message"]) for o in game["obs"][:-1]]
    combined = 2.0 * expected.episode_rewards(step_captions, Counter()) + 0.5 * extrinsic
    for algorithm in ("appo", "ppo"):
        config = TrainingConfig(
            algorithm=algorithm,
            num_env_runners=0,
            train_batch_size=64,
            agent=AgentConfig(screen_channels=[4], screen_dim=16, core_dim=16),
        )
        mix = IntrinsicRewardConfig(
            coef_intrinsic=2.0,
            coef_extrinsic=0.5,
            beta=0.0,
            extrinsic_scale=1.0,
            extrinsic_clip=None,
        )
        settings = learner_settings(reward_model, mix)
        algo_config = algorithm_config("score", config, seed=0, epoch=0, settings=settings)
        env = make_env("score")
        learner = algo_config.build_learner(env=env)
        env.close()
        pipeline = learner._learner_connector
        assert type(pipeline.connectors[0]).__name__ == "IntrinsicRewardConnector"
        assert type(pipeline.connectors[1]).__name__ == "AddOneTsToEpisodesAndTruncate"
        (piece,) = fragments(game, [], ends=False)
        batch = pipeline(rl_module=learner.module, batch={}, episodes=[piece], shared_data={})
        rewards = batch["default_policy"][Columns.REWARDS].numpy().reshape(-1)
        mask = batch["default_policy"][Columns.LOSS_MASK].numpy().reshape(-1)
        np.testing.assert_allclose(rewards[mask], combined, rtol=1e-5, atol=1e-6)
        learner.shutdown()


# ---------------------------------------------------------------- module and evaluation


@pytest.mark.parametrize("core", ["lstm", "mlp"])
def test_module_acts_and_evaluation_measures_match_the_games(core):
    """An (untrained) agent plays through `evaluate_agent`; the recorded measures are the
    ones recomputed from every observation of its games."""
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS

    from maestro.rl.agent import NetHackRLModule, module_spec

    env = make_env("score")
    spec = module_spec(AgentConfig(core=core), rollout_fragment_length=16)
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    env.close()
    module = spec.build()
    assert isinstance(module, NetHackRLModule)
    assert module.is_stateful() == (core == "lstm")
    module.make_target_networks()

    seen: list[dict] = []
    records = evaluate_agent(
        module, "score", 2, seed=11, max_episode_steps=150, on_step=seen.append
    )
    games, current = [], []
    for observation in seen:
        if current and len(current) == records[len(games)].length + 1:
            games.append(current)
            current = []
        current.append(observation)
    games.append(current)
    assert len(games) == 2
    for record, game in zip(records, games, strict=True):
        live = [o["blstats"] for o in game if o["blstats"][nethack.NLE_BL_DEPTH] > 0]
        assert record.length == len(game) - 1
        assert record.distinct_messages == len({caption(o["message"]) for o in game} - {""})
        assert record.depth == max(int(b[nethack.NLE_BL_DEPTH]) for b in live)
        assert record.score == int(live[-1][nethack.NLE_BL_SCORE])
    # Same seed, same module: the same games.
    assert evaluate_agent(module, "score", 2, seed=11, max_episode_steps=150) == records

    # Training-shaped inputs give training-shaped outputs, values included.
    batch_obs = {k: torch.from_numpy(np.stack([o[k] for o in seen[:8]])) for k in seen[0]}
    if module.is_stateful():
        batch = {
            Columns.OBS: {k: v.reshape(2, 4, *v.shape[1:]) for k, v in batch_obs.items()},
            Columns.STATE_IN: {
                k: torch.zeros(2, module.agent_config.core_dim) for k in module.get_initial_state()
            },
        }
        shape = (2, 4)
    else:
        batch, shape = {Columns.OBS: batch_obs}, (8,)
    out = module.forward_train(batch)
    assert out[Columns.ACTION_DIST_INPUTS].shape == (*shape, 23)
    assert module.compute_values(batch).shape == shape
    target = module.forward_target(batch)[TARGET_NETWORK_ACTION_DIST_INPUTS]
    assert target.shape == (*shape, 23)


def test_episode_stats_report_the_tasks_success():
    """Success is the task's own end status. A scripted explorer on the staircase task
    (run until `>` shows on the map, then NetHack's travel command to it and `>`) reaches
    dungeon level 2 in this seeded game: the step that arrives pays Motif's 50 and ends the
    episode, no other step pays anything."""
    actions = tuple(nethack.ACTIONS)
    index = {int(a): i for i, a in enumerate(actions)}
    runs = [index[ord(c)] for c in "HJKLYUBN"]
    env = EpisodeStats(make_env("staircase", seed=1, max_episode_steps=600, actions=actions))
    observation, _ = env.reset()
    rng = np.random.default_rng(1)
    plan: list[int] = []
    rewards = []
    for _ in range(600):
        if not plan and (observation["tty_chars"][1:22] == ord(">")).any():
            plan = [index[ord(c)] for c in "_>.>"]
        action = plan.pop(0) if plan else runs[rng.integers(len(runs))]
        observation, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    env.close()
    assert terminated and not truncated
    assert info["episode_success"] == 1
    assert info["episode_depth"] == 2
    assert rewards[-1] == 50.0 and set(rewards[:-1]) == {0.0}


# ---------------------------------------------------------------- training


class OneTrial:
    """The trial side of `train_agent` outside Tune (which `maestro run` puts it in):
    metrics to a real MLflow run, its last checkpoint kept here."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.state = None

    def log(self, metrics, step):
        self.tracker.log_metrics(metrics, step)

    def checkpoint(self, state, step):
        self.state = state

    def restore(self):
        return None

    def progress(self, total, desc, unit="it"):
        return progress_bar(total, desc, unit)


# Both APPO losses: RLlib's, and Sample Factory's that the quickstart trains with.
@pytest.mark.parametrize("appo_loss", ["rllib", "sample_factory"])
def test_training_with_the_intrinsic_reward_raises_it(
    appo_loss, reward_model, local_ray, mlflow_server, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    tracker = Tracker.start("maestro-test-rl", "learns", params={}, tags={})
    trial = OneTrial(tracker)
    config = TrainingConfig(
        algorithm="appo",
        appo_loss=appo_loss,
        env_steps=12_000,
        max_episode_steps=100,
        num_env_runners=1,
        num_envs_per_env_runner=16,
        train_batch_size=512,
        lr=2e-3,
        gamma=0.9,
        entropy_coeff=0.003,
        # Iterations by env steps, not seconds: as many log points on a fast or slow machine.
        min_iteration_seconds=0,
        min_iteration_env_steps=1600,
        checkpoint_every=100,
        eval_episodes=4,
        torch_threads=1,
    )
    intrinsic = IntrinsicRewardConfig(coef_intrinsic=1.0, coef_extrinsic=0.0, beta=0.0)
    result = train_agent(
        "score",
        config,
        trial=trial,
        seed=0,
        run_name="learns",
        reward_model=reward_model,
        intrinsic=intrinsic,
    )
    tracker.end()
    assert result.env_steps >= 12_000 and result.resumed_from is None

    client = MlflowClient(mlflow_server.url)

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(tracker.run_id, key))

    intrinsic_returns = [v for _, v in history("train/intrinsic_return")]
    assert len(intrinsic_returns) >= 4
    first, last = np.mean(intrinsic_returns[:2]), np.mean(intrinsic_returns[-2:])
    assert last > 2 * first, intrinsic_returns
    # The learner saw every fragment in order, and its extrinsic accounting agrees with
    # the env runners' over the run.
    assert all(v == 0 for _, v in history("intrinsic/fragments_without_predecessor"))
    learner_ext = [v for _, v in history("train/learner_extrinsic_return")]
    runner_ext = [v for _, v in history("train/extrinsic_return")]
    assert np.mean(learner_ext) == pytest.approx(np.mean(runner_ext), abs=1.0)
    steps = [s for s, _ in history("env_steps_per_s")]
    assert steps == sorted(set(steps)) and steps[-1] == result.env_steps

    # Evaluation: logged figures are the means of the evaluated games, measured as in
    # training; the agent that learned to seek the liked caption sees few distinct ones.
    assert len(result.episodes) == 4
    for name in ("score", "depth", "distinct_messages", "extrinsic_return"):
        logged = history(f"eval/{name}")
        assert logged[-1][0] == result.env_steps
        assert logged[-1][1] == pytest.approx(np.mean([getattr(e, name) for e in result.episodes]))
    train_distinct = [v for _, v in history("train/distinct_messages")]
    assert 0 < result.eval["eval/distinct_messages"] <= max(train_distinct) + 5
    assert result.eval["eval/depth"] >= 1

    # The last checkpoint is the trained agent: restored into a fresh algorithm, it plays
    # the evaluation games exactly as the run did.
    assert trial.state["loop"]["env_steps"] == result.env_steps
    settings = learner_settings(reward_model, intrinsic)
    algo = algorithm_config("score", config, seed=0, epoch=1, settings=settings).build_algo()
    try:
        restore_algorithm(algo, trial.state[ALGORITHM])
        replayed = evaluate_agent(
            learner_module(algo), "score", 4, seed=EVAL_SEED_OFFSET, max_episode_steps=100
        )
    finally:
        algo.stop()
    assert replayed == result.episodes


def test_a_killed_env_runner_is_replaced_and_training_goes_on(local_ray):
    import os
    import signal

    config = TrainingConfig(
        algorithm="appo",
        max_episode_steps=100,
        num_env_runners=1,
        num_envs_per_env_runner=4,
        train_batch_size=256,
        min_iteration_seconds=0,
        min_iteration_env_steps=400,
        torch_threads=1,
    )
    algo = algorithm_config("score", config, seed=0, epoch=1, settings=None).build_algo()
    runners = algo.env_runner_group
    try:
        algo.train()
        (pid,) = runners.foreach_env_runner(lambda _: os.getpid(), local_env_runner=False)
        os.kill(pid, signal.SIGKILL)  # a real kill: the process dies mid-run
        steps = []
        for _ in range(6):
            result = algo.train()
            steps.append(result["env_runners"]["num_env_steps_sampled_lifetime"])
        # A new env runner in a new process, and sampling went on after the kill.
        (new_pid,) = runners.foreach_env_runner(lambda _: os.getpid(), local_env_runner=False)
        assert new_pid != pid and runners.num_healthy_remote_workers() == 1
        assert steps[-1] > steps[0] > 0
    finally:
        algo.stop()
