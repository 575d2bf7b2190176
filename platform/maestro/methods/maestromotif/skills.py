"""Skills in natural language: the file a MaestroMotif run starts from.

A skills file (YAML; `jobs/maestromotif/skills.yaml` ships the paper's five in Maestro's
own words) lists skills, each with:
- `name`: a lower-case identifier; the skill code names its functions after it
  (`initiation_<name>`, `termination_<name>`);
- `preference`: the sentence that tells the language-model annotator which of two moments
  shows more of the skill (the prompt's `modifier`);
- `goal`: what a moment showing the skill says, for the embedding annotator, which compares
  each caption with it;
- `eps_quantile`: the skill's threshold eps, as a quantile of its reward model's
  normalised rewards over the dataset's distinct reward inputs (the paper: 0.95 for the
  discoverer, 0.85 for the others).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from maestro.llm.prompts import TaskText
from maestro.spec import first_error

SKILL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class SkillsFileError(ValueError):
    """A skills file is missing or malformed (the message says where and why)."""


class Skill(BaseModel):
    """One skill as the annotator and the reward see it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    preference: str = Field(min_length=1)
    goal: str = Field(min_length=1)
    eps_quantile: float = Field(default=0.85, ge=0, le=1)

    @field_validator("name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if not SKILL_NAME.match(name):
            raise ValueError(
                f"skill name {name!r} must be a lower-case identifier of at most 32 characters "
                "(it names the skill's functions in the skill code)"
            )
        return name

    def task_text(self) -> TaskText:
        """What the annotator is asked to judge for this skill."""
        return TaskText(self.name, self.preference, self.goal)


class SkillSet(BaseModel):
    """The skills of a run, in order: a skill's index is its one-hot position."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    skills: list[Skill] = Field(min_length=1, max_length=32)

    @field_validator("skills")
    @classmethod
    def _distinct(cls, skills: list[Skill]) -> list[Skill]:
        names = [skill.name for skill in skills]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"skill names must be distinct; repeated: {', '.join(repeated)}")
        return skills

    @property
    def names(self) -> list[str]:
        return [skill.name for skill in self.skills]

    def skill(self, name: str) -> Skill:
        """The skill called `name` (KeyError naming the known ones otherwise)."""
        for skill in self.skills:
            if skill.name == name:
                return skill
        raise KeyError(f"unknown skill {name!r} (known: {', '.join(self.names)})")


def load_skills(path: str | Path) -> SkillSet:
    """The skill set in the YAML file at `path` (a mapping with a `skills:` list)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SkillsFileError(f"{path}: cannot read the skills file ({exc})") from None
    try:
        return SkillSet.model_validate(data)
    except ValidationError as exc:
        raise SkillsFileError(f"{path}: {first_error(exc, 'skills file')}") from None
