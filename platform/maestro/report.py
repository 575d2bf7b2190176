"""Plots and one self-contained HTML page from MLflow runs: a run, a sweep or an experiment.

- A sweep (its parent run): learning curves of the sweep's metric, mean and 95% band over
  seeds for each setting of the other hyperparameters (the swept values, and the arm where
  the spec has several); the final metric against each hyperparameter; parallel
  coordinates of every trial; and the best setting of each value of one categorical
  hyperparameter (the arm, method or algorithm), compared.
- An experiment: the same curves and comparison, grouped by method (or `--compare`).
- A run (a `maestro run` experiment's parent run, or one trial's run): the reproduction
  table of the paper claims it checked (`maestro.claims`), and each metric family's
  curves; `<family>_band/<key>` metrics are drawn as bands around `<family>/<key>` (how a
  run's `aggregate` logs a mean and its confidence over seeds).

Each figure is a PNG logged to MLflow under `report/` (on the sweep's parent, the run, or
a `report` run in the experiment) beside `report/index.html`; the same page is written
locally with its images inline (base64), so it opens anywhere with no server.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maestro.claims import ClaimResult
from maestro.sweep.tracking import search_runs
from maestro.tracking import (
    Tracker,
    ensure_experiment,
    figure_png,
    plot_noisy,
    redact_uri,
    step_axis,
    tracking_uri,
)

MAX_CURVES = 10  # settings drawn in a curve plot: more lines are unreadable
MAX_TABLE_ROWS = 20  # runs listed in the table, the best first
FETCH_THREADS = 8  # concurrent metric-history requests
# Counters that Tune adds to every trial: not worth a plot of their own.
BOOKKEEPING_METRICS = ("training_iteration", "time_total_s")


class ReportError(ValueError):
    """The report cannot be made as asked (no such run, no runs with the metric)."""


@dataclass
class RunData:
    """What a report needs of one MLflow run."""

    run_id: str
    name: str
    status: str
    params: dict[str, Any]
    tags: dict[str, str]
    metrics: dict[str, float]
    curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        """How the run ended: a trial's outcome tag, else its MLflow status."""
        return self.tags.get("maestro.trial.outcome", self.status.lower())

    def setting(self, keys: Iterable[str]) -> tuple:
        """The run's values for `keys`, hashable, for grouping."""
        return tuple(json.dumps(self.params.get(key), sort_keys=True) for key in keys)


@dataclass
class Figure:
    """One plot of the report."""

    name: str
    title: str
    caption: str
    png: bytes


@dataclass
class Report:
    """Figures and tables, ready to be written as HTML and logged."""

    title: str
    kind: str
    figures: list[Figure]
    summary: list[tuple[str, str]]
    table_head: list[str]
    table_rows: list[list[str]]
    log_run_id: str | None = None  # None: an experiment report gets a run of its own
    table_note: str = ""  # e.g. that the table shows only the best runs
    claims: list[ClaimResult] = field(default_factory=list)  # the reproduction table


# ---------------------------------------------------------------- reading MLflow


def client() -> Any:
    """An MLflow client on the tracking URI in force."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri())


def run_data(run: Any) -> RunData:
    """A `RunData` from an MLflow run; a trial's coordinates (arm, seed, swept values) come
    from its exact tag, `maestro.trial.params`."""
    params = {}
    for key, text in run.data.params.items():
        try:
            params[key] = json.loads(text)  # `0.1` -> 0.1, `["a"]` -> ["a"]
        except ValueError:
            params[key] = text
    params.update(json.loads(run.data.tags.get("maestro.trial.params", "{}")))
    return RunData(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id,
        status=run.info.status,
        params=params,
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
    )


def load_curves(mlflow: Any, runs: list[RunData], metric: str) -> None:
    """Fill each run's `curve` with the metric's history (requests in parallel)."""

    def history(run: RunData) -> list[tuple[int, float]]:
        return Tracker(mlflow, run.run_id).metric_history(metric)

    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        for run, curve in zip(runs, pool.map(history, runs), strict=True):
            run.curve = curve


# ---------------------------------------------------------------- statistics and labels


def mean_band(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, half-width of the 95% normal confidence interval, and the count."""
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(data) == 0:
        return math.nan, math.nan, 0
    half = 1.96 * data.std(ddof=1) / math.sqrt(len(data)) if len(data) > 1 else 0.0
    return float(data.mean()), float(half), len(data)


