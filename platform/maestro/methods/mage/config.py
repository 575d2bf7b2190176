"""The spec's `config:` block for MAGE: one arm on one seed is a trial; the spec's arms set
`algorithm` and `w_g` (MAGE: w_g 5; Dyna-TD3: w_g 0; TD3: algorithm td3). The defaults are
the official code's (github.com/nnaisense/MAGE, `main.py` and `td3.py`); the table with
sources and where Maestro differs is docs/methods/mage.md."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from maestro.rl.networks import Activation, Optimizer
from maestro.rl.off_policy import OffPolicyConfig
from maestro.rl.td3 import TD3Config


class ModelConfig(BaseModel):
    """The ensemble of Gaussian dynamics models and how it is trained."""

    model_config = ConfigDict(extra="forbid")

    ensemble_size: int = Field(default=8, ge=1)
    hidden: tuple[int, ...] = (512, 512, 512, 512)
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0, description="decoupled (RAdam)")
    batch_size: int = Field(default=256, ge=1)
    train_every: int = Field(default=25, ge=1, description="env steps between trainings")
    batches: int = Field(default=120, ge=1, description="per training, in whole epochs")
    grad_clip: float = Field(default=5.0, gt=0, description="by value")
    log_var_min: float = -5.0  # the predicted log-variance (normalised units) is squashed
    log_var_max: float = -1.0  # into [log_var_min, log_var_max]


class MageTD3Config(TD3Config):
    """TD3 as MAGE's code sets it: 2 x 384 swish networks, RAdam at 1e-4, Huber TD loss,
    the actor ascends the twins' minimum, gradients clipped by value at 5 (a spec that
    sets some of these keeps the others)."""

    hidden: tuple[int, ...] = (384, 384)
    activation: Activation = "swish"
    optimizer: Optimizer = "radam"
    actor_lr: float = Field(default=1e-4, gt=0)
    critic_lr: float = Field(default=1e-4, gt=0)
    td_loss: Literal["squared", "huber"] = "huber"
    actor_q: Literal["q1", "min"] = "min"
    grad_clip: float | None = Field(default=5.0, gt=0, description="by value")


class MageConfig(BaseModel):
    """The spec's `config:` block for MAGE."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["mage", "td3"] = Field(
        default="mage", description="mage: Dyna-style on imagined transitions; td3: real ones"
    )
    w_td: float = Field(default=1.0, ge=0, description="weight of Huber(delta)")
    w_g: float = Field(
        default=5.0, ge=0, description="weight of Huber(|grad_a delta|); 0: Dyna-TD3"
    )
    device: Literal["cpu", "cuda"] = Field(
        default="cpu", description="where the learner runs (cuda: the trial's GPU)"
    )
    imagined_batch: int = Field(default=1024, ge=1, description="start states per update")
    divergence_td_loss: float = Field(default=1e2, gt=0, description="reset above it")
    divergence_actor_loss: float = Field(default=1e5, gt=0, description="reset above |it|")
    loop: OffPolicyConfig = Field(
        default_factory=lambda: OffPolicyConfig(
            env="HalfCheetah-v5", env_steps=100_000, warmup_steps=1000, updates_per_step=10
        )
    )
    td3: MageTD3Config = Field(default_factory=MageTD3Config)
    model: ModelConfig = Field(default_factory=ModelConfig)

    @model_validator(mode="after")
    def _check(self) -> MageConfig:
        if self.imagined_batch % self.model.ensemble_size:
            raise ValueError(
                f"imagined_batch ({self.imagined_batch}) must be a multiple of "
                f"model.ensemble_size ({self.model.ensemble_size}): members share it evenly"
            )
        return self
