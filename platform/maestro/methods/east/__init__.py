"""EAST: entropic activation steering of an in-context LLM agent on text bandits.

Rahn, D'Oro, Bellemare, "Controlling Large Language Model Agents with Entropic Activation
Steering", 2024 (arXiv:2406.00244); what Maestro runs of it and its settings:
`docs/methods/east.md`.

A language model plays a bandit described in text (`maestro.envs.text_bandit`), answering
`Thought: ... Action: <arm>`. LLM agents commit early: the entropy of their actions
collapses, and raising the token temperature scrambles the answers more than it widens
the decision. EAST adds beta * u to one decoder layer's output, u being the
entropy-weighted mean of the activations at prompts the agent met (`steering.py`).

`prepare` runs two stages, each stored under the digest of its inputs and skipped when
done: the smoke model (`smoke_model.py`; only when the spec names no `model`), and the
steering vector: the unsteered agent plays `steering.episodes` episodes, K answers per
prompt give each prompt's action entropy, and u is stored with its layer, the model's
digest and the prompts it came from. A trial is one (beta, temperature) point on one
seed: the agent plays `episodes` episodes steered by beta * u (`agent.py`) and logs, per
turn, the action entropy, the share of exploratory actions, thought/action agreement and
cumulative regret. `aggregate` plots action entropy against beta and against agreement.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from maestro.methods import Method
from maestro.methods.east.agent import finite_mean, play
from maestro.methods.east.config import EastConfig
from maestro.methods.east.smoke_model import train_smoke_model
from maestro.methods.east.steering import (
    last_token_activations,
    middle_layer,
    steering,
    steering_vector,
)

STEERING_SEED = 10_000  # added to the spec's seed: the steering episodes are not any trial's
SUMMARY = "summary.json"
WHOLE_FILE_BYTES = 64 << 20  # larger model files enter the digest by size and ends
PER_TURN = {
    "action_entropy": "entropy",
    "agreement": "agreement",
    "exploratory_share": "exploratory",
    "invalid_share": "invalid",
    "cumulative_regret": "regret",
}


def make_agent(cfg: EastConfig, model: str, seed: int):
    """The `hf` backend on `model`, sampling as `cfg.agent` says."""
    from maestro.llm.backends import AnnotatorConfig, HfAnnotator

    agent = cfg.agent
    return HfAnnotator(
        AnnotatorConfig(
            backend="hf",
            model=model,
            chat=False,
            max_tokens=agent.max_tokens,
            temperature=agent.temperature,
            top_p=agent.top_p,
            seed=seed,
            hf={"device": agent.device, "dtype": agent.dtype, "batch_size": agent.batch_size},
        )
    )


def model_digest(folder: Path) -> str:
    """SHA-256 over a model folder's file names and contents (files over 64 MiB: their size
    and first and last MiB, so a 90 GB checkpoint is not read whole)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder)}:{size}\n".encode())
        with path.open("rb") as file:
            if size <= WHOLE_FILE_BYTES:
                digest.update(file.read())
            else:
                digest.update(file.read(1 << 20))
                file.seek(-(1 << 20), 2)
                digest.update(file.read())
    return digest.hexdigest()