def aggregate_curves(curves: list[list[tuple[int, float]]]) -> tuple[np.ndarray, ...]:
    """Steps, mean, band half-width and count over runs on a common step grid (every step
    any run logged): each run's curve is interpolated linearly between its own logged
    steps, and counts from its first to its last step (a run stopped early counts until it
    stopped)."""
    grid = np.array(sorted({step for curve in curves for step, _ in curve}), dtype=float)
    on_grid = []
    for curve in curves:
        steps, values = np.array(sorted(curve), dtype=float).T
        row = np.interp(grid, steps, values)
        row[(grid < steps[0]) | (grid > steps[-1])] = np.nan
        on_grid.append(row)
    stats = [mean_band(column[~np.isnan(column)]) for column in np.array(on_grid).T]
    mean, half, count = (np.array(column) for column in zip(*stats, strict=True))
    return grid, mean, half, count


def reached(runs: Iterable[RunData]) -> float:
    """The step the runs all reached (their curves' last steps; 0 without curves)."""
    return min((run.curve[-1][0] if run.curve else 0 for run in runs), default=0)


def rank_by_progress(items: list[tuple[Any, float, float]], mode: str) -> list[Any]:
    """(item, step reached, score) best first by a scheduler's rule: an item that went
    further first (a scheduler stopped the others at a lower rung, and a stopped trial's
    metric, cumulative regret say, is not comparable with a finished one's); among those
    that reached the same step, by the score there (NaN last)."""
    sign = -1.0 if mode == "max" else 1.0
    ordered = sorted(items, key=lambda i: (-i[1], math.isnan(i[2]), sign * i[2]))
    return [item for item, _, _ in ordered]


def best_first(items: list[tuple[Any, float]], mode: str) -> list[tuple[Any, float]]:
    """(item, score) pairs sorted best first by their score (NaN last)."""
    return rank_by_progress([((item, score), 0, score) for item, score in items], mode)


def short_key(key: str) -> str:
    """`config.exploration` -> `exploration`."""
    return key.removeprefix("config.")


def show(value: Any) -> str:
    """A value as a short label (`["ucb1"]` -> `ucb1`, 0.30000001 -> 0.3)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(show(v) for v in value)
    return str(value)


def setting_label(keys: list[str], run: RunData) -> str:
    """`algorithm=ucb1, exploration=0.3`."""
    return ", ".join(f"{short_key(k)}={show(run.params.get(k))}" for k in keys) or "all runs"


def is_numeric(values: list[Any]) -> bool:
    """Whether every value is a number (booleans are categories)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def categories(values: list[Any]) -> tuple[np.ndarray, list[str]]:
    """Categorical values as codes 0..n-1 into their sorted labels."""
    labels = sorted({show(v) for v in values})
    return np.array([labels.index(show(v)) for v in values], dtype=float), labels


def use_log_scale(key: str, values: np.ndarray, space: dict[str, Any]) -> bool:
    """Log axis for loguniform dimensions, and for positive values spanning 2+ decades."""
    if "loguniform" in space.get(key, {}):
        return True
    return len(values) > 1 and values.min() > 0 and values.max() / values.min() >= 100


def slug(text: str) -> str:
    """A file-name-safe version of `text`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "report"


# ---------------------------------------------------------------- figures


def pyplot() -> Any:
    """matplotlib's pyplot, drawing off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def render(figure: Any) -> bytes:
    """PNG bytes of a figure, which is then closed."""
    data = figure_png(figure)
    pyplot().close(figure)
    return data


def plot_band(axis: Any, curves: list[list[tuple[int, float]]], colour: Any, label: str) -> None:
    """The mean of `curves` with its 95% band."""
    steps, mean, half, _ = aggregate_curves(curves)
    axis.plot(steps, mean, label=label, color=colour)
    axis.fill_between(steps, mean - half, mean + half, color=colour, alpha=0.18)


