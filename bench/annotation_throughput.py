"""Labelled pairs/s of the embedding judge with de-duplication and caching, against the same
draws asked one by one with no cache, on a NetHack dataset collected in the same run.

    python bench/annotation_throughput.py [--shards 4] [--draws 4000]

Both sides feed the judge batches of `--batch-size` questions, as the annotation service
does. Both label the same pair draws (the de-duplicated side answers each distinct question
once and reuses the answer for its repeats); the ratio is pairs/s with over pairs/s without.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from maestro.llm import AnnotatorConfig, PairQuestion, load_prompt_set, make_annotator
from maestro.methods.motif.collect import CollectConfig, collect, load_caption_counts
from maestro.methods.motif.pairs import PairSamplingConfig, sample_pairs
from maestro.store import LocalStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        collect(store, "dataset", CollectConfig(num_shards=args.shards, num_actors=2), seed=0)
        captions = load_caption_counts(store, "dataset")
    task = load_prompt_set("motif").task("score")
    sample = sample_pairs(captions, PairSamplingConfig(num_draws=args.draws), seed=0)
    draws = [q for q in sample.questions for _ in range(q.count)]

    def judge_all(annotator, questions) -> float:
        start = time.perf_counter()
        for i in range(0, len(questions), args.batch_size):
            batch = questions[i : i + args.batch_size]
            annotator.judge([PairQuestion(q.caption_1, q.caption_2, task) for q in batch])
        return time.perf_counter() - start

    plain = make_annotator(AnnotatorConfig(embedding={"cache_size": 0}))
    plain.judge([PairQuestion("warm", "up", task)])
    without = len(draws) / judge_all(plain, draws)

    cached = make_annotator(AnnotatorConfig())
    cached.judge([PairQuestion("warm", "up", task)])
    with_dedup = len(draws) / judge_all(cached, sample.questions)

    print(f"dataset: {len(captions)} captions, {len(set(captions))} distinct")
    print(f"draws: {len(draws)}, distinct questions: {len(sample.questions)}")
    print(f"without de-duplication or cache: {without:,.0f} labelled pairs/s")
    print(f"with de-duplication and cache:   {with_dedup:,.0f} labelled pairs/s")
    print(f"ratio: {with_dedup / without:.1f}")


if __name__ == "__main__":
    main()
