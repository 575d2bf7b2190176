"""Training the NetHack agent with RLlib (new API stack), with or without Motif's reward.

`train_agent(...)` builds APPO (default; episodes cut into truncated fragments, v-trace)
or PPO on a task of `envs/nethack.py`, trains until `config.env_steps` env steps, and logs
to the caller's `Tracker` with step = env steps:

- train/intrinsic_return, train/learner_extrinsic_return: per-episode means over the
  episodes whose last fragment the learner shaped in the iteration (the connector, see
  `intrinsic_connector.py`), and train/intrinsic_reward_per_step;
- train/extrinsic_return, train/score, train/depth, train/distinct_messages,
  train/length: per-episode means over the episodes the env runners finished in
  the iteration (`EpisodeStats`);
- env_steps_per_s (wall clock of the iteration), learner/env_steps_trained,
  learner/gradient_updates and the losses; the same throughput and returns go to
  Prometheus (`maestro.metrics`) for the training dashboard.

At the end it evaluates the learned policy on fresh games (eval/score, eval/depth,
eval/distinct_messages, eval/success_rate for tasks with a success, eval/extrinsic_return)
with the same `EpisodeStats` measures, so training and evaluation figures mean the same,
and plays the same games with uniformly random actions (eval_random/*) for comparison.

Checkpoints: every `checkpoint_every` iterations (and at the end) the algorithm is saved
(`Algorithm.save_to_path`), tarred with the loop's own state (env steps, iterations) and
written atomically to `<prefix>/checkpoint.tar` in the artifact store (only the last one
is kept). On start, an existing checkpoint under the prefix is restored and training
continues from its env step count; the caller passes the tracker, so a resumed run keeps
logging into the same MLflow run.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import gymnasium as gym
import numpy as np
import torch
from nle import nethack
from nle.env.tasks import NetHackStaircase
from pydantic import BaseModel, ConfigDict, Field
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.columns import Columns

from maestro.envs.nethack import caption, make_env
from maestro.metrics import LearnerMetrics, RolloutMetrics
from maestro.reward.intrinsic import IntrinsicRewardConfig
from maestro.reward.model import RewardModel
from maestro.rl.intrinsic_connector import (
    IntrinsicRewardAPPOLearner,
    IntrinsicRewardPPOLearner,
    learner_settings,
)
from maestro.rl.nethack_module import AgentConfig, module_spec
from maestro.store import ArtifactStore

CHECKPOINT = "checkpoint.tar"
STATE_FILE = "train_state.json"
ALGORITHM_DIR = "algorithm"
STATS_KEY = "maestro"
ENV_NAME = "maestro-nethack"
# NLE's task status for success (only its task classes define it, as 2).
TASK_SUCCESSFUL = int(NetHackStaircase.StepStatus.TASK_SUCCESSFUL)
# Evaluation games come from seed + this, never from the training games' seeds.
EVAL_SEED_OFFSET = 1_000_003
EPISODE_FIELDS = ("extrinsic_return", "score", "depth", "distinct_messages", "length", "success")


class TrainingConfig(BaseModel):
    """How the agent trains (the Motif spec's `train:` block)."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["appo", "ppo"] = "appo"
    env_steps: int = Field(default=20_000, ge=1, description="train until this many env steps")
    max_episode_steps: int = Field(default=5000, ge=1)
    num_env_runners: int = Field(default=1, ge=0, description="0: sample in the driver")
    num_envs_per_env_runner: int = Field(default=4, ge=1)
    num_learners: int = Field(default=0, ge=0, description="0: learn in the driver")
    num_gpus_per_learner: float = Field(default=0.0, ge=0)
    rollout_fragment_length: int = Field(default=32, ge=1)
    train_batch_size: int = Field(default=512, ge=1, description="env steps per learner update")
    minibatch_size: int | None = Field(default=None, ge=1, description="PPO minibatches")
    num_epochs: int = Field(
        default=1,
        ge=1,
        description="passes over each batch (APPO: replays from its circular buffer)",
    )
    lr: float = Field(default=3e-4, gt=0)
    gamma: float = Field(default=0.999, gt=0, le=1)
    lambda_: float = Field(default=0.95, ge=0, le=1, description="GAE lambda (PPO)")
    entropy_coeff: float = Field(default=0.01, ge=0)
    vf_loss_coeff: float = Field(default=0.5, ge=0)
    grad_clip: float = Field(default=4.0, gt=0)
    min_iteration_seconds: float = Field(
        default=5.0, ge=0, description="an iteration (one log line) lasts at least this long"
    )
    min_iteration_env_steps: int = Field(
        default=0, ge=0, description="an iteration spans at least this many env steps"
    )
    checkpoint_every: int = Field(default=5, ge=1, description="iterations between checkpoints")
    eval_episodes: int = Field(default=5, ge=0)
    eval_max_episode_steps: int | None = Field(default=None, ge=1)
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads of the driver (local learner, evaluation); None: torch's",
    )
    agent: AgentConfig = Field(default_factory=AgentConfig)


