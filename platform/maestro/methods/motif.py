"""Motif: intrinsic reward from a language model's preferences on NetHack.

Klissarov, D'Oro et al., "Motif: Intrinsic Motivation from Artificial Intelligence
Feedback", 2023 (arXiv:2310.00166); what Maestro runs of it: `docs/methods/motif.md`.

The pipeline's stages, each stored under the run's folder and skipped when already done:

1. `collect`: rollout actors play NetHack and store captions (message lines) with the
   observation fields needed to reuse the data (`annotation/collect.py`).
2. `annotate`: caption pairs are drawn (uniformly from the dataset, as in Motif), merged
   into distinct questions (a pair and its mirror are one), and answered by the annotator
   pool; answers land batch by batch in the preference store (`annotation/`).
3. `reward`: a caption reward model is trained with the Bradley-Terry loss on the valid
   labels and saved with its normalisation and threshold (`reward/`).
4. `train`: an RLlib agent (APPO or PPO) plays the task on `a1 * r_int + a2 * r_ext`, the
   intrinsic reward computed on the learner (`rl/`); checkpoints go to the store and a
   killed run continues from the last one; at the end the agent is evaluated on fresh
   games of the task.

`stages:` in the spec chooses which run (e.g. `jobs/motif/annotate.yaml` stops after 2).
With `reward_model_from:` (a finished run's folder) only `train` runs, on that run's reward
model and dataset: how a sweep (`trainable`, `jobs/motif/sweep.yaml`) varies the agent and
the reward's coefficients without annotating again.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from maestro.annotation.collect import CollectConfig, collect, load_captions
from maestro.annotation.pairs import PairSamplingConfig, sample_pairs
from maestro.annotation.preferences import PreferenceStore
from maestro.annotation.service import AnnotationServiceConfig, annotate
from maestro.envs.nethack import get_task
from maestro.llm import AnnotatorConfig, load_prompt_set
from maestro.methods import Method
from maestro.metrics import AnnotationMetrics, RolloutMetrics
from maestro.reward.intrinsic import IntrinsicRewardConfig
from maestro.reward.model import RewardModel
from maestro.reward.train import PairData, RewardTrainingConfig, train_reward_model
from maestro.rl.train import TrainingConfig, TrainingResult, train_agent

Stage = Literal["collect", "annotate", "reward", "train"]
STAGES: tuple[str, ...] = ("collect", "annotate", "reward", "train")


# ---------------------------------------------------------------- config


class MotifConfig(BaseModel):
    """The spec's `config:` block for Motif."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(default="score", description="the NetHack task (envs/nethack.py TASKS)")
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES), min_length=1)
    collect: CollectConfig = Field(default_factory=CollectConfig)
    pairs: PairSamplingConfig = Field(default_factory=PairSamplingConfig)
    annotator: AnnotatorConfig = Field(default_factory=AnnotatorConfig)
    annotation: AnnotationServiceConfig = Field(default_factory=AnnotationServiceConfig)
    reward: RewardTrainingConfig = Field(default_factory=RewardTrainingConfig)
    intrinsic: IntrinsicRewardConfig = Field(default_factory=IntrinsicRewardConfig)
    train: TrainingConfig = Field(default_factory=TrainingConfig)
    reward_model_from: str | None = Field(
        default=None,
        description="a finished Motif run's folder in the store (runs/motif/<name>): train on "
        "its reward model and dataset (stages: [train])",
    )

    @model_validator(mode="before")
    @classmethod
    def _collect_on_the_task(cls, data: dict) -> dict:
        """The dataset is collected on the run's task unless `collect.task` says otherwise."""
        if isinstance(data, dict) and isinstance(data.get("collect", {}), dict):
            collect_block = dict(data.get("collect") or {})
            collect_block.setdefault("task", data.get("task", "score"))
            data = {**data, "collect": collect_block}
        return data

    @model_validator(mode="after")
    def _check(self) -> MotifConfig:
        get_task(self.task)
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise ValueError(f"stages must be distinct and in the order {', '.join(STAGES)}")
        if self.reward_model_from is not None and self.stages != ["train"]:
            raise ValueError(
                "reward_model_from trains on a stored reward model: set stages: [train]"
            )
        return self


# ---------------------------------------------------------------- stages


def stage_collect(ctx) -> list[str]:
    """Collect (or find) the dataset; returns its captions in row order."""
    cfg: MotifConfig = ctx.config
    prefix = ctx.key("dataset")
    rollouts = RolloutMetrics(ctx.spec.run_name(), cfg.collect.task)
    result = collect(
        ctx.store,
        prefix,
        cfg.collect,
        ctx.spec.seed,
        progress=ctx.progress,
        on_shard=lambda shard: rollouts.record(env_steps=shard.rows, episodes=shard.episodes),
    )
    ctx.tracker.log_metrics(result.metrics(), step=0)
    return load_captions(ctx.store, prefix)