def curves_figure(
    groups: dict[str, list[RunData]], metric: str, mode: str, seeds_word: str, x_label: str
) -> Figure:
    """Mean and 95% band of the metric's curve for each group, the best groups."""
    plt = pyplot()
    finals = [
        (label, reached(runs), mean_band(run.curve[-1][1] for run in runs if run.curve)[0])
        for label, runs in groups.items()
    ]
    shown = rank_by_progress(finals, mode)[:MAX_CURVES]
    figure, axis = plt.subplots(figsize=(8, 4.8))
    for index, label in enumerate(shown):
        curves = [run.curve for run in groups[label] if run.curve]
        plot_band(axis, curves, plt.get_cmap("tab10")(index % 10), f"{label} (n={len(curves)})")
    step_axis(axis, x_label)
    axis.set_ylabel(metric)
    cut = f" ({len(shown)} best of {len(groups)})" if len(groups) > len(shown) else ""
    axis.set_title(f"{metric}: mean and 95% band over {seeds_word}{cut}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    caption = (
        f"Learning curves of {metric}, averaged over {seeds_word}; the band is the 95% normal "
        f"confidence interval of the mean. Ordered by the step reached (a scheduler stops "
        f"the worse settings early), then by final {metric} "
        f"({'higher' if mode == 'max' else 'lower'} is better)."
    )
    return Figure("curves", f"Learning curves ({metric})", caption, render(figure))


def hyperparameter_figure(
    runs: list[RunData], keys: list[str], metric: str, space: dict[str, Any]
) -> Figure:
    """The final metric of every trial against each hyperparameter."""
    plt = pyplot()
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(runs))
    scores = np.array([run.metrics[metric] for run in runs])
    for axis, key in zip(axes.flat, keys, strict=False):
        values = [run.params.get(key) for run in runs]
        if is_numeric(values):
            x = np.array(values, dtype=float)
            axis.scatter(x, scores, s=12, alpha=0.6)
            if use_log_scale(key, x, space):
                axis.set_xscale("log")
        else:
            x, labels = categories(values)
            axis.scatter(x + jitter, scores, s=12, alpha=0.6)
            axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        if len(set(x)) <= 12:  # grid and categorical dimensions: the mean at each value
            for value in set(x):
                axis.plot(value, scores[x == value].mean(), "k_", markersize=16, mew=2)
        axis.set_xlabel(short_key(key))
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(keys) :]:
        axis.set_visible(False)
    figure.suptitle(f"final {metric} against each hyperparameter ({len(runs)} trials)")
    figure.tight_layout()
    caption = (
        f"Each dot is one trial's last reported {metric}; black bars are the mean at each "
        "value (grid and categorical dimensions)."
    )
    return Figure("hyperparameters", "Metric against each hyperparameter", caption, render(figure))


def parallel_figure(
    runs: list[RunData], keys: list[str], metric: str, mode: str, space: dict[str, Any]
) -> Figure:
    """Parallel coordinates: one line per trial through its hyperparameters and metric,
    coloured by the metric (the best trials drawn on top)."""
    plt = pyplot()
    axes_keys = [*keys, metric]
    columns, ticks = [], []
    for key in axes_keys:
        values = [run.metrics[metric] if key == metric else run.params.get(key) for run in runs]
        if is_numeric(values):
            x = np.array(values, dtype=float)
            log = key != metric and use_log_scale(key, x, space)
            x = np.log10(x) if log else x
            low, high = float(x.min()), float(x.max())
            columns.append((x - low) / (high - low or 1.0))
            ends = (10**low, 10**high) if log else (low, high)
            ticks.append([(0.0, f"{ends[0]:.3g}"), (1.0, f"{ends[1]:.3g}")])
        else:
            codes, labels = categories(values)
            scale = max(len(labels) - 1, 1)
            columns.append(codes / scale)
            ticks.append([(i / scale, label) for i, label in enumerate(labels)])
    data = np.stack(columns, axis=1)
    scores = data[:, -1]
    order = np.argsort(scores if mode == "max" else -scores)  # best drawn last, on top
    figure, axis = plt.subplots(figsize=(max(6.0, 2.0 * len(axes_keys)), 4.6))
    colour_map = plt.get_cmap("viridis_r" if mode == "min" else "viridis")
    x = np.arange(len(axes_keys))
    for row in order:
        axis.plot(x, data[row], color=colour_map(scores[row]), alpha=0.45, linewidth=0.9)
    for index, column_ticks in enumerate(ticks):
        axis.axvline(index, color="black", linewidth=0.8)
        for position, label in column_ticks:
            axis.text(index + 0.03, position, label, fontsize=7, va="center")
    axis.set_xticks(x, [short_key(k) for k in axes_keys])
    axis.set_yticks([])
    axis.set_xlim(-0.2, len(axes_keys) - 0.6)
    colour_bar = figure.colorbar(plt.cm.ScalarMappable(cmap=colour_map), ax=axis, pad=0.02)
    colour_bar.set_label(f"{metric} (scaled; bright is better)")
    axis.set_title(f"parallel coordinates of {len(runs)} trials")
    caption = (
        "One line per trial through its hyperparameters (log-scaled where the space is "
        f"log-uniform) and its final {metric}; the best trials are bright and drawn on top."
    )
    return Figure("parallel", "Parallel coordinates", caption, render(figure))


