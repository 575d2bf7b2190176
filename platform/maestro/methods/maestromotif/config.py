"""MaestroMotif's spec `config:` block (`MaestroMotifConfig`) and its stages, in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from maestro.envs.nethack import get_task
from maestro.feedback.annotation import AnnotationServiceConfig
from maestro.feedback.collect import CollectConfig, collect_on_the_task
from maestro.feedback.intrinsic import IntrinsicRewardConfig
from maestro.feedback.pairs import PairSamplingConfig
from maestro.feedback.reward_training import RewardTrainingConfig
from maestro.llm import AnnotatorConfig
from maestro.methods.maestromotif.codegen import CodegenConfig
from maestro.rl.training import TrainingConfig

Stage = Literal["collect", "annotate", "reward", "code", "train"]
STAGES: tuple[str, ...] = ("collect", "annotate", "reward", "code", "train")


@dataclass(frozen=True)
class Task:
    """A task composed from the skills: what the code writer is told, and its success, a
    skill feature (features.py) true at some observation of the game (trusted: the method
    judges it, not the policy over skills that pursues it)."""

    description: str
    success: str


TASKS = {
    "gnomish_mines": Task(
        "Reach the Gnomish Mines, a branch of the dungeon whose entrance is a second "
        "staircase down on dungeon level 2, 3 or 4.",
        "in_mines",
    ),
}


class MaestroMotifConfig(BaseModel):
    """The spec's `config:` block for MaestroMotif. Paths are relative to the spec's folder."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(default="score", description="the NetHack env the agent plays")
    skills: str = Field(default="skills.yaml", description="the skills file")
    code: str = Field(
        default="code",
        description="hand-written skill code: a folder with skills.py (initiations, "
        "terminations, the training policy) and tasks/<task>.py (a policy per task); used "
        "when `codegen` is not set",
    )
    codegen: CodegenConfig | None = Field(
        default=None, description="a language model writes the skill code (the paper's loop)"
    )
    tasks: list[str] = Field(
        default_factory=lambda: ["gnomish_mines"],
        description=f"tasks composed zero-shot at evaluation ({', '.join(TASKS)})",
    )
    eval_skills: list[str] = Field(
        default_factory=lambda: ["discoverer", "descender"],
        description="skills evaluated alone, each acting through whole games",
    )
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES), min_length=1)
    collect: CollectConfig = Field(default_factory=CollectConfig)
    pairs: PairSamplingConfig = Field(default_factory=PairSamplingConfig)
    annotator: AnnotatorConfig = Field(
        default_factory=lambda: AnnotatorConfig(prompt="maestromotif")
    )
    annotation: AnnotationServiceConfig = Field(default_factory=AnnotationServiceConfig)
    reward: RewardTrainingConfig = Field(default_factory=RewardTrainingConfig)
    intrinsic: IntrinsicRewardConfig = Field(default_factory=IntrinsicRewardConfig)
    train: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="before")
    @classmethod
    def _collect_on_the_task(cls, data: dict) -> dict:
        return collect_on_the_task(data)

    @model_validator(mode="after")
    def _check(self) -> MaestroMotifConfig:
        get_task(self.task)
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise ValueError(f"stages must be distinct and in the order {', '.join(STAGES)}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown tasks {unknown} (known: {', '.join(TASKS)})")
        if "train" in self.stages and not {"reward", "code"} <= set(self.stages):
            raise ValueError("train needs the reward and code stages before it")
        return self