# ---------------------------------------------------------------- env side


class EpisodeStats(gym.Wrapper):
    """NetHack episode measures, put in the info of an episode's last step as
    `episode_<field>` for `EPISODE_FIELDS`:

    - score: the in-game score (bottom line) at the last step where the game was still
      on (NLE zeroes the observation that ends an episode);
    - depth: the deepest dungeon level reached (for a descend task that succeeded, at
      least its target depth: the zeroed last observation cannot show it);
    - distinct_messages: distinct non-empty captions seen (the reset one included);
    - success: the task reported success (`end_status` TASK_SUCCESSFUL);
    - extrinsic_return, length: sum of env rewards and steps."""

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        self._messages: set[str] = set()
        self._score = 0
        self._depth = 0
        self._return = 0.0
        self._length = 0
        self._observe(observation)
        return observation, info

    def _observe(self, observation: dict[str, np.ndarray]) -> None:
        message = caption(observation["message"])
        if message:
            self._messages.add(message)
        blstats = observation["blstats"]
        depth = int(blstats[nethack.NLE_BL_DEPTH])
        if depth > 0:
            self._score = int(blstats[nethack.NLE_BL_SCORE])
            self._depth = max(self._depth, depth)

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._observe(observation)
        self._return += float(reward)
        self._length += 1
        if terminated or truncated:
            success = int(int(info.get("end_status", 0)) == TASK_SUCCESSFUL)
            if success:
                self._depth = max(self._depth, getattr(self.env.unwrapped, "target_depth", 0))
            info = {
                **info,
                "episode_extrinsic_return": self._return,
                "episode_score": self._score,
                "episode_depth": self._depth,
                "episode_distinct_messages": len(self._messages),
                "episode_length": self._length,
                "episode_success": success,
            }
        return observation, reward, terminated, truncated, info


class IgnoreResetSeed(gym.Wrapper):
    """Drops the seed RLlib passes to the first reset: each env's games come from its own
    seed (see `make_training_env`), which RLlib's `seed + worker_index (+ i)` scheme
    would make collide between workers."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return self.env.reset(options=options)


_envs_created = 0


def make_training_env(env_config: dict[str, Any]) -> gym.Env:
    """RLlib's env creator: the task's deterministic env with `EpisodeStats`. The games
    come from (seed, resume epoch, worker index, creation order in the process), so a
    rerun replays them and a resumed run plays new ones."""
    global _envs_created
    worker = int(getattr(env_config, "worker_index", 0))
    root = np.random.SeedSequence([env_config["seed"], env_config["epoch"], worker, _envs_created])
    _envs_created += 1
    env = make_env(
        env_config["task"],
        seed=int(root.generate_state(1)[0]),
        max_episode_steps=env_config["max_episode_steps"],
    )
    return IgnoreResetSeed(EpisodeStats(env))


class EpisodeStatsCallback(RLlibCallback):
    """Env-runner side: sums of `EpisodeStats` fields over finished episodes, plus their
    count, into the env runner's metrics (exact per-iteration means at the driver)."""

    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
        info = episode.get_infos(-1)
        if metrics_logger is None or "episode_score" not in info:
            return
        metrics_logger.log_value((STATS_KEY, "episodes"), 1, reduce="sum")
        for name in EPISODE_FIELDS:
            metrics_logger.log_value(
                (STATS_KEY, f"{name}_sum"), float(info[f"episode_{name}"]), reduce="sum"
            )


