"""Motif's prepare stages (collect, annotate, reward), each given the experiment's context
(`ctx`: config, store, parent MLflow run, progress); the stored reward model the trials
train on; and the training plot over the trials."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from maestro.envs.nethack import get_task
from maestro.llm import PromptSet, load_prompt_set
from maestro.methods.motif.annotation import annotate
from maestro.methods.motif.collect import CaptionCounts, collect, load_caption_counts
from maestro.methods.motif.config import MotifConfig
from maestro.methods.motif.pairs import PairSamplingConfig, pending, sample_pairs
from maestro.methods.motif.preferences import PreferenceStore
from maestro.methods.motif.reward_model import RewardModel
from maestro.methods.motif.reward_training import PairData, train_reward_model
from maestro.methods.motif.train import stored_agent
from maestro.metrics import AnnotationMetrics, RolloutMetrics
from maestro.spec import SpecError

PREPARED = "prepared.json"  # in a run's folder: the store keys its prepare stages made
# Captions whose rewards show what a reward model was steered towards: by what they say.
PROBES = {
    "gold": re.compile(r"\bgold\b", re.IGNORECASE),
    "stairs": re.compile(r"\bstair", re.IGNORECASE),
    "combat": re.compile(r"\byou (hit|kill|destroy)\b|\bmiss(es)?\b", re.IGNORECASE),
}


def stage_collect(ctx) -> tuple[CaptionCounts, str]:
    """Collect (or find) the dataset; returns its caption counts and its folder.
    The folder is keyed by `collect:`, the seed and, for a trained agent's play, the key of
    its checkpoint (a later checkpoint of the same run is a new dataset)."""
    cfg: MotifConfig = ctx.config
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


def stage_annotate(ctx, captions: CaptionCounts, dataset: str) -> tuple[PreferenceStore, str]:
    """Sample questions and answer the ones not yet in the preference store; returns the
    store and its folder, keyed by the dataset, the sampling, the annotator (its model by
    name or path) and the prompt's whole text."""
    cfg: MotifConfig = ctx.config
    prompts = load_prompt_set(cfg.annotator.prompt)
    preference = cfg.goal or get_task(cfg.task).preference
    task_text = prompts.task(preference)
    sample = sample_pairs(
        captions, question_namespace(cfg.pairs, prompts, preference), ctx.spec.seed
    )
    ctx.tracker.log_metrics(sample.stats(), step=0)
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
    return preferences, folder


def question_namespace(
    pairs: PairSamplingConfig, prompts: PromptSet, preference: str
) -> PairSamplingConfig:
    """The sampling config with the prompt set's content digest and the task's preference
    in its namespace: every question id changes when one word of the prompt does."""
    text = json.dumps([pairs.namespace, dataclasses.asdict(prompts), preference], sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return pairs.model_copy(update={"namespace": f"{pairs.namespace}/{preference}/{digest}"})


def stage_reward(ctx, preferences: PreferenceStore, labels: str) -> str:
    """Train the reward model on the preference store at `labels` (or find the stored
    one); returns its key."""
    cfg: MotifConfig = ctx.config
    inputs = {"preferences": labels, "reward": cfg.reward, "seed": ctx.spec.seed}
    key = f"{ctx.stage_key('reward_model', inputs)}/model.pt"
    if ctx.store.exists(key):
        return key
    data = PairData.from_tables(preferences.read(), preferences.read_questions())
    model, metrics = train_reward_model(
        data,
        cfg.reward,
        seed=ctx.spec.seed,
        on_epoch=lambda epoch, m: ctx.tracker.log_metrics(
            {f"reward/{k}": v for k, v in m.items()}, step=epoch
        ),
    )
    ctx.tracker.log_metrics({f"reward/final_{k}": v for k, v in metrics.items()}, step=0)
    log_reward_model(ctx, model)
    ctx.store.put_bytes(key, model.to_bytes())
    return key


def log_reward_model(ctx, model: RewardModel) -> None:
    """The reward model as an MLflow logged model of the run, named `reward_model`: a
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


def stored_reward_model(store, run_folder: str) -> tuple[CaptionCounts, RewardModel]:
    """The dataset's caption counts and the reward model that a Motif run's prepare made
    (named in its `prepared.json`)."""
    where = f"{run_folder.rstrip('/')}/{PREPARED}"
    prepared = store.get_json(where) if store.exists(where) else {}
    if "reward_model" not in prepared:
        raise FileNotFoundError(
            f"reward_model_from: no reward model recorded at {store.uri(where)} (run the "
            "collect, annotate and reward stages there first)"
        )
    captions = load_caption_counts(store, prepared["dataset"])
    return captions, RewardModel.from_bytes(store.get_bytes(prepared["reward_model"]))


def probe_rewards(store, dataset: str, reward_model: str) -> dict[str, float]:
    """`probe/<name>`: the mean normalised reward of the dataset's distinct captions that
    match each of `PROBES` (absent when none match)."""
    captions = load_caption_counts(store, dataset).captions
    model = RewardModel.from_bytes(store.get_bytes(reward_model))
    rewards = model.normalised(captions)
    found = {}
    for name, pattern in PROBES.items():
        matching = [i for i, caption in enumerate(captions) if pattern.search(caption)]
        if matching:
            found[f"probe/{name}"] = float(rewards[matching].mean())
    return found


def intrinsic_threshold(
    cfg: MotifConfig, dataset: CaptionCounts, model: RewardModel
) -> float | None:
    """eps from `intrinsic.threshold_quantile` of the normalised rewards of the dataset's
    distinct captions, or None for the reward model's own threshold."""
    if cfg.intrinsic.threshold_quantile is None:
        return None
    rewards = model.normalised(dataset.captions)
    return float(np.quantile(rewards, cfg.intrinsic.threshold_quantile))


def plot_returns(ctx, results) -> None:
    """Intrinsic and extrinsic return, score and distinct messages per episode against env
    steps, one line per trial read back from its MLflow run (so resumed trials' plots cover
    all of them): the logged values faint, a smoothed line over them."""
    if not ctx.tracker.enabled or not results or "train" not in ctx.config.stages:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maestro.sweep.tracking import find_trial_runs
    from maestro.tracking import plot_noisy, step_axis

    panels = [
        ("train/intrinsic_return", "intrinsic return"),
        ("train/extrinsic_return", "extrinsic return"),
        ("train/score", "score"),
        ("train/distinct_messages", "distinct messages"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    client = ctx.tracker.client
    runs = find_trial_runs(client, ctx.tracker.run_id)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for result in results:
            run = runs.get(result.name)
            if run is None:
                continue
            history = sorted(
                (m.step, m.value) for m in client.get_metric_history(run.tracker.run_id, key)
            )
            if history:
                steps, values = zip(*history, strict=True)
                plot_noisy(ax, steps, values, label=f"{result.arm} seed {result.seed}")
        ax.set_title(title)
        step_axis(ax, "env steps")
        ax.grid(alpha=0.3)
    if len(results) > 1:
        axes[0].legend(fontsize="small")
    fig.tight_layout()
    ctx.save_plot(fig, "training_returns")
    plt.close(fig)
