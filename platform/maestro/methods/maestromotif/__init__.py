"""MaestroMotif: skills designed from AI feedback, composed by code a language model writes.

Klissarov et al., "MaestroMotif: Skill Design from Artificial Intelligence Feedback", ICLR
2025; what Maestro runs of it: `docs/methods/maestromotif.md`.

An experiment prepares once (stored under its folder, each stage skipped when done), then
trains one skill-conditioned agent per trial:

1. `collect`: Motif's collection (`maestro.feedback.collect`): NetHack games stored as rows.
2. `annotate`: the rows become moments of play (`captions.py`: the previous and current
   message and what changed); per skill of the skills file (`skills.py`), Motif's pair
   sampling and annotator pool judge them for that skill (`rewards.py`).
3. `reward`: one reward model per skill on the message and the clipped level change, and
   its eps (`rewards.py`); MLflow gets each model and `reward_matrix/<model>/<moments>`.
4. `code`: the skill code, from the `code` folder (hand-written) or written by a language
   model with the paper's write-test-check loop (`codegen.py`); versioned in the store by
   content digest and logged to MLflow; it only ever runs in the sandbox (`sandbox.py`).
5. `train`, the trial: one agent for all skills (`train.py`), the training policy over skills
   choosing the acting skill (`controller.py`, `env.py`), each step rewarded by that skill's
   model (`intrinsic.py`); then each skill evaluated alone and each task's policy over
   skills composing the skills zero-shot.
"""

from __future__ import annotations

import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import maestro.rl  # noqa: F401  (first: settles Ray's auth mode before RLlib is imported)
from maestro.feedback.reward_model import RewardModel
from maestro.feedback.stages import PREPARED, stage_collect
from maestro.llm.sandbox import compile_skill_code
from maestro.methods import Method
from maestro.methods.maestromotif.captions import load_skill_captions, reward_input
from maestro.methods.maestromotif.codegen import (
    CodegenFailed,
    CodeRequest,
    CodeWriter,
    GeneratedCode,
    load_user_code,
    store_generated,
)
from maestro.methods.maestromotif.config import TASKS, MaestroMotifConfig
from maestro.methods.maestromotif.controller import POLICY, skill_functions
from maestro.methods.maestromotif.rewards import (
    reward_matrix,
    skill_thresholds,
    stage_skill_rewards,
)
from maestro.methods.maestromotif.skills import SkillSet, load_skills
from maestro.methods.maestromotif.train import SkillTraining, train_skills
from maestro.rl.training import trial_resources
from maestro.spec import SpecError

PAPER_SKILLS = ("discoverer", "descender", "ascender", "worshipper", "merchant")
DEPTH_GAP = "skill/descender_minus_discoverer/depth"
FIGHT = re.compile(r"\byou (hit|kill|destroy|miss)\b", re.IGNORECASE)
# Moments of the dataset by what they show, for the reward matrix: reward inputs by the
# level change they end with (`captions.reward_input`) and, on one level, a fight.
MOMENT_GROUPS = {
    "went_down": lambda text: text.endswith(reward_input("", 1)),
    "went_up": lambda text: text.endswith(reward_input("", -1)),
    "fight_on_one_level": lambda text: (
        text.endswith(reward_input("", 0)) and bool(FIGHT.search(text))
    ),
}


def spec_path(ctx, path: str) -> Path:
    """`path` from the config, relative to the spec file's folder."""
    return (Path(ctx.spec.source).parent / path).resolve()


def prepare(ctx) -> dict[str, Any]:
    """The stages before training (module docs); returns (and records in `prepared.json`)
    the store keys and values the trials read: the dataset, each skill's reward model and
    eps, the skill code and each task's policy code."""
    cfg: MaestroMotifConfig = ctx.config
    try:
        skills = load_skills(spec_path(ctx, cfg.skills))
    except ValueError as exc:
        raise SpecError(f"{ctx.spec.source}: config.skills: {exc}") from None
    made: dict[str, Any] = {"skills": skills.names}
    if set(cfg.stages) & {"collect", "annotate", "reward"}:
        _, made["dataset"] = stage_collect(ctx)
    if set(cfg.stages) & {"annotate", "reward"}:
        captions = load_skill_captions(ctx.store, made["dataset"])
        ctx.tracker.log_metrics({"dataset/skill_captions": len(captions.counts.captions)}, step=0)
        made["reward_models"] = stage_skill_rewards(ctx, skills, captions, made["dataset"])
        if "reward" in cfg.stages:
            models = {
                name: RewardModel.from_bytes(ctx.store.get_bytes(key))
                for name, key in made["reward_models"].items()
            }
            inputs = list(captions.reward_inputs.values())
            made["thresholds"] = skill_thresholds(models, skills, inputs)
            log_reward_matrix(ctx, models, inputs)
    if "code" in cfg.stages:
        made["code"] = stage_code(ctx, skills)
    ctx.store.put_json(ctx.key(PREPARED), made)
    return made


def log_reward_matrix(ctx, models: dict[str, RewardModel], inputs: list[str]) -> None:
    """`reward_matrix/<model>/<moments>`: each skill model's mean normalised reward on the
    dataset's distinct reward inputs of each of `MOMENT_GROUPS` (the groups it has)."""
    distinct = sorted(set(inputs))
    groups = {
        name: [text for text in distinct if belongs(text)]
        for name, belongs in MOMENT_GROUPS.items()
    }
    groups = {name: texts for name, texts in groups.items() if texts}
    if not groups:
        return
    matrix = reward_matrix(models, groups)
    ctx.tracker.log_metrics(
        {
            f"reward_matrix/{model}/{group}": float(matrix[i, j])
            for i, model in enumerate(models)
            for j, group in enumerate(groups)
        },
        step=0,
    )


