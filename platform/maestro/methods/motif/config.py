"""Motif's spec `config:` block (`MotifConfig`) and its pipeline stages, in order."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from maestro.envs.nethack import get_task
from maestro.feedback.annotation import AnnotationServiceConfig
from maestro.feedback.collect import CollectConfig, collect_on_the_task
from maestro.feedback.intrinsic import IntrinsicRewardConfig
from maestro.feedback.pairs import PairSamplingConfig
from maestro.feedback.reward_training import RewardTrainingConfig
from maestro.llm import AnnotatorConfig, load_prompt_set
from maestro.rl.training import TrainingConfig

Stage = Literal["collect", "annotate", "reward", "train"]
STAGES: tuple[str, ...] = ("collect", "annotate", "reward", "train")


class MotifConfig(BaseModel):
    """The spec's `config:` block for Motif."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(default="score", description="the NetHack task (envs/nethack.py TASKS)")
    goal: str | None = Field(
        default=None,
        description="the goal the annotator judges progress towards: a task of the prompt set "
        "(motif: score, descend, gold, combat, explore, ...); None: the task's own",
    )
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES), min_length=1)
    collect: CollectConfig = Field(default_factory=CollectConfig)
    pairs: PairSamplingConfig = Field(default_factory=PairSamplingConfig)
    annotator: AnnotatorConfig = Field(default_factory=AnnotatorConfig)
    annotation: AnnotationServiceConfig = Field(default_factory=AnnotationServiceConfig)
    reward: RewardTrainingConfig = Field(default_factory=RewardTrainingConfig)
    intrinsic: IntrinsicRewardConfig = Field(default_factory=IntrinsicRewardConfig)
    train: TrainingConfig = Field(default_factory=TrainingConfig)
    reward_model_from: str | None = Field(
        default=None,
        description="a finished Motif run's folder in the store (runs/motif/<name>): train on "
        "its reward model and dataset (stages: [train])",
    )

    @model_validator(mode="before")
    @classmethod
    def _collect_on_the_task(cls, data: dict) -> dict:
        return collect_on_the_task(data)

    @model_validator(mode="after")
    def _check(self) -> MotifConfig:
        get_task(self.task)
        if self.goal is not None:
            load_prompt_set(self.annotator.prompt).task(self.goal)  # names the known goals
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise ValueError(f"stages must be distinct and in the order {', '.join(STAGES)}")
        if self.reward_model_from is not None and self.stages != ["train"]:
            raise ValueError(
                "reward_model_from trains on a stored reward model: set stages: [train]"
            )
        return self
