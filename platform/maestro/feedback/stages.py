"""Stages shared by the methods that learn rewards from language-model feedback on NetHack
(Motif, MaestroMotif), each given the experiment's context (`ctx`: config, store, parent
MLflow run, progress): collect the dataset, annotate caption pairs for a task of a prompt
set, train a reward model on the answers and log it to MLflow. Each reads its settings
from `ctx.config`'s blocks of the same names (`collect`, `pairs`, `annotator`,
`annotation`, `reward`) and stores its work in a folder keyed by its inputs
(`ctx.stage_key`), where a rerun finds it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from maestro.feedback.annotation import annotate
from maestro.feedback.collect import CaptionCounts, collect, load_caption_counts
from maestro.feedback.pairs import PairSamplingConfig, pending, sample_pairs
from maestro.feedback.preferences import PreferenceStore
from maestro.feedback.reward_model import RewardModel
from maestro.feedback.reward_training import PairData, train_reward_model
from maestro.llm import PromptSet
from maestro.metrics import AnnotationMetrics, RolloutMetrics
from maestro.rl.training import stored_agent
from maestro.spec import SpecError

PREPARED = "prepared.json"  # in a run's folder: the store keys its prepare stages made


def stage_collect(ctx) -> tuple[CaptionCounts, str]:
    """Collect (or find) the dataset; returns its caption counts and its folder.
    The folder is keyed by `collect:`, the seed and, for a trained agent's play, the key of
    its checkpoint (a later checkpoint of the same run is a new dataset)."""
    cfg = ctx.config
    inputs = {"collect": cfg.collect, "seed": ctx.spec.seed}
    if cfg.collect.policy == "checkpoint":
        try:
            inputs["agent"] = stored_agent(ctx.store, cfg.collect.checkpoint)
        except FileNotFoundError as exc:
            raise SpecError(f"{ctx.spec.source}: config.collect.checkpoint: {exc}") from None
    prefix = ctx.stage_key("dataset", inputs)
    rollouts = RolloutMetrics(ctx.spec.run_name(), cfg.collect.task)
    result = collect(
        ctx.store,
        prefix,
        cfg.collect,
        ctx.spec.seed,
        progress=ctx.progress,
        on_shard=lambda shard: rollouts.record(env_steps=shard.env_steps, episodes=shard.episodes),
    )
    ctx.tracker.log_metrics(result.metrics(), step=0)
    return load_caption_counts(ctx.store, prefix), prefix


def annotate_captions(
    ctx,
    captions: CaptionCounts,
    dataset: str,
    prompts: PromptSet,
    preference: str,
    scope: str = "",
    pool: list | None = None,
) -> tuple[PreferenceStore, str]:
    """Sample questions from `captions` and answer, for the task `preference` of `prompts`,
    the ones not yet in the preference store, with `ctx.config`'s `pairs`, `annotator` and
    `annotation` blocks; returns the store and its folder, keyed by the dataset, the
    sampling, the annotator (its model by name or path) and the prompt's whole text.
    Metrics go under `annotation/<scope>/` (MaestroMotif: one scope per skill); `pool`:
    annotators kept between calls (`annotation.annotate`)."""
    cfg = ctx.config
    task_text = prompts.task(preference)
    sample = sample_pairs(
        captions, question_namespace(cfg.pairs, prompts, preference), ctx.spec.seed
    )
    ctx.tracker.log_metrics(scoped(sample.stats(), scope), step=0)
    inputs = {
        "dataset": dataset,
        "pairs": cfg.pairs,
        "seed": ctx.spec.seed,
        "annotator": cfg.annotator,
        "prompt": dataclasses.asdict(prompts),
        "goal": preference,
    }
    folder = ctx.stage_key("preferences", inputs)
    preferences = PreferenceStore(ctx.store, folder)
    preferences.write_questions(sample.questions)
    result = annotate(
        pending(sample.questions, ()),
        task_text,
        preferences,
        cfg.annotator,
        cfg.annotation,
        progress=ctx.progress,
        on_progress=lambda metrics, pairs: ctx.tracker.log_metrics(
            scoped(metrics, scope), step=pairs
        ),
        metrics=AnnotationMetrics(ctx.spec.run_name(), cfg.annotator.backend),
        pool=pool,
    )
    counts = preferences.counts()
    ctx.tracker.log_metrics(
        scoped(
            {
                "annotation/pairs_labelled": counts["valid"],
                "annotation/invalid": counts["invalid"],
                "annotation/invalid_rate": counts["invalid"] / max(counts["records"], 1),
                "annotation/ties": counts["ties"],
            },
            scope,
        ),
        step=counts["records"],
        flush=True,
    )
    if result.examples:
        ctx.tracker.log_dict(result.examples, f"{scoped_name('annotation', scope)}/examples.json")
    return preferences, folder


def scoped_name(name: str, scope: str) -> str:
    """`annotation/x` in scope `s` is `annotation/s/x`; no scope leaves it as it is."""
    if not scope:
        return name
    head, _, tail = name.partition("/")
    return "/".join(part for part in (head, scope, tail) if part)


def scoped(metrics: dict[str, float], scope: str) -> dict[str, float]:
    return {scoped_name(key, scope): value for key, value in metrics.items()}


def question_namespace(
    pairs: PairSamplingConfig, prompts: PromptSet, preference: str
) -> PairSamplingConfig:
    """The sampling config with the prompt set's content digest and the task's preference
    in its namespace: every question id changes when one word of the prompt does."""
    text = json.dumps([pairs.namespace, dataclasses.asdict(prompts), preference], sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return pairs.model_copy(update={"namespace": f"{pairs.namespace}/{preference}/{digest}"})


def stage_reward(
    ctx,
    preferences: PreferenceStore,
    labels: str,
    scope: str = "",
    model_input: Callable[[list[str]], list[str]] | None = None,
) -> str:
    """Train the reward model with `ctx.config.reward` on the preference store at `labels`
    (or find the stored one); returns its key. `model_input` maps the annotated captions
    to what the model reads (MaestroMotif: the message and the level change); metrics go
    under `reward/<scope>/` and the MLflow model is `reward_model` or `reward_model_<scope>`."""
    cfg = ctx.config
    inputs = {"preferences": labels, "reward": cfg.reward, "seed": ctx.spec.seed}
    if scope:  # (only then: Motif's stored reward models keep their keys)
        inputs["scope"] = scope
    key = f"{ctx.stage_key('reward_model', inputs)}/model.pt"
    if ctx.store.exists(key):
        return key
    data = PairData.from_tables(preferences.read(), preferences.read_questions())
    if model_input is not None:
        data = dataclasses.replace(
            data, caption_1=model_input(data.caption_1), caption_2=model_input(data.caption_2)
        )
    model, metrics = train_reward_model(
        data,
        cfg.reward,
        seed=ctx.spec.seed,
        on_epoch=lambda epoch, m: ctx.tracker.log_metrics(
            scoped({f"reward/{k}": v for k, v in m.items()}, scope), step=epoch
        ),
    )
    ctx.tracker.log_metrics(
        scoped({f"reward/final_{k}": v for k, v in metrics.items()}, scope), step=0
    )
    log_reward_model(ctx, model, name=f"reward_model_{scope}" if scope else "reward_model")
    ctx.store.put_bytes(key, model.to_bytes())
    return key


def log_reward_model(ctx, model: RewardModel, name: str = "reward_model") -> None:
    """The reward model as an MLflow logged model of the run, called `name`: a
    pyfunc model from code (`mlflow_model.py`, beside this file) around the
    `RewardModel.to_bytes` file, so nothing is pickled; `predict(captions)` gives normalised
    rewards. Its sizes, normalisation and threshold are model metadata."""
    if not ctx.tracker.enabled:
        return
    import tempfile

    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    from maestro.tracking import package_versions

    # Through the run's own client, not MLflow's fluent API: that would follow MLflow's
    # default tracking URI and end the run on leaving `start_run`.
    client, run_id = ctx.tracker.client, ctx.tracker.run_id
    logged = client.create_logged_model(
        client.get_run(run_id).info.experiment_id,
        name=name,
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
            python_model=str(Path(__file__).with_name("mlflow_model.py")),
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
