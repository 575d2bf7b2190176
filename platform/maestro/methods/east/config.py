"""The spec's `config:` block for EAST: one point (beta, temperature) on one seed is a
trial; the spec's arms (or a sweep) set `beta` and `agent.temperature`. The table of paper
settings against Maestro's is docs/methods/east.md."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from maestro.envs.text_bandit import TextBanditConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SmokeModelConfig(Strict):
    """The tiny causal transformer trained from scratch when no `model` is given: a Llama
    architecture fitted to bandit transcripts written by behaviour policies that explore
    to different degrees (`smoke_model.py`)."""

    transcripts: int = Field(default=1500, ge=10)
    policies: dict[str, float] = Field(
        default={
            "greedy": 0.3,
            "epsilon_0.1": 0.2,
            "epsilon_0.3": 0.2,
            "thompson": 0.2,
            "uniform": 0.1,
        },
        description="behaviour policy -> share of transcripts: greedy, uniform, thompson, "
        "epsilon_<eps>",
    )
    vocab_size: int = Field(default=512, ge=64)

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, policies: dict[str, float]) -> dict[str, float]:
        for name, share in policies.items():
            epsilon = name.removeprefix("epsilon_")
            known = name in ("greedy", "uniform", "thompson") or (
                epsilon != name and epsilon.replace(".", "", 1).isdigit() and float(epsilon) <= 1
            )
            if not known:
                raise ValueError(f"unknown behaviour policy {name!r}")
            if share < 0:
                raise ValueError(f"{name}: a share below 0")
        if sum(policies.values()) <= 0:
            raise ValueError("the shares add up to 0")
        return policies

    hidden_size: int = Field(default=64, ge=8)
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=4, ge=1)
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=5e-3, gt=0)


class AgentConfig(Strict):
    """How the language model plays: the `hf` backend's sampling."""

    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=32, ge=1)
    batch_size: int = Field(default=128, ge=1, description="prompts per generate call")
    device: str = "cpu"
    dtype: str = Field(default="auto", description="torch dtype name, or auto")


class SteeringConfig(Strict):
    """How the steering vector is built (the prepare stage)."""

    layer: int | None = Field(default=None, description="decoder layer; none: the middle one")
    episodes: int = Field(default=32, ge=1, description="unsteered episodes whose prompts are used")
    samples: int = Field(default=8, ge=2, description="completions per prompt (K)")
    centred: bool = Field(default=True, description="subtract the mean activation first")


class EastConfig(Strict):
    """The spec's `config:` block for EAST."""

    env: TextBanditConfig = Field(default_factory=TextBanditConfig)
    model: str | None = Field(
        default=None,
        description="a Hugging Face causal LM: a local folder or s3:// prefix; none: train "
        "the smoke model",
    )
    smoke_model: SmokeModelConfig = Field(default_factory=SmokeModelConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    steering: SteeringConfig = Field(default_factory=SteeringConfig)
    beta: float = Field(default=0.0, description="steering strength: beta * u is added")
    episodes: int = Field(default=16, ge=1, description="episodes a trial plays, side by side")
    samples: int = Field(
        default=8, ge=2, description="completions per prompt, for the action entropy"
    )