def stage_code(ctx, skills: SkillSet) -> dict[str, Any]:
    """The skill code (initiations, terminations, the training policy) and each task's
    policy over skills: written by the language model (`codegen`) or read from the `code`
    folder; stored under `code/<digest>.py` with what made it, and logged to MLflow.
    Returns their store keys."""
    cfg: MaestroMotifConfig = ctx.config
    functions = skill_functions(skills.names)
    descriptions = {skill.name: skill.preference for skill in skills.skills}
    pieces: dict[str, GeneratedCode] = {}
    if cfg.codegen is None:
        folder = spec_path(ctx, cfg.code)
        pieces["skills"] = read_user_code(ctx, folder / "skills.py", functions)
        for task in cfg.tasks:
            pieces[task] = read_user_code(ctx, folder / "tasks" / f"{task}.py", (POLICY,))
    else:
        import ray

        options = {"num_cpus": cfg.codegen.cpus, "num_gpus": cfg.codegen.gpus}
        writer = ray.remote(**options)(CodeWriter).remote(cfg.codegen)
        try:
            written = write_logged(ctx, writer, CodeRequest(kind="skills", skills=descriptions))
            policy = write_logged(
                ctx,
                writer,
                CodeRequest(
                    kind="training_policy", skills=descriptions, skills_source=written.source
                ),
            )
            # One module: the skills' functions and the training policy.
            source = f"{written.source.rstrip()}\n\n\n{policy.source.strip()}\n"
            pieces["skills"] = load_generated(source, functions, written, policy)
            for task in cfg.tasks:
                pieces[task] = write_logged(
                    ctx,
                    writer,
                    CodeRequest(
                        kind="task_policy",
                        skills=descriptions,
                        task_name=task,
                        task=TASKS[task].description,
                        skills_source=written.source,
                    ),
                )
        finally:
            ray.kill(writer)
    keys = {}
    for name, code in pieces.items():
        keys[name] = store_generated(ctx.store, ctx.key("code"), code)
        ctx.tracker.log_bytes(code.source.encode(), f"code/{name}.py")
        ctx.tracker.log_dict(code.metadata(), f"code/{name}.json")
    return {"skills": keys.pop("skills"), "tasks": keys}


def write_logged(ctx, writer, request: CodeRequest) -> GeneratedCode:
    """`request` written by the language model (`writer`: a `CodeWriter` actor); when every
    round fails, the rounds (each completion, where it failed and why) go to MLflow as
    `code/<piece>.failed.json` and the run fails: nothing reaches training."""
    import ray

    outcome = ray.get(writer.write.remote(request))
    if isinstance(outcome, GeneratedCode):
        return outcome
    rounds = [asdict(record) for record in outcome]
    ctx.tracker.log_dict(rounds, f"code/{request.piece.replace(' ', '_')}.failed.json")
    raise CodegenFailed(request.piece, outcome)


def read_user_code(ctx, path: Path, functions) -> GeneratedCode:
    try:
        return load_user_code(path, functions, piece=path.stem)
    except (OSError, ValueError) as exc:
        raise SpecError(f"{ctx.spec.source}: config.code: {path}: {exc}") from None


def load_generated(source: str, functions, *parts: GeneratedCode) -> GeneratedCode:
    """The skills' code and the training policy, each accepted by the loop, as one
    module (checked again by the sandbox), its record naming both parts' checks."""
    compiled = compile_skill_code(source, functions)
    return replace(
        parts[0],
        piece="skills and training policy",
        functions=compiled.functions,
        source=compiled.source,
        digest=compiled.digest,
        transcript="\n\n".join(part.transcript for part in parts),
        verdict="\n\n".join(part.verdict for part in parts),
    )


def trial(ctx) -> dict[str, float]:
    """Train the skill-conditioned agent on the prepared reward models and skill code
    (continuing from the trial's last checkpoint), evaluate its skills and the tasks."""
    cfg: MaestroMotifConfig = ctx.config
    prepared = ctx.prepared
    if "train" not in cfg.stages:
        return {}
    skills = tuple(prepared["skills"])
    how = SkillTraining(
        skills=skills,
        skill_code=ctx.store.get_bytes(prepared["code"]["skills"]).decode(),
        reward_models=tuple(
            RewardModel.from_bytes(ctx.store.get_bytes(prepared["reward_models"][s]))
            for s in skills
        ),
        thresholds=tuple(prepared["thresholds"][s] for s in skills),
        intrinsic=cfg.intrinsic,
    )
    task_policies = {
        task: ctx.store.get_bytes(key).decode() for task, key in prepared["code"]["tasks"].items()
    }
    figures = train_skills(
        cfg.task,
        cfg.train,
        how,
        trial=ctx,
        seed=ctx.seed,
        run_name=f"{ctx.experiment}/{ctx.name}",
        eval_skills=cfg.eval_skills,
        task_policies=task_policies,
        task_success={task: TASKS[task].success for task in task_policies},
    )
    # The paper's check of skills that behave differently: the descender ends deeper.
    if {"skill/descender/depth", "skill/discoverer/depth"} <= set(figures):
        figures[DEPTH_GAP] = figures["skill/descender/depth"] - figures["skill/discoverer/depth"]
    return figures


METHOD = Method(
    name="maestromotif",
    config=MaestroMotifConfig,
    trial=trial,
    metrics=(
        "env_steps",
        *(f"skill/{skill}/{measure}" for skill in PAPER_SKILLS for measure in ("depth", "score")),
        DEPTH_GAP,
        *(f"task/{task}/success_rate" for task in TASKS),
    ),
    step="env steps",
    prepare=prepare,
    resources=trial_resources,
)
