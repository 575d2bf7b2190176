"""Motif's own parts of its prepare stages (the shared ones: `maestro.feedback.stages`): the
annotation for the run's goal, the stored reward model the trials train on, the probe
rewards of a reward model, eps from a quantile, and the training plot over the trials."""

from __future__ import annotations

import re

import numpy as np

from maestro.envs.nethack import get_task
from maestro.feedback.collect import CaptionCounts, load_caption_counts
from maestro.feedback.preferences import PreferenceStore
from maestro.feedback.reward_model import RewardModel
from maestro.feedback.stages import PREPARED, annotate_captions
from maestro.llm import load_prompt_set
from maestro.methods.motif.config import MotifConfig

# Captions whose rewards show what a reward model was steered towards: by what they say.
PROBES = {
    "gold": re.compile(r"\bgold\b", re.IGNORECASE),
    "stairs": re.compile(r"\bstair", re.IGNORECASE),
    "combat": re.compile(r"\byou (hit|kill|destroy)\b|\bmiss(es)?\b", re.IGNORECASE),
}


def stage_annotate(ctx, captions: CaptionCounts, dataset: str) -> tuple[PreferenceStore, str]:
    """Sample questions and answer the ones not yet in the preference store, judged for
    the run's goal (`goal`, or its task's preference); returns the store and its folder."""
    cfg: MotifConfig = ctx.config
    preference = cfg.goal or get_task(cfg.task).preference
    return annotate_captions(
        ctx, captions, dataset, load_prompt_set(cfg.annotator.prompt), preference
    )


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