def stage_annotate(ctx, captions: list[str]) -> PreferenceStore:
    """Sample questions and answer the ones not yet in the preference store."""
    cfg: MotifConfig = ctx.config
    sample = sample_pairs(captions, cfg.pairs, ctx.spec.seed)
    ctx.tracker.log_metrics(sample.stats(), step=0)
    task_text = load_prompt_set(cfg.annotator.prompt).task(get_task(cfg.task).preference)
    preferences = PreferenceStore(ctx.store, ctx.key("preferences"))
    result = annotate(
        sample.questions,
        task_text,
        preferences,
        cfg.annotator,
        cfg.annotation,
        progress=ctx.progress,
        on_progress=lambda metrics, pairs: ctx.tracker.log_metrics(metrics, step=pairs),
        metrics=AnnotationMetrics(ctx.spec.run_name(), cfg.annotator.backend),
    )
    counts = preferences.counts()
    ctx.tracker.log_metrics(
        {
            "annotation/pairs_labelled": counts["valid"],
            "annotation/invalid": counts["invalid"],
            "annotation/invalid_rate": counts["invalid"] / max(counts["records"], 1),
            "annotation/ties": counts["ties"],
        },
        step=counts["records"],
        flush=True,
    )
    if result.examples:
        ctx.tracker.log_dict(result.examples, "annotation/examples.json")
    return preferences


def stage_reward(ctx, captions: list[str], preferences: PreferenceStore) -> RewardModel:
    """Train the reward model (or load the stored one)."""
    cfg: MotifConfig = ctx.config
    key = ctx.key("reward_model", "model.pt")
    if ctx.store.exists(key):
        return RewardModel.from_bytes(ctx.store.get_bytes(key))
    data = PairData.from_table(preferences.read())
    model, metrics = train_reward_model(
        data,
        captions,
        cfg.reward,
        seed=ctx.spec.seed,
        on_epoch=lambda epoch, m: ctx.tracker.log_metrics(
            {f"reward/{k}": v for k, v in m.items()}, step=epoch
        ),
    )
    ctx.tracker.log_metrics({f"reward/final_{k}": v for k, v in metrics.items()}, step=0)
    log_reward_model(ctx, model)
    ctx.store.put_bytes(key, model.to_bytes())
    return model


def log_reward_model(ctx, model: RewardModel) -> None:
    """The reward model as an MLflow logged model of the run, named `reward_model`: a
    pyfunc model from code (`reward/mlflow_model.py`) around the `RewardModel.to_bytes`
    file, so nothing is pickled; `predict(captions)` gives normalised rewards. Its sizes,
    normalisation and threshold are model metadata."""
    if not ctx.tracker.enabled:
        return
    import tempfile
    from pathlib import Path

    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    import maestro.reward
    from maestro.tracking import package_versions

    # Through the run's own client, not MLflow's fluent API: that would follow MLflow's
    # default tracking URI and end the run on leaving `start_run`.
    client, run_id = ctx.tracker.client, ctx.tracker.run_id
    logged = client.create_logged_model(
        client.get_run(run_id).info.experiment_id,
        name="reward_model",
        source_run_id=run_id,
        model_type="reward model",
    )
    versions = package_versions()
    # Unpinned where Maestro runs from source (a Ray job's py_modules): no version known.
    maestro_rl = (
        f"maestro-rl=={versions['maestro-rl']}" if "maestro-rl" in versions else "maestro-rl"
    )
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.pt"
        weights.write_bytes(model.to_bytes())
        path = Path(tmp) / "reward_model"
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(Path(maestro.reward.__file__).with_name("mlflow_model.py")),
            artifacts={"reward_model": str(weights)},
            mlflow_model=Model(
                artifact_path=logged.artifact_location,
                run_id=run_id,
                model_uuid=logged.model_id,
                model_id=logged.model_id,
            ),
            metadata={"normalisation": json.loads(model.describe())},
            pip_requirements=[f"torch=={versions['torch'].split('+')[0]}", maestro_rl],
        )
        client.log_model_artifacts(logged.model_id, str(path))
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    client.finalize_logged_model(logged.model_id, "READY")


def stored_reward_model(store, run_folder: str) -> tuple[list[str], RewardModel]:
    """The dataset captions and reward model of a finished Motif run."""
    key = f"{run_folder.rstrip('/')}/reward_model/model.pt"
    if not store.exists(key):
        raise FileNotFoundError(
            f"reward_model_from: no reward model at {store.uri(key)} (run the collect, annotate "
            "and reward stages there first)"
        )
    captions = load_captions(store, f"{run_folder.rstrip('/')}/dataset")
    return captions, RewardModel.from_bytes(store.get_bytes(key))


def intrinsic_threshold(cfg: MotifConfig, captions: list[str], model: RewardModel) -> float | None:
    """eps from `intrinsic.threshold_quantile` of the dataset's normalised rewards, or None
    for the reward model's own threshold."""
    if cfg.intrinsic.threshold_quantile is None:
        return None
    return float(np.quantile(model.normalised(captions), cfg.intrinsic.threshold_quantile))