def comparison_figure(
    groups: dict[str, dict[str, list[RunData]]], compare: str, metric: str, mode: str, x_label: str
) -> Figure:
    """For each value of `compare` (a method or algorithm), its best setting: final metric
    (mean and 95% band over seeds) and learning curve."""
    plt = pyplot()
    best = []  # (value, its best setting, that setting's runs, mean final metric)
    for value, settings in groups.items():
        finals = [
            (label, mean_band(r.metrics[metric] for r in runs)[0])
            for label, runs in settings.items()
        ]
        label, score = best_first(finals, mode)[0]
        best.append((value, label, settings[label], score))
    best = [item for item, _ in best_first([(item, item[3]) for item in best], mode)]
    figure, (bars, lines) = plt.subplots(1, 2, figsize=(11, 4.4))
    names = []
    for index, (value, _, runs, _) in enumerate(best):
        colour = plt.get_cmap("tab10")(index % 10)
        mean, half, count = mean_band(r.metrics[metric] for r in runs)
        bars.bar(index, mean, yerr=half, color=colour, capsize=4)
        names.append(f"{value} (n={count})")
        curves = [r.curve for r in runs if r.curve]
        if curves:
            plot_band(lines, curves, colour, value)
    bars.set_xticks(range(len(best)), names, rotation=30, ha="right")
    bars.set_ylabel(f"final {metric}")
    bars.set_title(f"best setting per {short_key(compare)}")
    bars.grid(alpha=0.3, axis="y")
    step_axis(lines, x_label)
    lines.set_ylabel(metric)
    lines.set_title("their learning curves (95% band)")
    lines.grid(alpha=0.3)
    lines.legend(fontsize=8)
    figure.tight_layout()
    chosen = "; ".join(f"{value}: {label}" for value, label, _, _ in best)
    caption = (
        f"Each value of {short_key(compare)} at its best setting of the other hyperparameters "
        f"(by mean final {metric} over seeds; n runs each). Settings: {chosen}."
    )
    return Figure("comparison", f"Comparison by {short_key(compare)}", caption, render(figure))


def run_metric_figures(mlflow: Any, run: RunData, x_label: str = "step") -> list[Figure]:
    """One figure per metric family of a single run (`regret/a`, `regret/b` together),
    with `<family>_band/<key>` metrics drawn as bands."""
    plt = pyplot()
    tracker = Tracker(mlflow, run.run_id)
    families: dict[str, list[str]] = defaultdict(list)
    for key in sorted(run.metrics):
        family = key.split("/", 1)[0]
        if not family.endswith("_band") and family not in BOOKKEEPING_METRICS:
            families[family].append(key)
    figures = []
    for family, keys in families.items():
        histories = {key: np.array(tracker.metric_history(key)) for key in keys}
        if max(len(h) for h in histories.values()) < 2:
            continue  # a single value is a summary, shown in the table
        if all((h[:, 0] == h[:, 1]).all() for h in histories.values()):
            continue  # the x-axis itself (rounds, env steps)
        figure, axis = plt.subplots(figsize=(7.5, 4.4))
        for key, history in histories.items():
            steps, values = history[:, 0], history[:, 1]
            band_key = key.replace(f"{family}/", f"{family}_band/", 1)
            if band_key == key or band_key not in run.metrics:
                plot_noisy(axis, steps, values, label=key)  # one run's values: noisy
                continue
            (line,) = axis.plot(steps, values, label=key)
            band = dict(tracker.metric_history(band_key))
            half = np.array([band.get(s, 0.0) for s in steps])
            colour = line.get_color()
            axis.fill_between(steps, values - half, values + half, color=colour, alpha=0.18)
        step_axis(axis, x_label)
        axis.set_ylabel(family)
        axis.set_title(f"{family} ({run.name})")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        caption = (
            f"{family} as logged by the run; shaded: the logged 95% band, where there is one; "
            "elsewhere the logged values are the faint points, the line their moving average."
        )
        figures.append(Figure(slug(family), family, caption, render(figure)))
    return figures