def smoke_model_stage(ctx) -> str:
    """Train the smoke model once per (env, settings, seed); returns its store URI."""
    cfg: EastConfig = ctx.config
    key = ctx.stage_key(
        "smoke_model", {"env": cfg.env, "smoke_model": cfg.smoke_model, "seed": ctx.spec.seed}
    )
    if not ctx.store.exists(f"{key}/done.json"):
        folder = Path(tempfile.mkdtemp(prefix="maestro-east-model-"))
        try:
            examples = cfg.smoke_model.transcripts * cfg.env.horizon
            batches = cfg.smoke_model.epochs * -(-examples // cfg.smoke_model.batch_size)
            with ctx.progress(batches, "smoke model", "batch") as bar:
                losses = train_smoke_model(cfg.env, cfg.smoke_model, ctx.spec.seed, folder, bar)
            for path in sorted(folder.iterdir()):
                ctx.store.put_file(f"{key}/{path.name}", path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        ctx.store.put_json(f"{key}/done.json", losses)
        ctx.tracker.log_metrics({f"smoke_model/{k}": v for k, v in losses.items()}, step=0)
    return ctx.store.uri(key)


def prepare(ctx) -> dict[str, Any]:
    """The model (the spec's, or the smoke model) and the steering vector built on it."""
    from maestro.llm.backends import resolve_model

    cfg: EastConfig = ctx.config
    model = cfg.model or smoke_model_stage(ctx)
    digest = model_digest(resolve_model(model))
    key = ctx.stage_key(
        "steering",
        {
            "model": digest,
            "env": cfg.env,
            "agent": cfg.agent,
            "steering": cfg.steering,
            "seed": ctx.spec.seed,
        },
    )
    if not ctx.store.exists(f"{key}/steering.json"):
        build_steering_vector(ctx, model, digest, key)
    info = ctx.store.get_json(f"{key}/steering.json")
    ctx.tracker.log_dict(info, "steering/steering.json")
    ctx.tracker.log_bytes(ctx.store.get_bytes(f"{key}/vector.npy"), "steering/vector.npy")
    return {"model": model, "steering": key, "layer": info["layer"]}


def build_steering_vector(ctx, model: str, digest: str, key: str) -> None:
    """Play unsteered, weigh each prompt's last-token activation by its action entropy,
    and store u (`vector.npy`), the prompts with their entropies (`prompts.json`) and
    `steering.json` (layer, model digest, statistics; written last: the stage is done)."""
    cfg: EastConfig = ctx.config
    agent = make_agent(cfg, model, ctx.spec.seed + STEERING_SEED)
    layer = cfg.steering.layer if cfg.steering.layer is not None else middle_layer(agent.model)
    record = play(
        agent.generate,
        cfg.env,
        cfg.steering.episodes,
        cfg.steering.samples,
        ctx.spec.seed + STEERING_SEED,
    )
    kept = [i for i, H in enumerate(record.prompt_entropy) if np.isfinite(H)]
    prompts = [record.prompts[i] for i in kept]
    H = np.array([record.prompt_entropy[i] for i in kept])
    h = last_token_activations(agent.model, agent.tokenizer, prompts, layer)
    u = steering_vector(h, H, cfg.steering.centred).astype(np.float32)
    agent.close()
    info = {
        "layer": layer,
        "model_digest": digest,
        "centred": cfg.steering.centred,
        "prompts": len(prompts),
        "samples": cfg.steering.samples,
        "norm": float(np.linalg.norm(u)),
        "activation_norm": float(np.linalg.norm(h, axis=1).mean()),
        "entropy_mean": float(H.mean()),
        "entropy_zero_share": float(np.mean(H == 0)),
    }
    ctx.store.put_array(f"{key}/vector.npy", u)
    ctx.store.put_json(
        f"{key}/prompts.json",
        [{"prompt": p, "entropy": e} for p, e in zip(prompts, H.tolist(), strict=True)],
    )
    ctx.store.put_json(f"{key}/steering.json", info)
    ctx.tracker.log_metrics(
        {
            f"steering/{k}": v
            for k, v in info.items()
            if k not in ("layer", "model_digest", "centred")
        },
        step=0,
    )


def trial(ctx) -> dict[str, float]:
    """One (beta, temperature) point on one seed: play `episodes` episodes steered by
    beta * u, logging each turn's means over the episodes."""
    import torch

    cfg: EastConfig = ctx.config
    torch.set_num_threads(1)  # one core per trial: trials run side by side
    agent = make_agent(cfg, ctx.prepared["model"], ctx.seed)
    u = ctx.store.get_array(f"{ctx.prepared['steering']}/vector.npy")
    steered = (
        steering(agent.model, ctx.prepared["layer"], cfg.beta * u) if cfg.beta else nullcontext()
    )
    start = time.perf_counter()
    with steered:
        record = play(agent.generate, cfg.env, cfg.episodes, cfg.samples, ctx.seed, agent.tokenizer)
    seconds = time.perf_counter() - start
    agent.close()
    for turn in range(cfg.env.horizon):
        means = {
            name: finite_mean(getattr(record, field)[turn]) for name, field in PER_TURN.items()
        }
        ctx.log({name: value for name, value in means.items() if np.isfinite(value)}, turn + 1)
    final = {
        "action_entropy": finite_mean(record.entropy),
        "agreement": finite_mean(record.agreement),
        "exploratory_share": finite_mean(record.exploratory),
        "invalid_share": finite_mean(record.invalid),
        "regret": float(record.regret[-1].mean()),
        "arms_tried": float(record.arms_tried.mean()),
        "tokens_per_s": record.tokens / seconds,
    }
    point = {"beta": cfg.beta, "temperature": cfg.agent.temperature, "opening": cfg.env.opening}
    ctx.store.put_json(ctx.key(SUMMARY), {**point, **final})
    return final


def aggregate(ctx, results) -> None:
    """Plots over the trials: action entropy against beta (one line per temperature and
    opening), and action entropy against thought/action agreement for the steering points
    (beta varies at the spec's temperature) and the temperature points (beta 0), on the
    spec's opening."""
    cfg: EastConfig = ctx.config
    summaries = [ctx.store.get_json(f"{r.prefix}/{SUMMARY}") for r in results if not r.error]
    if summaries:
        ctx.save_plot(plot_entropy_by_beta(summaries), "action_entropy_by_beta")
        same_opening = [s for s in summaries if s["opening"] == cfg.env.opening]
        ctx.save_plot(
            plot_entropy_by_agreement(same_opening, cfg.agent.temperature),
            "action_entropy_by_agreement",
        )


def point_means(summaries: list[dict], keys: tuple[str, ...]) -> dict[tuple, dict[str, float]]:
    """Mean metrics of the trials at each value of `keys`, with the count."""
    groups: dict[tuple, list[dict]] = {}
    for summary in summaries:
        groups.setdefault(tuple(summary[k] for k in keys), []).append(summary)
    return {
        point: {
            "entropy": float(np.mean([s["action_entropy"] for s in group])),
            "entropy_sd": float(np.std([s["action_entropy"] for s in group])),
            "agreement": finite_mean([s["agreement"] for s in group]),
            "seeds": len(group),
        }
        for point, group in sorted(groups.items())
    }


def plot_entropy_by_beta(summaries: list[dict]):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    points = point_means(summaries, ("temperature", "opening", "beta"))
    for temperature, opening in sorted({p[:2] for p in points}):
        line = [(p[2], v) for p, v in points.items() if p[:2] == (temperature, opening)]
        betas = [beta for beta, _ in line]
        axis.errorbar(
            betas,
            [v["entropy"] for _, v in line],
            yerr=[v["entropy_sd"] for _, v in line],
            marker="o",
            capsize=3,
            label=f"T={temperature:g}, opening {opening}",
        )
    axis.set_xlabel("beta (steering strength)")
    axis.set_ylabel("action entropy (nats), mean and sd over seeds")
    axis.set_title("EAST: action entropy against beta")
    axis.legend()
    axis.grid(alpha=0.3)
    return figure


def plot_entropy_by_agreement(summaries: list[dict], temperature: float):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    points = point_means(summaries, ("beta", "temperature"))
    series = {
        f"steering (T={temperature:g}, beta varies)": {
            p: v for p, v in points.items() if p[1] == temperature
        },
        "temperature (beta 0, T varies)": {p: v for p, v in points.items() if p[0] == 0},
    }
    for label, line in series.items():
        axis.plot(
            [v["agreement"] for v in line.values()],
            [v["entropy"] for v in line.values()],
            marker="o",
            label=label,
        )
        for (beta, temp), v in line.items():
            axis.annotate(f"b={beta:g},T={temp:g}", (v["agreement"], v["entropy"]), fontsize=7)
    axis.set_xlabel("thought/action agreement")
    axis.set_ylabel("action entropy (nats)")
    axis.set_title("EAST: action entropy against thought/action agreement")
    axis.legend()
    axis.grid(alpha=0.3)
    return figure


METHOD = Method(
    name="east",
    config=EastConfig,
    trial=trial,
    metrics=(
        "action_entropy",
        "agreement",
        "exploratory_share",
        "invalid_share",
        "regret",
        "arms_tried",
        "tokens_per_s",
    ),
    step="turns",
    prepare=prepare,
    aggregate=aggregate,
)
