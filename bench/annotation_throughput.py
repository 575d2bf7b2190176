"""Labelled pairs/s of the embedding judge as the annotation service asks it (each distinct
question once, embeddings cached), against the same judge asked every drawn pair, repeats
included, with nothing cached, on a NetHack dataset collected in the same run.

    python bench/annotation_throughput.py [--shards 4] [--draws 4000] [--repeats 3]

Both sides label the same pair draws and feed the judge batches of `--batch-size` questions,
as the annotation service does:

- without de-duplication (Motif's annotation): every draw is a question, and every caption
  of every question is embedded, even when the same caption or the same pair came before in
  the batch;
- with de-duplication and cache (the service): the distinct questions that are not two
  identical captions (`pending`; an identical pair is a tie, never asked), each asked once,
  its answer standing for all its draws; the judge embeds each distinct caption once per
  batch and caches embeddings across batches.

Throughput is drawn pairs labelled per second on both sides. The sides alternate (without,
with, without, with, ...), each timing starting from an empty cache, and the fastest timing
of each is kept, since a shared machine only ever adds time. The ratio is pairs/s with over
pairs/s without.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from maestro.feedback.collect import CollectConfig, collect, load_caption_counts
from maestro.feedback.pairs import PairSamplingConfig, Question, pending, sample_pairs
from maestro.llm import AnnotatorConfig, PairQuestion, TaskText, load_prompt_set
from maestro.llm.backends import EmbeddingAnnotator
from maestro.store import LocalStore


class EveryCaptionAnnotator(EmbeddingAnnotator):
    """The embedding judge with no de-duplication and no cache: it embeds every text it is
    given, repeats included, as a judge asked each drawn pair on its own would."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(
            list(texts),
            batch_size=self.options.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.astype(np.float32)


def judge_all(
    annotator: EmbeddingAnnotator, questions: list[Question], task: TaskText, batch_size: int
) -> float:
    """Wall seconds for `annotator` to answer `questions`, `batch_size` per call."""
    start = time.perf_counter()
    for i in range(0, len(questions), batch_size):
        batch = questions[i : i + batch_size]
        annotator.judge([PairQuestion(q.caption_1, q.caption_2, task) for q in batch])
    return time.perf_counter() - start


def ready(annotator: EmbeddingAnnotator, task: TaskText) -> EmbeddingAnnotator:
    """`annotator` after one untimed call (the model's first call is slower)."""
    annotator.judge([PairQuestion("warm", "up", task)])
    return annotator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timings of each side")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        collect(store, "dataset", CollectConfig(num_shards=args.shards, num_actors=2), seed=0)
        captions = load_caption_counts(store, "dataset")
    task = load_prompt_set("motif").task("score")
    sample = sample_pairs(captions, PairSamplingConfig(num_draws=args.draws), seed=0)
    every_draw = [q for q in sample.questions for _ in range(q.count)]
    asked = pending(sample.questions, [])

    plain = ready(EveryCaptionAnnotator(AnnotatorConfig(embedding={"cache_size": 0})), task)
    without, with_dedup = [], []
    for _ in range(args.repeats):
        without.append(judge_all(plain, every_draw, task, args.batch_size))
        # A new judge each time: its cache starts empty, as the service's does.
        cached = ready(EmbeddingAnnotator(AnnotatorConfig()), task)
        with_dedup.append(judge_all(cached, asked, task, args.batch_size))

    def rate(seconds: list[float]) -> str:
        best, median = len(every_draw) / min(seconds), len(every_draw) / statistics.median(seconds)
        return f"best {best:,.0f} labelled pairs/s (median {median:,.0f})"

    print(f"dataset: {captions.rows} captions, {len(captions.captions)} distinct")
    print(f"draws: {sample.draws}, distinct questions: {len(sample.questions)}, ", end="")
    print(f"asked with de-duplication: {len(asked)} (the rest are identical captions)")
    print(f"timings: {args.repeats} of each side, alternated, batches of {args.batch_size}")
    print(f"without de-duplication or cache: {rate(without)}")
    print(f"with de-duplication and cache:   {rate(with_dedup)}")
    print(f"ratio with / without (best of each): {min(without) / min(with_dedup):.1f}")


if __name__ == "__main__":
    main()