# ---------------------------------------------------------------- building reports


def group_runs(runs: list[RunData], keys: list[str]) -> dict[str, list[RunData]]:
    """Runs grouped by their values of `keys`, labelled."""
    groups: dict[tuple, list[RunData]] = defaultdict(list)
    for run in runs:
        groups[run.setting(keys)].append(run)
    return {setting_label(keys, members[0]): members for members in groups.values()}


def comparison_groups(
    runs: list[RunData], compare: str, keys: list[str]
) -> dict[str, dict[str, list[RunData]]]:
    """value of `compare` (a param, or a `maestro.*` tag) -> setting of the other keys -> runs."""
    by_value: dict[str, list[RunData]] = defaultdict(list)
    for run in runs:
        by_value[compare_value(run, compare)].append(run)
    others = [k for k in keys if k != compare]
    return {value: group_runs(members, others) for value, members in sorted(by_value.items())}


def compare_value(run: RunData, compare: str) -> str:
    """The run's value of `compare` (a `maestro.*` tag or a param), as a label."""
    if compare.startswith("maestro."):
        return run.tags.get(compare, "?")
    return show(run.params.get(compare))


def sweep_report(
    mlflow: Any, parent: Any, metric: str | None, mode: str | None, compare: str | None
) -> Report:
    """The report of a sweep, from its parent run. Its trials' coordinates are the arm, the
    seed and the swept keys: runs that differ only in their seed are one setting."""
    tags = parent.data.tags
    metric = metric or tags["maestro.sweep.metric"]
    mode = mode or tags["maestro.sweep.mode"]
    space = json.loads(tags["maestro.sweep.space"])
    x_label = tags.get("maestro.step", "step")
    runs = [
        run_data(run)
        for run in search_runs(
            mlflow, [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
    ]
    scored = [run for run in runs if metric in run.metrics]
    if not scored:
        raise ReportError(f"sweep {parent.info.run_name}: no trial reported {metric!r}")
    load_curves(mlflow, scored, metric)
    keys = ["arm", *sorted(space), "seed"]
    varied = [k for k in keys if len({json.dumps(r.params.get(k)) for r in scored}) > 1]
    settings = [k for k in varied if k != "seed"]
    seeds_word = "seeds" if "seed" in varied else "repeats"
    figures = [curves_figure(group_runs(scored, settings), metric, mode, seeds_word, x_label)]
    if settings:
        figures.append(hyperparameter_figure(scored, settings, metric, space))
        figures.append(parallel_figure(scored, settings, metric, mode, space))
    categorical = [k for k in settings if not is_numeric([r.params.get(k) for r in scored])]
    compare = compare or next(iter(categorical), None)
    if compare:
        groups = comparison_groups(scored, compare, settings)
        figures.append(comparison_figure(groups, compare, metric, mode, x_label))

    ranked = [
        (run, run.metrics[metric])
        for run in rank_by_progress([(r, reached([r]), r.metrics[metric]) for r in scored], mode)
    ]
    rows = [
        [str(rank), run.name.rsplit("/", 1)[-1], *[show(run.params.get(k)) for k in varied]]
        + [str(len(run.curve)), f"{score:.6g}", run.outcome]
        for rank, (run, score) in enumerate(ranked[:MAX_TABLE_ROWS], 1)
    ]
    outcomes = defaultdict(int)
    for run in runs:
        outcomes[run.outcome] += 1
    summary = [
        ("sweep", parent.info.run_name),
        ("parent run", parent.info.run_id),
        ("trials", str(len(runs))),
        ("outcomes", ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))),
        ("metric", f"{metric} ({mode})"),
        (f"best {metric}", f"{ranked[0][1]:.6g}"),
        ("best trial", f"{rows[0][1]}: {setting_label(varied, ranked[0][0])}"),
    ]
    return Report(
        title=f"Sweep {parent.info.run_name}",
        kind="sweep",
        figures=figures,
        summary=summary,
        table_head=["rank", "trial", *map(short_key, varied), "steps", metric, "outcome"],
        table_rows=rows,
        log_run_id=parent.info.run_id,
        table_note=subset_note(len(rows), len(ranked), "trials", f"steps, then {metric}"),
    )


