"""Training MaestroMotif's one skill-conditioned agent, and evaluating its skills alone and
composed by a task's policy over skills.

Training is Motif's loop (`maestro.rl.training.trained_algorithm`, RLlib APPO or PPO) with
three differences: the envs carry the skill layer (`env.py`: the training policy over
skills and the skills' termination functions choose the acting skill, which the agent sees
as a one-hot beside the bottom-line stats), each step is rewarded by the acting skill's
reward model (`intrinsic.py`), and the iteration's logs add `skills/usage/<skill>` (the
share of the sampled steps each skill acted on), `skills/intrinsic_reward_per_step/<skill>`
(its reward model's r_int per step it acted on) and `skills/failures_per_episode`
(skill-code calls that failed, `controller.py`).

Evaluation plays fresh games (seeds apart from training's):
- `skill/<skill>/<measure>`: each skill of `eval_skills` acting alone through whole games
  (depth, score, ...: `EpisodeStats`'s measures);
- `task/<task>/success_rate` and `task/<task>/usage/<skill>`: the task's policy over skills
  (its code) composing the trained skills with no further training, a game a success when
  the task's condition (`config.TASKS`) held at any of its observations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np

from maestro.envs.nethack import EpisodeStats, make_env
from maestro.feedback.intrinsic import IntrinsicRewardConfig
from maestro.feedback.reward_model import RewardModel
from maestro.methods.maestromotif.env import (
    ENV_OBSERVATION_KEYS,
    SkillEnv,
    SkillVectorEnv,
    skill_controller,
)
from maestro.methods.maestromotif.features import skill_features
from maestro.methods.maestromotif.intrinsic import skill_learner_settings
from maestro.rl import training
from maestro.rl.algorithm import learner_module
from maestro.rl.env import STATS_KEY, EpisodeStatsCallback, IgnoreResetSeed, training_env_seed
from maestro.rl.evaluate import eval_metrics, evaluate_with_progress
from maestro.rl.results import count, nested
from maestro.rl.training import TrainingConfig, Trial, evaluation_games, trained_algorithm

SKILL_ENV_NAME = "maestro-nethack-skills"


def make_skill_training_env(env_config: dict[str, Any]) -> gym.vector.VectorEnv:
    """RLlib's vector env creator (`gym_env_vectorize_mode: vector_entry_point`):
    `env_config["num_envs"]` of the task's envs with `EpisodeStats`, under the skill layer
    (`SkillVectorEnv`) running `env_config["skill_code"]` over `env_config["skills"]`, in
    the sandbox unless `env_config["sandbox"]` is False (`env.skill_controller`)."""
    skills = env_config["skills"]
    seeds = [training_env_seed(env_config) for _ in range(env_config["num_envs"])]
    envs = gym.vector.SyncVectorEnv([partial(game_env, env_config, seed) for seed in seeds])
    sandbox = env_config.get("sandbox", True)
    controllers = [
        skill_controller(skills, env_config["skill_code"], None, seed, sandbox) for seed in seeds
    ]
    return SkillVectorEnv(envs, skills, controllers, controllers[0].caller)


def game_env(env_config: dict[str, Any], seed: int) -> gym.Env:
    """One env of the vector: the task's, seeded, with `EpisodeStats`."""
    env = make_env(env_config["task"], seed, env_config["max_episode_steps"], ENV_OBSERVATION_KEYS)
    return IgnoreResetSeed(EpisodeStats(env))


class SkillStatsCallback(EpisodeStatsCallback):
    """`EpisodeStatsCallback` plus the steps each skill acted on in every sample (long
    episodes finish rarely) and each finished episode's failed skill-code calls, summed."""

    def on_sample_end(self, *, env_runner=None, metrics_logger=None, samples, **kwargs) -> None:
        if metrics_logger is None or env_runner is None:
            return
        skills = env_runner.config.env_config["skills"]
        steps = np.zeros(len(skills), dtype=np.int64)
        for episode in samples:
            if len(episode):
                acted = episode.get_observations(slice(0, len(episode)))["skill"]
                steps += np.bincount(np.asarray(acted, dtype=np.int64), minlength=len(skills))
        for skill, n in zip(skills, steps.tolist(), strict=True):
            metrics_logger.log_value((STATS_KEY, f"skill_steps/{skill}"), n, reduce="sum")

    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
        super().on_episode_end(episode=episode, metrics_logger=metrics_logger, **kwargs)
        info = episode.get_infos(-1)
        if metrics_logger is not None and "episode_skill_failures" in info:
            metrics_logger.log_value(
                (STATS_KEY, "skill_failures"), info["episode_skill_failures"], reduce="sum"
            )


def skill_metrics(
    result: dict[str, Any], learner: dict[str, float], skills: Sequence[str]
) -> dict[str, float]:
    """`skills/usage/<skill>` (its share of the iteration's sampled steps),
    `skills/intrinsic_reward_per_step/<skill>` (r_int per step it acted on, among the steps
    the learner shaped) and `skills/failures_per_episode` (over the episodes that finished)."""
    stats = nested(result, "env_runners", STATS_KEY, default={})
    steps = {skill: count(stats.get(f"skill_steps/{skill}")) for skill in skills}
    total = sum(steps.values())
    metrics = {f"skills/usage/{skill}": n / total for skill, n in steps.items()} if total else {}
    for index, skill in enumerate(skills):
        shaped = learner.get(f"skill_steps/{index}", 0)
        if shaped:
            r_int = learner[f"skill_intrinsic_sum/{index}"]
            metrics[f"skills/intrinsic_reward_per_step/{skill}"] = r_int / shaped
    episodes = count(stats.get("episodes"))
    if episodes:
        metrics["skills/failures_per_episode"] = count(stats.get("skill_failures")) / episodes
    return metrics