def stage_train(ctx, captions: list[str], model: RewardModel) -> TrainingResult:
    """Train the agent on the combined reward (continuing from a stored checkpoint), then
    evaluate it; the learning curves go to MLflow as a plot."""
    cfg: MotifConfig = ctx.config
    result = train_agent(
        cfg.task,
        cfg.train,
        tracker=ctx.tracker,
        store=ctx.store,
        prefix=ctx.key("agent"),
        seed=ctx.spec.seed,
        run_name=ctx.spec.run_name(),
        reward_model=model,
        intrinsic=cfg.intrinsic,
        threshold=intrinsic_threshold(cfg, captions, model),
        progress=ctx.progress,
    )
    plot_returns(ctx)
    return result


def plot_returns(ctx) -> None:
    """Intrinsic and extrinsic return, score and distinct messages per episode against env
    steps, read back from the run (so a resumed run's plot covers all of it): the logged
    values faint, a smoothed line over them."""
    if not ctx.tracker.enabled:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maestro.tracking import plot_noisy, step_axis

    panels = [
        ("train/intrinsic_return", "intrinsic return"),
        ("train/extrinsic_return", "extrinsic return"),
        ("train/score", "score"),
        ("train/distinct_messages", "distinct messages"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    client, run_id = ctx.tracker.client, ctx.tracker.run_id
    for ax, (key, title) in zip(axes, panels, strict=True):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        if history:
            steps, values = zip(*history, strict=True)
            plot_noisy(ax, steps, values)
        ax.set_title(title)
        step_axis(ax, "env steps")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    ctx.tracker.log_figure(fig, "training_returns")
    plt.close(fig)


# ---------------------------------------------------------------- pipeline


def pipeline(ctx) -> dict[str, float]:
    """Run the configured stages in order; return the summary metrics."""
    cfg: MotifConfig = ctx.config
    if cfg.reward_model_from is not None:
        captions, model = stored_reward_model(ctx.store, cfg.reward_model_from)
        return train_summary(stage_train(ctx, captions, model))
    captions = stage_collect(ctx)
    summary: dict[str, float] = {"unique_captions": len(set(captions))}
    if "annotate" not in cfg.stages:
        return summary
    preferences = stage_annotate(ctx, captions)
    counts = preferences.counts()
    summary["pairs_labelled"] = counts["valid"]
    summary["invalid_rate"] = counts["invalid"] / max(counts["records"], 1)
    if "reward" not in cfg.stages:
        return summary
    model = stage_reward(ctx, captions, preferences)
    if "train" not in cfg.stages:
        return summary
    summary.update(train_summary(stage_train(ctx, captions, model)))
    return summary


def train_summary(result: TrainingResult) -> dict[str, float]:
    """Env steps trained and the evaluation figures, as summary metrics."""
    return {
        "env_steps": result.env_steps,
        **{k.replace("/", "_"): v for k, v in result.eval.items()},
    }


# ---------------------------------------------------------------- sweeps


class TuneReporter:
    """What `train_agent` logs, reported to Tune instead of MLflow (the sweep's callback
    writes each trial's results to its MLflow child run). Tune wants the sweep's metric in
    every report, so each report carries the latest value of every metric so far, and none
    is sent before the sweep's metric has a value (use a training metric such as
    `train/score` for schedulers: `eval/*` comes only at the end)."""

    def __init__(self, metric: str):
        self.metric = metric
        self.latest: dict[str, float] = {}

    def log_metrics(self, metrics: dict[str, float], step: int, flush: bool = False) -> None:
        from ray import tune

        self.latest.update(metrics, env_steps=step)
        if self.metric in self.latest:
            tune.report(dict(self.latest))

    def flush(self) -> None:
        """Nothing is buffered that a report could send."""


def trainable(config: dict) -> None:
    """Tune trial: train an agent on the reward model of `config.reward_model_from` with
    the trial's settings (coefficients, beta, threshold, agent, learning rate), reporting
    every training iteration and the evaluation. A restarted trial continues from its
    checkpoint in the store (`sweeps/motif/<sweep>/trials/<trial>/agent`)."""
    from ray import tune

    from maestro.store import open_store

    cfg = MotifConfig.model_validate(config["config"])
    if cfg.reward_model_from is None:
        raise ValueError("a Motif sweep trains on a stored reward model: set reward_model_from")
    store = open_store((config.get("store") or {}).get("uri"))
    captions, model = stored_reward_model(store, cfg.reward_model_from)
    trial = tune.get_context().get_trial_name()
    train_agent(
        cfg.task,
        cfg.train,
        tracker=TuneReporter(config["sweep"]["metric"]),
        store=store,
        prefix=f"{config['sweep']['prefix']}/trials/{trial}/agent",
        seed=int(config.get("seed", 0)),
        run_name=trial,
        reward_model=model,
        intrinsic=cfg.intrinsic,
        threshold=intrinsic_threshold(cfg, captions, model),
    )


METHOD = Method(
    name="motif",
    config=MotifConfig,
    pipeline=pipeline,
    trainable=trainable,
)