def experiment_report(
    mlflow: Any, name: str, metric: str | None, mode: str | None, compare: str | None
) -> Report:
    """The report of an experiment's top-level runs, compared by method (or `compare`)."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        raise ReportError(f"no MLflow experiment named {name!r}")
    if not metric:
        raise ReportError("an experiment report needs --metric")
    mode = mode or "min"
    compare = compare or "maestro.method"
    runs = [
        run_data(run)
        for run in search_runs(mlflow, [experiment.experiment_id], "")
        if "mlflow.parentRunId" not in run.data.tags
        and run.data.tags.get("maestro.kind") != "report"
    ]
    scored = [run for run in runs if metric in run.metrics]
    if not scored:
        raise ReportError(f"experiment {name}: no run logged {metric!r}")
    load_curves(mlflow, scored, metric)
    groups = comparison_groups(scored, compare, [])
    # Without other keys, each value has one setting: all its runs.
    by_value = {value: runs for value, settings in groups.items() for runs in settings.values()}
    figures = [
        curves_figure(by_value, metric, mode, "runs", "step"),
        comparison_figure(groups, compare, metric, mode, "step"),
    ]
    ranked = best_first([(run, run.metrics[metric]) for run in scored], mode)
    rows = [
        [str(rank), run.name, compare_value(run, compare), f"{score:.6g}", run.outcome]
        for rank, (run, score) in enumerate(ranked[:MAX_TABLE_ROWS], 1)
    ]
    summary = [
        ("experiment", name),
        ("runs", f"{len(scored)} with {metric} (of {len(runs)})"),
        ("metric", f"{metric} ({mode})"),
        (f"best {metric}", f"{ranked[0][1]:.6g} ({ranked[0][0].name})"),
    ]
    head = ["rank", "run", short_key(compare), metric, "outcome"]
    note = subset_note(len(rows), len(ranked), "runs", metric)
    return Report(f"Experiment {name}", "experiment", figures, summary, head, rows, None, note)


def subset_note(shown: int, total: int, noun: str, metric: str) -> str:
    """What the runs table holds when it is cut: "showing the 20 best of 200 runs (by
    loss)"; nothing when it lists them all."""
    if shown >= total:
        return ""
    return f"showing the {shown} best of {total} {noun} (by {metric})"


CLAIM_HEAD = ["claim", "statistic", "winner", "loser", "difference (> 0: as claimed)", "verdict"]


def run_claims(mlflow: Any, run: Any) -> list[ClaimResult]:
    """The paper claims a run checked (its `claims.json`, see `maestro.claims`)."""
    if not any(key.startswith("maestro.claim.") for key in run.data.tags):
        return []
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.download_artifacts(run.info.run_id, "claims.json", folder)
        return [ClaimResult.from_dict(c) for c in json.loads(Path(path).read_text())]


def claim_row(result: ClaimResult) -> list[str]:
    """A row of the reproduction table: each statistic with its 95% interval, the verdict."""
    return [
        result.name,
        f"{result.statistic} of {result.metric} over seeds ({result.better} is better)",
        f"{result.winner}: {result.winner_estimate}",
        f"{result.loser}: {result.loser_estimate}",
        str(result.difference),
        result.verdict,
    ]


def step_label(mlflow: Any, run: Any) -> str:
    """What the run's steps count (`maestro.step`: "rounds", "env steps"): the run's own
    tag (an experiment's parent run), else its parent's (a trial), else "step"."""
    tags = run.data.tags
    if "maestro.step" in tags or "mlflow.parentRunId" not in tags:
        return tags.get("maestro.step", "step")
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.get_run(tags["mlflow.parentRunId"]).data.tags.get("maestro.step", "step")
    except MlflowException:
        return "step"


