"""Training Motif's NetHack agent with RLlib (new API stack), with or without its reward.

`train_agent(...)` builds APPO (default) or PPO (`maestro.rl.algorithm`) with the NetHack
agent (`agent.py`) and, given a reward model, the learners that put the intrinsic reward
in (`maestro.feedback.intrinsic_connector`), on a task of `envs/nethack.py`; it trains until
`config.env_steps` env steps and logs through its trial (`TrialContext.log`) with step =
env steps:

- train/intrinsic_return, train/learner_extrinsic_return: per-episode means over the
  episodes whose last fragment the learner shaped in the iteration (the connector, see
  `maestro.feedback.intrinsic_connector`), and train/intrinsic_reward_per_step;
- train/extrinsic_return, train/score, train/depth, train/distinct_messages,
  train/length: per-episode means over the episodes the env runners finished in
  the iteration (`EpisodeStats`, `maestro.rl.results`);
- env_steps_per_s (wall clock of the iteration), learner/env_steps_trained,
  learner/gradient_updates and the losses; the same throughput and returns go to
  Prometheus (`maestro.metrics`) for the training dashboard.

At the end it evaluates the learned policy on fresh games (`evaluate.py`: eval/score,
eval/depth, eval/distinct_messages, eval/success_rate for tasks with a success,
eval/extrinsic_return) and plays the same games with uniformly random actions
(eval_random/*) for comparison.

Checkpoints (`maestro.rl.checkpoints`): every `checkpoint_every` iterations (and at the
last) the algorithm and the loop's own state become the trial's checkpoint
(`TrialContext.checkpoint`). On start, the trial's checkpoint (its own, or under PBT the
one it copied) is restored and training continues from its env step count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from pydantic import Field
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

from maestro.feedback.intrinsic import IntrinsicRewardConfig
from maestro.feedback.intrinsic_connector import (
    MAXIMA,
    IntrinsicRewardAPPOLearner,
    IntrinsicRewardPPOLearner,
    intrinsic_metrics,
    learner_settings,
)
from maestro.feedback.reward_model import RewardModel
from maestro.metrics import LearnerMetrics, RolloutMetrics
from maestro.rl.agent import AgentConfig, module_spec
from maestro.rl.algorithm import RLlibConfig, learner_module, rllib_config
from maestro.rl.checkpoints import LoopState, algorithm_bytes, restore_algorithm
from maestro.rl.evaluate import (
    EVAL_SEED_OFFSET,
    EpisodeRecord,
    eval_metrics,
    evaluate_with_progress,
)
from maestro.rl.results import iteration_metrics, learner_stats, sampled_env_steps

ALGORITHM = "algorithm.tar"  # the checkpoint entry holding `algorithm_bytes`


def stored_agent(store, folder: str) -> str:
    """The store key of a trained agent's `algorithm.tar` under `folder`: a checkpoint
    folder, or an experiment's (`runs/motif/<name>`: its first trial's last checkpoint).
    FileNotFoundError when there is none."""
    folder = folder.strip("/")
    if store.exists(f"{folder}/{ALGORITHM}"):
        return f"{folder}/{ALGORITHM}"
    # <folder>/tune/<trial folder>/checkpoint_<n>/algorithm.tar, names that sort in order
    found = [k for k in store.list(f"{folder}/tune") if k.endswith(f"/{ALGORITHM}")]
    if not found:
        raise FileNotFoundError(f"no trained agent ({ALGORITHM}) under {store.uri(folder)}")
    first_trial = min(key.split("/")[-3] for key in found)
    return max(key for key in found if key.split("/")[-3] == first_trial)


def load_stored_agent(store, key: str) -> bytes:
    """The `algorithm.tar` at `key` (`stored_agent`), once the signature of the checkpoint
    holding it is checked (`maestro.run.read_checkpoint`): it is unpickled next."""
    from maestro.run import read_checkpoint

    folder = key.rsplit("/", 1)[0]
    files = {k[len(folder) + 1 :]: store.get_bytes(k) for k in store.list(folder)}
    return read_checkpoint(files, store.uri(folder))[1][ALGORITHM]


# The learner classes that apply the intrinsic reward, by algorithm.
LEARNERS = {"appo": IntrinsicRewardAPPOLearner, "ppo": IntrinsicRewardPPOLearner}


class TrainingConfig(RLlibConfig):
    """How the agent trains (the Motif spec's `train:` block): RLlib's settings and the
    agent's sizes."""

    agent: AgentConfig = Field(default_factory=AgentConfig)


def algorithm_config(
    task: str,
    config: TrainingConfig,
    seed: int,
    epoch: int,
    settings: dict[str, Any] | None,
    **env: Any,
) -> AlgorithmConfig:
    """RLlib's APPO or PPO config for `task` with the NetHack agent and the learners of
    `maestro.feedback`; `settings` (`learner_settings`) turns the intrinsic reward on, None
    trains on the env reward; `env` goes to `rllib_config` (MaestroMotif: its env creator,
    env config and callbacks)."""
    return rllib_config(
        task,
        config,
        seed,
        epoch,
        module_spec=module_spec(config.agent, config.rollout_fragment_length),
        learner_class=LEARNERS[config.algorithm],
        learner_config=settings,
        **env,
    )


def trial_resources(method_config: Any) -> Any:
    """What a trial of a method that trains this agent reserves (its config's `task`,
    `train` and `stages`): RLlib's own request for the algorithm, the learner (with its GPU)
    in the trial's process and one bundle per env runner (the same whatever the reward);
    one CPU without the `train` stage."""
    if "train" not in method_config.stages:
        return {"cpu": 1}
    task, config = method_config.task, method_config.train
    algo_config = algorithm_config(task, config, seed=0, epoch=0, settings=None)
    return algo_config.algo_class.default_resource_request(algo_config)


# ---------------------------------------------------------------- loop


def advance(bar, steps: int) -> None:
    """Move a tqdm `bar` on by `steps`, never past its total: the last iteration samples
    beyond `env_steps`, and a bar past its total drops its percentage and ends on a count
    other than the total."""
    bar.update(max(0, min(steps, bar.total - bar.n)))


class Trial(Protocol):
    """What training reports to and keeps its state in: a `maestro.run.TrialContext`."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def checkpoint(self, state: dict[str, Any], step: int) -> None: ...

    def restore(self) -> dict[str, Any] | None: ...

    def progress(self, total: int, desc: str, unit: str = "it") -> Any: ...


@dataclass
class TrainingResult:
    """How `train_agent` ended."""

    env_steps: int
    iterations: int
    resumed_from: int | None
    eval: dict[str, float] = field(default_factory=dict)
    episodes: list[EpisodeRecord] = field(default_factory=list)


def train_agent(
    task: str,
    config: TrainingConfig,
    *,
    trial: Trial,
    seed: int,
    run_name: str,
    reward_model: RewardModel | None = None,
    intrinsic: IntrinsicRewardConfig | None = None,
    threshold: float | None = None,
) -> TrainingResult:
    """Train on `task` until `config.env_steps` (resuming from the trial's checkpoint if it
    has one), evaluate, and return the figures. With `reward_model`, the learner trains
    on Motif's combination of r_int and the env reward (`intrinsic`, see `intrinsic.combine`)
    with eps = `threshold` (None: the model's own); without it, on the env reward. Throughput and
    returns also go to Prometheus labelled `run_name`. Ray must be up
    (`maestro.runtime.init_ray`)."""
    settings = None
    if reward_model is not None:
        settings = learner_settings(reward_model, intrinsic or IntrinsicRewardConfig(), threshold)
    with trained_algorithm(
        lambda epoch: algorithm_config(task, config, seed, epoch, settings),
        task,
        config,
        trial=trial,
        run_name=run_name,
    ) as (algo, state, resumed_from):
        games = evaluation_games(task, config, seed)
        progress = trial.progress
        records = evaluate_with_progress(learner_module(algo), games, progress, "evaluate agent")
        figures = eval_metrics(records, task)
        # The same games played by uniformly random actions: what the agent learned beyond chance.
        random_play = evaluate_with_progress(None, games, progress, "evaluate random play")
        baseline = eval_metrics(random_play, task, prefix="eval_random")
        figures.update(baseline)
        trial.log(figures, step=state.env_steps)
        return TrainingResult(state.env_steps, state.iterations, resumed_from, figures, records)


def evaluation_games(task: str, config: RLlibConfig, seed: int) -> dict[str, Any]:
    """`evaluate_agent`'s arguments for the fresh games an agent trained with `seed` is
    evaluated on (seeds apart from training's)."""
    return {
        "task": task,
        "episodes": config.eval_episodes,
        "seed": seed + EVAL_SEED_OFFSET,
        "max_episode_steps": config.eval_max_episode_steps or config.max_episode_steps,
    }


@contextmanager
def trained_algorithm(
    build: Callable[[int], AlgorithmConfig],
    task: str,
    config: RLlibConfig,
    *,
    trial: Trial,
    run_name: str,
    extra_metrics: Callable[[dict[str, Any], dict[str, float]], dict[str, float]] | None = None,
) -> Iterator[tuple[Any, LoopState, int | None]]:
    """The training loop (module docs), shared by Motif and MaestroMotif: builds the
    algorithm with `build(resumes)`, continues from the trial's checkpoint, trains until
    `config.env_steps` with a log and a checkpoint per iteration as the module docs say
    (`extra_metrics(result, learner stats)` adds the method's own), then yields (the
    algorithm, the loop's state, the env steps it resumed from or None) for evaluation, and
    stops the algorithm."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    saved = trial.restore()
    state = LoopState(**saved["loop"]) if saved else LoopState()
    resumed_from = state.env_steps if saved else None
    if saved:
        state.resumes += 1
    rollouts, learners = RolloutMetrics(run_name, task), LearnerMetrics(run_name)
    algo = build(state.resumes).build_algo()
    try:
        if saved:
            restore_algorithm(algo, saved[ALGORITHM])
        bar = trial.progress(config.env_steps, "train", "step")
        advance(bar, state.env_steps)
        while state.env_steps < config.env_steps:
            start = time.perf_counter()
            result = algo.train()
            seconds = time.perf_counter() - start
            steps = sampled_env_steps(result)
            state.iterations += 1
            # Nothing sampled (env runners still starting): nothing to log.
            if steps:
                state.env_steps += steps
                learner = learner_stats(algo, maxima=MAXIMA)
                metrics = iteration_metrics(result, learner, steps, seconds)
                metrics.update(intrinsic_metrics(learner))
                if extra_metrics is not None:
                    metrics.update(extra_metrics(result, learner))
                # A trial restored from this checkpoint logs on from this step.
                if (
                    state.iterations % config.checkpoint_every == 0
                    or state.env_steps >= config.env_steps
                ):
                    trial.checkpoint(
                        {"loop": dict(state.__dict__), ALGORITHM: algorithm_bytes(algo)},
                        step=state.env_steps,
                    )
                trial.log(metrics, step=state.env_steps)
                rollouts.record(env_steps=steps, episodes=int(metrics.get("train/episodes", 0)))
                learners.record(
                    samples=int(metrics["learner/env_steps_trained"]),
                    updates=int(learner.get("gradient_updates", 0)),
                    intrinsic_return=metrics.get("train/intrinsic_return"),
                    extrinsic_return=metrics.get("train/extrinsic_return"),
                )
                advance(bar, steps)
        bar.close()
        yield algo, state, resumed_from
    finally:
        algo.stop()
