"""RLlib algorithm configs on the new API stack: APPO (episodes cut into truncated
fragments, v-trace) or PPO on a NetHack task, from the settings a spec gives
(`RLlibConfig`) and the method's own RLModule and learner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from maestro.rl.acting import env_to_module, module_to_env
from maestro.rl.appo import APPO_LOSS_KEY, MaestroAPPOLearner
from maestro.rl.env import ENV_NAME, EpisodeStatsCallback, make_training_env


class RLlibConfig(BaseModel):
    """How an RLlib agent trains and is evaluated: the algorithm, its env runners and
    learners, its hyperparameters, iteration length, checkpoints and evaluation games."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["appo", "ppo"] = "appo"
    appo_loss: Literal["rllib", "sample_factory"] = Field(
        default="rllib",
        description="APPO's loss: RLlib's (target network) or Sample Factory's, the papers' "
        "(`maestro.rl.appo`)",
    )
    env_steps: int = Field(
        default=20_000, ge=0, description="train until this many env steps (0: the initial policy)"
    )
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
    clip_param: float | None = Field(
        default=None, gt=0, description="policy-ratio clip; None: RLlib's (APPO 0.4, PPO 0.3)"
    )
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

    @model_validator(mode="after")
    def _loss_of_its_algorithm(self) -> RLlibConfig:
        if self.algorithm != "appo" and self.appo_loss != "rllib":
            raise ValueError(
                f"appo_loss {self.appo_loss!r} needs algorithm appo; "
                f"with {self.algorithm} set appo_loss: rllib"
            )
        return self


def rllib_config(
    task: str,
    config: RLlibConfig,
    seed: int,
    epoch: int,
    *,
    module_spec: RLModuleSpec,
    learner_class: type | None = None,
    learner_config: dict[str, Any] | None = None,
    env_creator: tuple[str, Callable[[dict[str, Any]], Any]] = (ENV_NAME, make_training_env),
    env_config: dict[str, Any] | None = None,
    callbacks: type = EpisodeStatsCallback,
) -> AlgorithmConfig:
    """RLlib's APPO or PPO config on the new API stack for `task`, acting with
    `module_spec`; `learner_class` (None: `maestro.rl.appo.MaestroAPPOLearner` for APPO,
    RLlib's torch learner for PPO) gets `learner_config` and `config.appo_loss` as its
    `config.learner_config_dict`. `epoch` counts the run's resumes:
    the env runners' games come from (seed, epoch), see `env.make_training_env`.
    `env_creator` (a name and a function of the env config) makes the envs, with
    `env_config` added to the config it gets; `callbacks` sums their episodes' measures."""
    from ray.tune.registry import register_env

    # Registered in Ray's global registry, so env runners in other processes find it.
    env_name, creator = env_creator
    register_env(env_name, creator)
    if config.algorithm == "appo":
        from ray.rllib.algorithms.appo import APPOConfig

        algo = APPOConfig()
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
        algo_training = {
            "lambda_": config.lambda_,
            "minibatch_size": config.minibatch_size or config.train_batch_size,
        }
        epochs = config.num_epochs
    learners: dict[str, Any] = {
        "learner_config_dict": {**(learner_config or {}), APPO_LOSS_KEY: config.appo_loss}
    }
    if learner_class is None and config.algorithm == "appo":
        learner_class = MaestroAPPOLearner
    if learner_class is not None:
        learners["learner_class"] = learner_class
    return (
        algo.api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .framework("torch")
        .environment(
            env=env_name,
            env_config={
                "task": task,
                "max_episode_steps": config.max_episode_steps,
                "seed": seed,
                "epoch": epoch,
                **(env_config or {}),
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
            # Weights pushed to the env runners, not pulled from APPO's state-server actor:
            # that threaded actor aborts with a C++ stack trace whenever an algorithm is
            # stopped while its process lives on (a Tune trial actor reused by the next).
            use_env_runner_state_server=False,
            # RLlib samples on the local env runner while no remote one is healthy (a
            # killed runner being replaced): it needs envs of its own for that.
            create_env_on_local_worker=config.num_env_runners > 0,
            # One connector piece each way instead of RLlib's default pipelines, which
            # took a quarter of the env runner's time (`maestro.rl.acting`).
            env_to_module_connector=env_to_module,
            module_to_env_connector=module_to_env,
            add_default_connectors_to_env_to_module_pipeline=False,
            add_default_connectors_to_module_to_env_pipeline=False,
        )
        # A killed or crashed env runner is replaced (after a second) and training goes
        # on; only a run of failures with no sample in between stops it.
        .fault_tolerance(
            restart_failed_env_runners=True,
            delay_between_env_runner_restarts_s=1.0,
            num_consecutive_env_runner_failures_tolerance=10,
        )
        .learners(
            num_learners=config.num_learners,
            num_gpus_per_learner=config.num_gpus_per_learner,
            **learners,
        )
        .training(
            lr=config.lr,
            gamma=config.gamma,
            train_batch_size_per_learner=config.train_batch_size,
            num_epochs=epochs,
            entropy_coeff=config.entropy_coeff,
            vf_loss_coeff=config.vf_loss_coeff,
            grad_clip=config.grad_clip,
            **({"clip_param": config.clip_param} if config.clip_param is not None else {}),
            **algo_training,
        )
        .rl_module(rl_module_spec=module_spec)
        .callbacks(callbacks)
        .reporting(
            min_time_s_per_iteration=config.min_iteration_seconds,
            min_sample_timesteps_per_iteration=config.min_iteration_env_steps,
        )
        # No Tune CPU/GPU usage monitor: Maestro logs none of it (the dashboards read Ray's
        # node metrics), and without GPUtil it only warns "Install gputil".
        .debugging(seed=seed, log_sys_usage=False)
    )


def learner_module(algo):
    """The learner's current RLModule (env runners may lag behind it under APPO)."""
    module = algo.get_module()
    module.set_state(algo.learner_group.get_weights()["default_policy"])
    return module