# ---------------------------------------------------------------- algorithm


def algorithm_config(
    task: str,
    config: TrainingConfig,
    seed: int,
    epoch: int,
    settings: dict[str, Any] | None,
) -> AlgorithmConfig:
    """RLlib's APPO or PPO config on the new API stack for `task`."""
    from ray.tune.registry import register_env

    # Registered in Ray's global registry, so env runners in other processes find it.
    register_env(ENV_NAME, make_training_env)
    if config.algorithm == "appo":
        from ray.rllib.algorithms.appo import APPOConfig

        algo = APPOConfig()
        learner_class = IntrinsicRewardAPPOLearner
        # The driver waits for sample results (up to a second) instead of polling in a
        # busy loop, which would take a core from the env runners and the learner.
        algo_training: dict[str, Any] = {
            "vtrace": True,
            "timeout_s_sampler_manager": 1.0,
            "circular_buffer_iterations_per_batch": config.num_epochs,
        }
        epochs = 1
    else:
        from ray.rllib.algorithms.ppo import PPOConfig

        algo = PPOConfig()
        learner_class = IntrinsicRewardPPOLearner
        algo_training = {
            "lambda_": config.lambda_,
            "minibatch_size": config.minibatch_size or config.train_batch_size,
        }
        epochs = config.num_epochs
    return (
        algo.api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .framework("torch")
        .environment(
            env=ENV_NAME,
            env_config={
                "task": task,
                "max_episode_steps": config.max_episode_steps,
                "seed": seed,
                "epoch": epoch,
            },
        )
        .env_runners(
            num_env_runners=config.num_env_runners,
            num_envs_per_env_runner=config.num_envs_per_env_runner,
            rollout_fragment_length=config.rollout_fragment_length,
            num_cpus_per_env_runner=1,
            # A second sample request queued on each env runner keeps it busy while the
            # driver hands the last one to the learner (results still arrive in order).
            max_requests_in_flight_per_env_runner=2,
        )
        .learners(
            num_learners=config.num_learners,
            num_gpus_per_learner=config.num_gpus_per_learner,
            learner_class=learner_class,
            learner_config_dict=settings or {},
        )
        .training(
            lr=config.lr,
            gamma=config.gamma,
            train_batch_size_per_learner=config.train_batch_size,
            num_epochs=epochs,
            entropy_coeff=config.entropy_coeff,
            vf_loss_coeff=config.vf_loss_coeff,
            grad_clip=config.grad_clip,
            **algo_training,
        )
        .rl_module(rl_module_spec=module_spec(config.agent, config.rollout_fragment_length))
        .callbacks(EpisodeStatsCallback)
        .reporting(
            min_time_s_per_iteration=config.min_iteration_seconds,
            min_sample_timesteps_per_iteration=config.min_iteration_env_steps,
        )
        # No Tune CPU/GPU usage monitor: Maestro logs none of it (the dashboards read Ray's
        # node metrics), and without GPUtil it only warns "Install gputil".
        .debugging(seed=seed, log_sys_usage=False)
    )


# ---------------------------------------------------------------- checkpoints


@dataclass
class LoopState:
    """What the training loop itself carries across a restart."""

    env_steps: int = 0
    iterations: int = 0
    resumes: int = 0