def run_report(mlflow: Any, run: Any) -> Report:
    """The report of a single run (a `maestro run` experiment's parent run, or a trial's):
    its paper claims, metric curves and last values."""
    data = run_data(run)
    return Report(
        title=f"Run {data.name}",
        kind="run",
        figures=run_metric_figures(mlflow, data, step_label(mlflow, run)),
        summary=[("run", data.name), ("run id", data.run_id), ("status", data.status)],
        table_head=["metric (last value)", "value"],
        table_rows=[[key, f"{value:.6g}"] for key, value in sorted(data.metrics.items())],
        log_run_id=data.run_id,
        claims=run_claims(mlflow, run),
    )


def make_report(
    run_id: str | None = None,
    experiment: str | None = None,
    metric: str | None = None,
    mode: str | None = None,
    compare: str | None = None,
) -> Report:
    """The report of a run (a sweep's parent run reports the whole sweep) or an experiment."""
    mlflow = client()
    if experiment:
        return experiment_report(mlflow, experiment, metric, mode, compare)
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        raise ReportError(f"no MLflow run {run_id!r} at {redact_uri(tracking_uri())}") from None
    if run.data.tags.get("maestro.kind") == "sweep":
        return sweep_report(mlflow, run, metric, mode, compare)
    return run_report(mlflow, run)


# ---------------------------------------------------------------- HTML and logging


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
td, th { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; margin-top: 0.3rem; }
.meta { color: #666; font-size: 0.8rem; }
"""


def render_html(report: Report) -> str:
    """One HTML page with every figure inline (data URIs): no server, no other file."""
    esc = html.escape

    def row(cells: list[str], tag: str = "td") -> str:
        return "<tr>" + "".join(f"<{tag}>{esc(c)}</{tag}>" for c in cells) + "</tr>"

    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(report.title)}</title><style>{PAGE_STYLE}</style></head><body>",
        f"<h1>{esc(report.title)}</h1>",
        f'<p class="meta">Maestro report ({esc(report.kind)}) from '
        f"{esc(redact_uri(tracking_uri()))}</p>",
        "<table>",
        *[f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in report.summary],
        "</table>",
    ]
    if report.claims:
        parts += ["<h2>Paper claims</h2>", "<table>", row(CLAIM_HEAD, "th")]
        parts += [row(claim_row(result)) for result in report.claims]
        parts.append("</table>")
    for figure in report.figures:
        data = base64.b64encode(figure.png).decode()
        parts += [
            f'<h2 id="{esc(figure.name)}">{esc(figure.title)}</h2>',
            f'<figure><img src="data:image/png;base64,{data}" alt="{esc(figure.title)}">',
            f"<figcaption>{esc(figure.caption)}</figcaption></figure>",
        ]
    if report.table_rows:
        parts.append("<h2>Runs</h2>")
        if report.table_note:
            parts.append(f'<p class="meta">{esc(report.table_note)}</p>')
        parts += ["<table>", row(report.table_head, "th")]
        parts += [row(cells) for cells in report.table_rows]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: Report, output: str | Path | None = None, log: bool = True) -> Path:
    """Write the HTML page (default `reports/<title>.html`) and, with `log`, log the PNGs
    and the page to MLflow under `report/`. Returns the page's path."""
    path = Path(output) if output else Path("reports") / f"{slug(report.title)}.html"
    page = render_html(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(path)
    if log:
        tracker = Tracker(client(), report.log_run_id or report_run(report))
        for figure in report.figures:
            tracker.log_bytes(figure.png, f"report/{figure.name}.png")
        tracker.log_bytes(page.encode(), "report/index.html")
        report.log_run_id = tracker.run_id
    return path


def report_run(report: Report) -> str:
    """A finished MLflow run, marked `maestro.kind: report`, for an experiment report."""
    mlflow = client()
    experiment = report.title.removeprefix("Experiment ")
    run = mlflow.create_run(
        ensure_experiment(mlflow, experiment),
        run_name="report",
        tags={"maestro.kind": "report"},
    )
    mlflow.set_terminated(run.info.run_id)
    return run.info.run_id
