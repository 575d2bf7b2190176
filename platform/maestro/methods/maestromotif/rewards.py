"""Per-skill rewards: Motif's annotation and reward training, once per skill, on one dataset.

Every skill's questions are drawn from the same skill captions (`captions.py`) and asked
with the MaestroMotif prompt (`maestro/llm/prompts/maestromotif.yaml`), the skill's
preference sentence as its modifier and its goal sentence for the embedding annotator; each
skill's answers land in its own preference store and train its own reward model on the
reward inputs (the message and the clipped level change). Stages, keys and resumption are
Motif's (`maestro.feedback.stages`): a finished skill is found again, not asked again.

A skill's threshold eps is its `eps_quantile` of its model's normalised rewards over the
dataset's distinct reward inputs (`skill_thresholds`). `reward_matrix` says how each skill's
model rates groups of reward inputs: the check that each model prefers its own skill's
moments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from maestro.feedback.annotation import stop_pool
from maestro.feedback.reward_model import RewardModel
from maestro.feedback.stages import annotate_captions, stage_reward
from maestro.llm import PromptSet, load_prompt_set
from maestro.methods.maestromotif.captions import SkillCaptions
from maestro.methods.maestromotif.skills import SkillSet


def skill_prompts(prompt: str, skills: SkillSet) -> PromptSet:
    """The prompt file `prompt` with the skills as its tasks (so each question's id and
    each stage's key carry the skill's sentences)."""
    return dataclasses.replace(
        load_prompt_set(prompt), tasks={skill.name: skill.task_text() for skill in skills.skills}
    )


def stage_skill_rewards(
    ctx, skills: SkillSet, captions: SkillCaptions, dataset: str
) -> dict[str, str]:
    """Annotate and train one reward model per skill (as far as `ctx.config.stages` asks);
    returns the store key of each skill's reward model (by skill name), or of its
    preferences without the reward stage (`preferences/<skill>`)."""
    cfg = ctx.config
    prompts = skill_prompts(cfg.annotator.prompt, skills)
    made = {}
    # One annotator pool for every skill: a language model loads once (if at all).
    pool: list = []
    try:
        for skill in skills.skills:
            preferences, labels = annotate_captions(
                ctx, captions.counts, dataset, prompts, skill.name, scope=skill.name, pool=pool
            )
            if "reward" not in cfg.stages:
                made[f"preferences/{skill.name}"] = labels
                continue
            made[skill.name] = stage_reward(
                ctx, preferences, labels, scope=skill.name, model_input=captions.reward_input_of
            )
    finally:
        stop_pool(pool)
    return made


def skill_thresholds(
    models: Mapping[str, RewardModel], skills: SkillSet, reward_inputs: Sequence[str]
) -> dict[str, float]:
    """eps of each skill: its `eps_quantile` of its model's normalised rewards over the
    distinct `reward_inputs`."""
    distinct = sorted(set(reward_inputs))
    return {
        name: float(np.quantile(model.normalised(distinct), skills.skill(name).eps_quantile))
        for name, model in models.items()
    }


def reward_matrix(
    models: Mapping[str, RewardModel], groups: Mapping[str, Sequence[str]]
) -> np.ndarray:
    """M[i, j]: the mean normalised reward of the i-th model on the j-th group of reward
    inputs (rows and columns in the mappings' order)."""
    return np.array(
        [
            [float(np.mean(model.normalised(list(inputs)))) for inputs in groups.values()]
            for model in models.values()
        ]
    )
