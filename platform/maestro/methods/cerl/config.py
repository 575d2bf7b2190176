"""The spec's `config:` block for CERL: one arm on one seed is a trial; the arms set the
number of members, `mode` (ensemble or tandem) and `cerl`. Defaults follow the MinAtar
paper's DQN (Young, Tian 2019); the table of paper settings against Maestro's is
docs/methods/cerl.md."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CerlConfig(BaseModel):
    """The spec's `config:` block for CERL."""

    model_config = ConfigDict(extra="forbid")

    env: str = Field(
        default="breakout", description="a MinAtar game, or atari/<game> for the ALE's"
    )
    members: int = Field(default=5, ge=1, description="N; 1 is a single agent")
    mode: Literal["ensemble", "tandem"] = Field(
        default="ensemble",
        description="ensemble: a uniformly drawn member acts each episode; tandem: two "
        "members, the active one (0) acts in `tandem_p` of the episodes",
    )
    tandem_p: float = Field(default=0.9, ge=0, le=1)
    cerl: bool = Field(default=False, description="N heads per member, head (i, j) fits j's target")
    aux_weight: float = Field(
        default=1.0, ge=0, description="weight of the heads (i, j != i); 1: all heads equal"
    )
    shared_encoder: bool = Field(
        default=False, description="one encoder for all members, its gradients scaled by 1/N"
    )
    convs: tuple[tuple[int, int, int], ...] = Field(
        default=((16, 3, 1),), description="(filters, kernel, stride) of each convolution"
    )
    hidden: int = Field(default=128, ge=1)
    clip_rewards: bool = Field(default=False, description="learn from sign(r) (Atari)")
    env_steps: int = Field(default=5_000_000, ge=1)
    buffer_size: int = Field(default=100_000, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=2.5e-4, gt=0, description="RMSProp")
    rms_alpha: float = Field(default=0.95, gt=0, lt=1, description="squared-gradient decay")
    rms_eps: float = Field(default=0.01, gt=0)
    gamma: float = Field(default=0.99, gt=0, le=1)
    learning_starts: int = Field(default=5000, ge=0)
    train_every: int = Field(default=1, ge=1, description="env steps between updates")
    target_update: int = Field(default=1000, ge=1, description="env steps between target syncs")
    eps_start: float = Field(default=1.0, ge=0, le=1)
    eps_end: float = Field(default=0.1, ge=0, le=1)
    eps_decay_steps: int = Field(default=100_000, ge=1)
    eval_every: int = Field(default=50_000, ge=1)
    eval_episodes: int = Field(default=10, ge=1)
    eval_eps: float = Field(default=0.0, ge=0, le=1)
    checkpoint_every: int = Field(default=50_000, ge=1)
    device: Literal["cpu", "cuda"] = "cpu"

    @model_validator(mode="after")
    def _check(self) -> CerlConfig:
        if self.mode == "tandem" and self.members != 2:
            raise ValueError("mode tandem: members must be 2 (the active and the passive)")
        if self.cerl and self.members < 2:
            raise ValueError("cerl: needs at least 2 members")
        return self