@dataclass(frozen=True)
class SkillTraining:
    """What the skill-conditioned agent trains on: the skills in order, the skill code
    (initiations, terminations and the training policy), one reward model and eps per skill,
    and the reward's combination."""

    skills: tuple[str, ...]
    skill_code: str
    reward_models: tuple[RewardModel, ...]
    thresholds: tuple[float, ...]
    intrinsic: IntrinsicRewardConfig


def algorithm_config(task: str, config: TrainingConfig, seed: int, epoch: int, how: SkillTraining):
    """RLlib's APPO or PPO config of the skill-conditioned agent: Motif's agent and learners
    (`maestro.rl.training`) with the skill layer's envs and the per-skill reward."""
    return training.algorithm_config(
        task,
        config,
        seed,
        epoch,
        skill_learner_settings(how.reward_models, how.thresholds, how.intrinsic),
        env_creator=(SKILL_ENV_NAME, make_skill_training_env),
        env_config={"skills": list(how.skills), "skill_code": how.skill_code},
        callbacks=SkillStatsCallback,
    ).env_runners(gym_env_vectorize_mode="vector_entry_point")


def train_skills(
    task: str,
    config: TrainingConfig,
    how: SkillTraining,
    *,
    trial: Trial,
    seed: int,
    run_name: str,
    eval_skills: Sequence[str],
    task_policies: dict[str, str],
    task_success: dict[str, str],
) -> dict[str, float]:
    """Train the agent until `config.env_steps` (resuming from the trial's checkpoint),
    then evaluate each of `eval_skills` alone and each task of `task_policies` (task ->
    its policy code) composed; returns env steps and the evaluation figures (module docs).
    Ray must be up."""
    with trained_algorithm(
        lambda epoch: algorithm_config(task, config, seed, epoch, how),
        task,
        config,
        trial=trial,
        run_name=run_name,
        extra_metrics=lambda result, learner: skill_metrics(result, learner, how.skills),
    ) as (algo, state, _):
        module = learner_module(algo)
        games = evaluation_games(task, config, seed)
        figures: dict[str, float] = {"env_steps": float(state.env_steps)}
        for skill in eval_skills:
            game = SkillGames(how.skills, fixed_skill=how.skills.index(skill))
            records = evaluate_with_progress(
                module, {**games, "make_game_env": game.make}, trial.progress, f"skill {skill}"
            )
            figures.update(eval_metrics(records, task, prefix=f"skill/{skill}"))
        for name, policy_code in task_policies.items():
            game = SkillGames(
                how.skills,
                skill_code=how.skill_code,
                policy_code=policy_code,
                success=task_success[name],
            )
            evaluate_with_progress(
                module, {**games, "make_game_env": game.make}, trial.progress, f"task {name}"
            )
            figures[f"task/{name}/success_rate"] = float(np.mean(game.successes or [0.0]))
            total = sum(game.usage.values()) or 1
            for skill in how.skills:
                figures[f"task/{name}/usage/{skill}"] = game.usage[skill] / total
        trial.log(figures, step=state.env_steps)
        return figures


class SkillGames:
    """Builds evaluation envs with the skill layer (for `evaluate_agent`'s
    `make_game_env`): a fixed skill, or the skill code with a task's policy over skills;
    with `success` (a feature name), whether each game ever showed it (`successes`), and
    the steps each skill acted over all games (`usage`)."""

    def __init__(
        self,
        skills: Sequence[str],
        *,
        fixed_skill: int | None = None,
        skill_code: str | None = None,
        policy_code: str | None = None,
        success: str | None = None,
    ):
        self.skills = tuple(skills)
        self.fixed_skill = fixed_skill
        self.skill_code = skill_code
        self.policy_code = policy_code
        self.success = success
        self.successes: list[float] = []
        self.usage: Counter = Counter()

    def make(self, task: str, seed: int, max_episode_steps: int) -> gym.Env:
        env = EpisodeStats(make_env(task, seed, max_episode_steps, ENV_OBSERVATION_KEYS))
        if self.success is not None:
            env = SuccessWatch(env, self.success, self.successes)
        controller = None
        if self.fixed_skill is None:
            controller = skill_controller(self.skills, self.skill_code, self.policy_code, seed)
        return UsageWatch(SkillEnv(env, self.skills, controller, self.fixed_skill), self.usage)


class SuccessWatch(gym.Wrapper):
    """Appends to `successes`, at each episode's end, 1.0 if the skill feature `feature`
    was true at any of its observations, else 0.0."""

    def __init__(self, env: gym.Env, feature: str, successes: list[float]):
        super().__init__(env)
        self.feature = feature
        self.successes = successes
        self._seen = False

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        self._seen = bool(skill_features(observation)[self.feature])
        return observation, info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._seen = self._seen or bool(skill_features(observation)[self.feature])
        if terminated or truncated:
            self.successes.append(float(self._seen))
        return observation, reward, terminated, truncated, info


class UsageWatch(gym.Wrapper):
    """Adds each finished episode's steps per skill (`SkillEnv`'s info) to `usage`."""

    def __init__(self, env: gym.Env, usage: Counter):
        super().__init__(env)
        self.usage = usage

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            self.usage.update(info.get("episode_skill_steps", {}))
        return observation, reward, terminated, truncated, info
