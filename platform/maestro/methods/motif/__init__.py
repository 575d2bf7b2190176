"""Motif: intrinsic reward from a language model's preferences on NetHack.

Klissarov, D'Oro et al., "Motif: Intrinsic Motivation from Artificial Intelligence
Feedback", 2023 (arXiv:2310.00166); what Maestro runs of it: `docs/methods/motif.md`.

An experiment prepares once (stages 1-3, stored under its folder and skipped when already
done), then trains one agent per trial (stage 4: each seed of each arm of `trials:`). The
machinery is shared with MaestroMotif: `maestro.feedback` (modules named below) and
`maestro.rl` (the agent, `training` and `evaluate`).

1. `collect`: rollout actors play NetHack and store captions (message lines) with the
   observation fields needed to reuse the data (`collect`).
2. `annotate`: caption pairs are drawn (uniformly from the dataset, as in Motif), merged
   into distinct questions (a pair and its mirror are one), and answered by the annotator
   pool (`pairs`, `annotation`); answers land batch by batch in the preference store
   (`preferences`).
3. `reward`: a caption reward model (`reward_model`) is trained with the Bradley-Terry
   loss on the valid labels and saved with its normalisation and threshold
   (`reward_training`), and logged to MLflow as a model (`mlflow_model`).
4. `train`, the trial: an RLlib agent (`maestro.rl.agent`; APPO or PPO) plays the task on
   `a1 * r_int + a2 * clip(scale * r_env, -clip, clip)` (`intrinsic`), the intrinsic
   reward computed on the learner (`intrinsic_connector`); its checkpoints are the
   trial's, so a killed experiment continues each agent from its last one; at the end the
   agent is evaluated on fresh games of the task (`maestro.rl.training`,
   `maestro.rl.evaluate`).

The spec's `config:` block is `MotifConfig` (`config.py`); the stages are in
`maestro.feedback.stages` and, Motif's own parts, `stages.py`.

`stages:` in the spec chooses which run (e.g. `jobs/motif/annotate.yaml` stops after 2).
With `reward_model_from:` (a finished run's folder) only `train` runs, on that run's reward
model and dataset: how a sweep (`jobs/motif/sweep.yaml`) varies the agent and the reward's
coefficients without annotating again, and how every task trains on one reward model. With
`stages: [train]` alone the agent trains on the env reward (`jobs/motif/score_agent.yaml`:
the agent whose checkpoints collect the paper's dataset, `collect.policy: checkpoint`).

Without `train`, the reward model is what the experiment learns: `prepare` makes one per
arm and seed (their stages shared where the inputs agree) and each trial measures its own
on the dataset's captions (`probe/*`, `stages.probe_rewards`), so claims compare reward
models over seeds (`jobs/motif/steering.yaml`: annotated towards different goals).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import maestro.rl  # noqa: F401  (first: settles Ray's auth mode before RLlib is imported)
from maestro.feedback.stages import PREPARED, stage_collect, stage_reward
from maestro.methods import Method
from maestro.methods.motif.config import MotifConfig
from maestro.methods.motif.stages import (
    PROBES,
    intrinsic_threshold,
    plot_returns,
    probe_rewards,
    stage_annotate,
    stored_reward_model,
)
from maestro.rl.training import train_agent, trial_resources
from maestro.spec import build_spec, trial_data


def prepare(ctx) -> dict[str, Any]:
    """The stages before training, in order, each in a folder keyed by its inputs; returns
    (and records in the run's `prepared.json`) where the dataset and the reward model
    are, and the folder whose reward model the trials train on (`source`; None: the env
    reward alone). With `reward_model_from`, nothing runs: the trials train on that run's.
    Without `train`, the stages run for each arm and seed (`reward_models`, by trial
    coordinates); `prepared.json` names the first arm's first seed's."""
    cfg: MotifConfig = ctx.config
    if cfg.reward_model_from is not None:
        stored_reward_model(ctx.store, cfg.reward_model_from)  # fails here, not in every trial
        return {"source": cfg.reward_model_from}
    if "train" not in cfg.stages:
        made = {
            coordinates(arm, seed): prepare_stages(dataclasses.replace(ctx, spec=spec))
            for arm, seed, spec in arm_seed_specs(ctx.spec)
        }
        ctx.store.put_json(ctx.key(PREPARED), next(iter(made.values())))
        return {"reward_models": made}
    made = prepare_stages(ctx)
    ctx.store.put_json(ctx.key(PREPARED), made)
    return {"source": ctx.prefix if "reward_model" in made else None}


def coordinates(arm: str, seed: int) -> str:
    return f"{arm}/seed{seed}"


def arm_seed_specs(spec) -> list[tuple[str, int, Any]]:
    """(arm, seed, the spec of that arm and seed) for every trial of `spec`; each keeps the
    experiment's run name (its stages' metrics are the experiment's)."""
    resolved = spec.resolved()
    resolved["tracking"]["run_name"] = spec.run_name()
    return [
        (
            arm,
            seed,
            build_spec(
                trial_data(resolved, {"arm": arm, "seed": seed}), spec.source, arm_applied=True
            ),
        )
        for arm in spec.arm_names()
        for seed in spec.seeds()
    ]


def prepare_stages(ctx) -> dict[str, str]:
    """Collect, annotate and train the reward model as far as `stages` asks; returns the
    store keys made (`dataset`, `preferences`, `reward_model`)."""
    cfg: MotifConfig = ctx.config
    made = {}
    if set(cfg.stages) & {"collect", "annotate", "reward"}:
        captions, made["dataset"] = stage_collect(ctx)
        ctx.tracker.log_metrics({"dataset/unique_captions": len(captions.captions)}, step=0)
        if "annotate" in cfg.stages:
            preferences, labels = stage_annotate(ctx, captions, made["dataset"])
            made["preferences"] = labels
            if "reward" in cfg.stages:
                made["reward_model"] = stage_reward(ctx, preferences, labels)
    return made


def trial(ctx) -> dict[str, float]:
    """Train an agent on the prepared reward model, or on the env reward when there is
    none (continuing from the trial's last checkpoint), evaluate it; returns env steps and
    the evaluation figures. Without `train`: the probe rewards of the trial's own reward
    model."""
    cfg: MotifConfig = ctx.config
    if "train" not in cfg.stages:
        made = ctx.prepared["reward_models"][coordinates(ctx.arm, ctx.seed)]
        if "reward_model" not in made:
            return {}
        return probe_rewards(ctx.store, made["dataset"], made["reward_model"])
    dataset, model = None, None
    if ctx.prepared["source"] is not None:
        dataset, model = stored_reward_model(ctx.store, ctx.prepared["source"])
    result = train_agent(
        cfg.task,
        cfg.train,
        trial=ctx,
        seed=ctx.seed,
        run_name=f"{ctx.experiment}/{ctx.name}",
        reward_model=model,
        intrinsic=cfg.intrinsic,
        threshold=intrinsic_threshold(cfg, dataset, model) if model else None,
    )
    return {"env_steps": result.env_steps, **result.eval}


METHOD = Method(
    name="motif",
    config=MotifConfig,
    trial=trial,
    metrics=(
        "env_steps",
        "eval/score",
        "eval/depth",
        "eval/distinct_messages",
        "eval/extrinsic_return",
        "eval/success_rate",
        "eval_random/score",
        "eval_random/depth",
        "eval_random/distinct_messages",
        "eval_random/extrinsic_return",
        "eval_random/success_rate",
        *(f"probe/{name}" for name in PROBES),
    ),
    step="env steps",
    prepare=prepare,
    aggregate=plot_returns,
    resources=trial_resources,
)