def save_checkpoint(algo, store: ArtifactStore, prefix: str, state: LoopState) -> str:
    """Save the algorithm and the loop state as one tar at `<prefix>/checkpoint.tar`."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        algo.save_to_path(str(folder / ALGORITHM_DIR))
        (folder / STATE_FILE).write_text(json.dumps(state.__dict__))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(folder / STATE_FILE, arcname=STATE_FILE)
            tar.add(folder / ALGORITHM_DIR, arcname=ALGORITHM_DIR)
    key = f"{prefix}/{CHECKPOINT}"
    store.put_bytes(key, buffer.getvalue())
    return key


def read_checkpoint_state(store: ArtifactStore, prefix: str) -> LoopState | None:
    """The loop state of the checkpoint under `prefix`, if there is one."""
    key = f"{prefix}/{CHECKPOINT}"
    if not store.exists(key):
        return None
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(key))) as tar:
        return LoopState(**json.loads(tar.extractfile(STATE_FILE).read()))


def restore_checkpoint(algo, store: ArtifactStore, prefix: str) -> None:
    """Load the checkpoint under `prefix` into `algo` and push its weights to the env
    runners (RLlib restores the learner; the samplers must act with the same policy)."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(store.get_bytes(f"{prefix}/{CHECKPOINT}"))) as tar:
            tar.extractall(tmp, filter="data")
        algo.restore_from_path(str(Path(tmp) / ALGORITHM_DIR))
    algo.env_runner_group.sync_weights(
        from_worker_or_learner_group=algo.learner_group, inference_only=True
    )


# ---------------------------------------------------------------- metrics


def _nested(result: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(result, dict) or key not in result:
            return default
        result = result[key]
    return result


def _count(value: Any) -> float:
    """A summed metric as a number: RLlib reports NaN for a sum nothing was added to."""
    return 0.0 if value is None or not math.isfinite(value) else float(value)


def learner_stats(algo) -> dict[str, float]:
    """Gradient updates and the intrinsic-reward connector's sums since the last call,
    over all learners."""
    totals: dict[str, float] = {}
    for call in algo.learner_group.foreach_learner(lambda learner: learner.drain_stats()):
        for key, value in call.get().items():
            if key == "distinct_captions":
                totals[key] = max(totals.get(key, 0), value)
            else:
                totals[key] = totals.get(key, 0) + value
    return totals


def iteration_metrics(
    result: dict, learner: dict[str, float], env_steps: int, seconds: float
) -> dict[str, float]:
    """Tracker metrics of one iteration: per-episode means over the episodes that ended
    in it (env runners: `result`; learner: `learner`, see `learner_stats`)."""
    metrics = {
        "env_steps_per_s": env_steps / seconds if seconds > 0 else 0.0,
        "learner/gradient_updates": learner.get("gradient_updates", 0),
        "learner/env_steps_trained": _count(
            _nested(result, "learners", "__all_modules__", "num_env_steps_trained")
        ),
    }
    stats = _nested(result, "env_runners", STATS_KEY, default={})
    episodes = _count(stats.get("episodes"))
    if episodes:
        for name in EPISODE_FIELDS:
            if name == "success":
                continue
            metrics[f"train/{name}"] = stats[f"{name}_sum"] / episodes
        metrics["train/episodes"] = episodes
    if learner.get("episodes"):
        metrics["train/intrinsic_return"] = learner["intrinsic_return_sum"] / learner["episodes"]
        metrics["train/learner_extrinsic_return"] = (
            learner["extrinsic_return_sum"] / learner["episodes"]
        )
    if learner.get("steps"):
        metrics["train/intrinsic_reward_per_step"] = (
            learner["intrinsic_reward_sum"] / learner["steps"]
        )
        metrics["intrinsic/seconds_per_1k_steps"] = 1000 * learner["seconds"] / learner["steps"]
        metrics["intrinsic/fragments_without_predecessor"] = learner.get(
            "fragments_without_predecessor", 0
        )
        metrics["intrinsic/distinct_captions"] = learner.get("distinct_captions", 0)
    module = _nested(result, "learners", "default_policy", default={})
    for name in ("policy_loss", "vf_loss", "entropy"):
        if name in module:
            metrics[f"learner/{name}"] = module[name]
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}


def sampled_env_steps(result: dict) -> int:
    """Env steps the env runners sampled in this iteration."""
    return int(_count(_nested(result, "env_runners", "num_env_steps_sampled")))


# ---------------------------------------------------------------- evaluation


