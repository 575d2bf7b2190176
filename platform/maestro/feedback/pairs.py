"""Caption pairs to annotate: Motif's uniform sampling, with de-duplication.

Motif draws pairs of observations uniformly from the collected dataset and asks the
language model which caption of each pair shows more progress. Captions repeat heavily
("It's a wall." is a large share of any random-policy dataset), so most draws repeat a
question already drawn. Here a question is the unordered pair of captions: a pair and its
mirror are one question, with one id, asked once. Each question keeps how many draws it
stands for (`count`), so the reward model can still weight it as Motif's dataset would.

- Question id: SHA-256 of the canonical (sorted) pair and an optional namespace (e.g. the
  task's preference and the prompt version, so that changing either asks afresh). Stable
  across processes and machines.
- Presentation order: the order in which the annotator sees the captions comes from the
  id, not from the draw, so a question is always asked the same way, and which caption
  comes first is unrelated to what the captions say (sorted order would put the empty
  caption first every time, and language models favour positions).
- Identical captions (both draws show the same caption) are questions too, never sent to
  the annotator: their answer is a tie, as in Motif. The loss learns nothing from them, but
  their captions count in the reward's normalisation (`reward_training.py`).
- `pending(questions, answered_ids)`: the questions still to ask.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from maestro.feedback.collect import CaptionCounts


class PairSamplingConfig(BaseModel):
    """How pairs of captions are drawn."""

    model_config = ConfigDict(extra="forbid")

    num_draws: int = Field(default=10000, ge=1, description="pairs drawn, repeats included")
    mode: Literal["uniform", "unique"] = Field(
        default="uniform",
        description="uniform: two rows of the dataset (Motif); unique: two distinct captions",
    )
    namespace: str = Field(default="", description="mixed into question ids")


@dataclass(frozen=True)
class Question:
    """One pair of captions to compare. `caption_1`/`caption_2` are in presentation order."""

    id: str
    caption_1: str
    caption_2: str
    count: int = 1  # the draws it stands for

    @property
    def identical(self) -> bool:
        """Both sides show the same caption: a tie, not asked."""
        return self.caption_1 == self.caption_2

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready record."""
        return {
            "id": self.id,
            "caption_1": self.caption_1,
            "caption_2": self.caption_2,
            "count": self.count,
        }


def canonical(a: str, b: str) -> tuple[str, str]:
    """The pair in sorted order (the same for a pair and its mirror)."""
    return (a, b) if a <= b else (b, a)


def question_id(a: str, b: str, namespace: str = "") -> str:
    """The id of the question comparing captions `a` and `b` (in either order)."""
    first, second = canonical(a, b)
    payload = json.dumps([namespace, first, second], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def make_question(a: str, b: str, namespace: str = "", count: int = 1) -> Question:
    """The question about `a` and `b`, ordered for presentation by a bit of its id."""
    qid = question_id(a, b, namespace)
    first, second = canonical(a, b)
    if int(qid[-1], 16) & 1:
        first, second = second, first
    return Question(qid, first, second, count)


@dataclass
class PairSample:
    """Distinct questions in first-drawn order, and what the draws looked like."""

    questions: list[Question]
    draws: int

    @property
    def identical(self) -> int:
        """Draws whose two sides show the same caption."""
        return sum(q.count for q in self.questions if q.identical)

    @property
    def duplicates(self) -> int:
        """Draws that repeated an earlier question (the language-model calls saved)."""
        return self.draws - len(self.questions)

    def stats(self) -> dict[str, float]:
        """Numbers for MLflow."""
        return {
            "pairs/draws": self.draws,
            "pairs/questions": len(self.questions),
            "pairs/asked": sum(not q.identical for q in self.questions),
            "pairs/duplicates": self.duplicates,
            "pairs/identical": self.identical,
            "pairs/dedup_ratio": len(self.questions) / max(self.draws, 1),
        }


def sample_pairs(dataset: CaptionCounts, config: PairSamplingConfig, seed: int) -> PairSample:
    """Draw `config.num_draws` pairs from the dataset (uniform mode: two rows, each caption
    as likely as its share of the rows; unique mode: two distinct captions) and merge them
    into distinct questions. Same dataset, config and seed: same questions in the same
    order."""
    pool = dataset.captions
    size = config.num_draws
    available = len(pool) if config.mode == "unique" else dataset.rows
    if available < 2:
        what = "distinct captions" if config.mode == "unique" else "captions"
        raise ValueError(f"need at least 2 {what} to draw pairs from, got {available}")
    rng = np.random.default_rng(seed)
    if config.mode == "unique":
        first = rng.integers(len(pool), size=size)
        # Two distinct captions: the second index skips over the first.
        second = rng.integers(len(pool) - 1, size=size)
        second = second + (second >= first)
    else:
        share = dataset.counts / dataset.rows
        first = rng.choice(len(pool), size=size, p=share)
        second = rng.choice(len(pool), size=size, p=share)

    counts: dict[str, int] = {}
    order: dict[str, tuple[str, str]] = {}
    for i, j in zip(first.tolist(), second.tolist(), strict=True):
        a, b = pool[i], pool[j]
        qid = question_id(a, b, config.namespace)
        if qid in counts:
            counts[qid] += 1
        else:
            counts[qid] = 1
            order[qid] = (a, b)
    questions = [
        make_question(a, b, config.namespace, counts[qid]) for qid, (a, b) in order.items()
    ]
    return PairSample(questions, config.num_draws)


def pending(questions: Iterable[Question], answered_ids: Iterable[str]) -> list[Question]:
    """The questions to ask: not identical, and not among `answered_ids`, in their order."""
    answered = set(answered_ids)
    return [q for q in questions if not q.identical and q.id not in answered]