@dataclass
class EpisodeRecord:
    """One evaluation episode's `EpisodeStats` measures."""

    extrinsic_return: float
    score: int
    depth: int
    distinct_messages: int
    length: int
    success: int


@torch.no_grad()
def evaluate_agent(
    module,
    task: str,
    episodes: int,
    seed: int,
    max_episode_steps: int,
    on_step: Callable[[dict[str, np.ndarray]], None] | None = None,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
) -> list[EpisodeRecord]:
    """Play `episodes` fresh games of `task` (deterministic given `seed`), sampling
    actions from the policy (greedy NetHack policies loop on one action). `module` None
    plays uniformly random actions: the baseline on the same games. `on_step` sees each
    observation, `on_episode` each finished episode's record."""
    env = EpisodeStats(make_env(task, seed=seed, max_episode_steps=max_episode_steps))
    generator = torch.Generator().manual_seed(seed)
    recurrent = module is not None and module.agent_config.use_lstm
    records = []
    for _ in range(episodes):
        observation, _ = env.reset()
        if on_step:
            on_step(observation)
        initial = module.get_initial_state() if module is not None else {}
        state = {k: torch.from_numpy(v)[None] for k, v in initial.items()}
        while True:
            if module is None:
                logits, out = torch.zeros(env.action_space.n), {}
            else:
                obs = {k: torch.from_numpy(v)[None] for k, v in observation.items()}
                if recurrent:
                    obs = {k: v[:, None] for k, v in obs.items()}
                out = module.forward_exploration({Columns.OBS: obs, Columns.STATE_IN: state})
                logits = out[Columns.ACTION_DIST_INPUTS].reshape(-1)
            action = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            state = out.get(Columns.STATE_OUT, state)
            observation, _, terminated, truncated, info = env.step(action)
            if on_step:
                on_step(observation)
            if terminated or truncated:
                records.append(
                    EpisodeRecord(**{name: info[f"episode_{name}"] for name in EPISODE_FIELDS})
                )
                if on_episode:
                    on_episode(records[-1])
                break
    env.close()
    return records


def eval_metrics(records: list[EpisodeRecord], task: str, prefix: str = "eval") -> dict[str, float]:
    """Means of the evaluation episodes (success rate only for tasks with a success)."""
    if not records:
        return {}
    metrics = {
        f"{prefix}/{name}": float(np.mean([getattr(r, name) for r in records]))
        for name in EPISODE_FIELDS
        if name != "success"
    }
    if task != "score":
        metrics[f"{prefix}/success_rate"] = float(np.mean([r.success for r in records]))
    metrics[f"{prefix}/episodes"] = float(len(records))
    return metrics


def learner_module(algo):
    """The learner's current RLModule (env runners may lag behind it under APPO)."""
    module = algo.get_module()
    module.set_state(algo.learner_group.get_weights()["default_policy"])
    return module


# ---------------------------------------------------------------- loop


def advance(bar, steps: int) -> None:
    """Move a tqdm `bar` on by `steps`, never past its total: the last iteration samples
    beyond `env_steps`, and a bar past its total drops its percentage and ends on a count
    other than the total."""
    bar.update(max(0, min(steps, bar.total - bar.n)))


def evaluate_with_progress(
    module, games: dict[str, Any], progress: Callable[..., Any] | None, desc: str
) -> list[EpisodeRecord]:
    """`evaluate_agent(module, **games)` with a bar counting episodes when `progress`
    makes bars (an evaluation of long NetHack games otherwise looks like a hang)."""
    if progress is None or not games["episodes"]:
        return evaluate_agent(module, **games)
    with progress(games["episodes"], desc, "episode") as bar:
        return evaluate_agent(module, **games, on_episode=lambda _: bar.update(1))


class MetricsLog(Protocol):
    """Where training logs: a `maestro.tracking.Tracker`, or a sweep trial's reporter."""

    def log_metrics(self, metrics: dict[str, float], step: int, flush: bool = False) -> None: ...

    def flush(self) -> None: ...


@dataclass
class TrainingResult:
    """How `train_agent` ended."""

    env_steps: int
    iterations: int
    resumed_from: int | None
    checkpoint: str
    eval: dict[str, float] = field(default_factory=dict)
    episodes: list[EpisodeRecord] = field(default_factory=list)


def train_agent(
    task: str,
    config: TrainingConfig,
    *,
    tracker: MetricsLog,
    store: ArtifactStore,
    prefix: str,
    seed: int,
    run_name: str,
    reward_model: RewardModel | None = None,
    intrinsic: IntrinsicRewardConfig | None = None,
    threshold: float | None = None,
    progress: Callable[..., Any] | None = None,
) -> TrainingResult:
    """Train on `task` until `config.env_steps` (resuming from `<prefix>/checkpoint.tar`
    if present), evaluate, and return the figures. With `reward_model`, the learner trains
    on `intrinsic.coef_intrinsic * r_int + intrinsic.coef_extrinsic * r_ext` with eps =
    `threshold` (None: the model's own); without it, on the env reward. Throughput and
    returns also go to Prometheus labelled `run_name`. Ray must be up
    (`maestro.runtime.init_ray`)."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    settings = None
    if reward_model is not None:
        intrinsic = intrinsic or IntrinsicRewardConfig()
        settings = learner_settings(
            reward_model,
            intrinsic.coef_intrinsic,
            intrinsic.coef_extrinsic,
            intrinsic.beta,
            threshold,
        )
    state = read_checkpoint_state(store, prefix)
    resumed_from = state.env_steps if state else None
    state = state or LoopState()
    if resumed_from is not None:
        state.resumes += 1
    rollouts, learners = RolloutMetrics(run_name, task), LearnerMetrics(run_name)
    algo = algorithm_config(task, config, seed, state.resumes, settings).build_algo()
    try:
        if resumed_from is not None:
            restore_checkpoint(algo, store, prefix)
            tracker.log_metrics({"train/resumed_at_env_steps": resumed_from}, state.env_steps)
        bar = progress(config.env_steps, "train", "step") if progress else None
        if bar is not None:
            advance(bar, state.env_steps)
        checkpoint = f"{prefix}/{CHECKPOINT}"
        while state.env_steps < config.env_steps:
            start = time.perf_counter()
            result = algo.train()
            seconds = time.perf_counter() - start
            steps = sampled_env_steps(result)
            state.iterations += 1
            # Nothing sampled (env runners still starting): nothing to log.
            if steps:
                state.env_steps += steps
                learner = learner_stats(algo)
                metrics = iteration_metrics(result, learner, steps, seconds)
                tracker.log_metrics(metrics, step=state.env_steps)
                rollouts.record(env_steps=steps, episodes=int(metrics.get("train/episodes", 0)))
                learners.record(
                    samples=int(metrics["learner/env_steps_trained"]),
                    updates=int(learner.get("gradient_updates", 0)),
                    intrinsic_return=metrics.get("train/intrinsic_return"),
                    extrinsic_return=metrics.get("train/extrinsic_return"),
                )
                if bar is not None:
                    advance(bar, steps)
            if state.iterations % config.checkpoint_every == 0:
                save_checkpoint(algo, store, prefix, state)
                tracker.flush()
        save_checkpoint(algo, store, prefix, state)
        if bar is not None:
            bar.close()
        games = {
            "task": task,
            "episodes": config.eval_episodes,
            "seed": seed + EVAL_SEED_OFFSET,
            "max_episode_steps": config.eval_max_episode_steps or config.max_episode_steps,
        }
        records = evaluate_with_progress(learner_module(algo), games, progress, "evaluate agent")
        figures = eval_metrics(records, task)
        # The same games played by uniformly random actions: what the agent learned beyond chance.
        random_play = evaluate_with_progress(None, games, progress, "evaluate random play")
        baseline = eval_metrics(random_play, task, prefix="eval_random")
        figures.update(baseline)
        tracker.log_metrics(figures, step=state.env_steps, flush=True)
        return TrainingResult(
            state.env_steps, state.iterations, resumed_from, checkpoint, figures, records
        )
    finally:
        algo.stop()
