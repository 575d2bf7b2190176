"""The annotation service: a pool of annotator actors answering caption-pair questions.

Questions come in a fixed order (seeded sampling), cut into numbered batches of
`batch_size`. Batches already in the preference store are skipped; the rest go to the
actors, at most `batches_per_actor` queued on each (backpressure: a slow model never gets a
pile of work it cannot finish, and a kill loses at most the batches in flight). A batch is
written to the store as soon as it comes back, so the store only ever holds whole batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from maestro.feedback.pairs import Question
from maestro.feedback.preferences import PreferenceRecord, PreferenceStore
from maestro.llm import AnnotatorActor, AnnotatorConfig, PairQuestion, TaskText
from maestro.metrics import AnnotationMetrics


class AnnotationServiceConfig(BaseModel):
    """How many annotators serve, and how work is fed to them."""

    model_config = ConfigDict(extra="forbid")

    num_annotators: int = Field(default=1, ge=1, description="actors (vllm: one per GPU)")
    cpus_per_annotator: float = Field(default=1.0, gt=0)
    gpus_per_annotator: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=256, ge=1, description="questions per batch and shard")
    batches_per_actor: int = Field(default=2, ge=1, description="queued per actor")
    log_every_batches: int = Field(default=5, ge=1)
    examples: int = Field(default=20, ge=0, description="answers kept as MLflow examples")
    restarts: int = Field(
        default=3,
        ge=0,
        description="times a dead annotator actor is restarted; its batches in flight are "
        "asked again (answering is idempotent)",
    )


@dataclass
class AnnotationResult:
    """What this call of `annotate` did (already-stored batches are not counted)."""

    batches_done: int
    pairs: int
    invalid: int
    seconds: float
    examples: list[dict[str, Any]]

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0


def batches_of(questions: Sequence[Question], size: int) -> list[list[Question]]:
    """Batch k holds questions[k * size:(k + 1) * size]."""
    return [list(questions[i : i + size]) for i in range(0, len(questions), size)]


def annotate(
    questions: Sequence[Question],
    task: TaskText,
    preferences: PreferenceStore,
    annotator: AnnotatorConfig,
    service: AnnotationServiceConfig,
    progress: Callable[..., Any] | None = None,
    on_progress: Callable[[dict[str, float], int], None] | None = None,
    metrics: AnnotationMetrics | None = None,
    pool: list | None = None,
) -> AnnotationResult:
    """Answer every question not yet in `preferences`, batch by batch.

    `on_progress(metrics, pairs_done)` is called every few batches with throughput, the
    invalid-answer rate and the queue depth (for MLflow); `metrics` exports the same to
    Prometheus per batch. The queue depth counts questions not yet answered (queued or in
    flight), in both. The annotators are started here when needed and stopped at the end,
    unless the caller keeps them in `pool` (a list, filled on the first call that has
    questions to ask, left running for the next: MaestroMotif asks one set per skill)."""
    import ray

    batches = batches_of(questions, service.batch_size)
    done = preferences.done_batches()
    todo = [k for k in range(len(batches)) if k not in done]
    result = AnnotationResult(0, 0, 0, 0.0, [])
    if not todo:
        return result

    actors = pool if pool is not None else []
    if not actors:
        actors += annotator_pool(annotator, service, min(service.num_annotators, len(todo)))
    start = time.perf_counter()
    queue = list(reversed(todo))  # pop() gives the lowest batch number first
    in_flight: dict[Any, tuple[int, int, float]] = {}
    load = {i: 0 for i in range(len(actors))}
    total_pairs = sum(len(batches[k]) for k in todo)
    bar = progress(total_pairs, "annotating", unit="pair") if progress else None
    try:
        while queue or in_flight:
            for index, actor in enumerate(actors):  # fill every actor up to its quota
                while queue and load[index] < service.batches_per_actor:
                    k = queue.pop()
                    asked = [PairQuestion(q.caption_1, q.caption_2, task) for q in batches[k]]
                    in_flight[actor.judge.remote(asked)] = (k, index, time.perf_counter())
                    load[index] += 1
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            k, index, submitted = in_flight.pop(ready[0])
            load[index] -= 1
            judgements = ray.get(ready[0])
            now = time.time()
            records = [
                PreferenceRecord(
                    q.id, q.caption_1, q.caption_2, j.label, j.raw, j.model, j.prompt_version, now
                )
                for q, j in zip(batches[k], judgements, strict=True)
            ]
            preferences.write_batch(k, records)
            invalid = sum(not r.valid for r in records)
            result.batches_done += 1
            result.pairs += len(records)
            result.invalid += invalid
            result.seconds = time.perf_counter() - start
            # Questions (not batches) still queued or in flight: the unit of both the
            # Prometheus gauge and MLflow's annotation/queue_depth.
            waiting = total_pairs - result.pairs
            if metrics is not None:
                metrics.record(
                    labelled=len(records) - invalid,
                    invalid=invalid,
                    queue_depth=waiting,
                    batch_seconds=time.perf_counter() - submitted,
                )
            room = service.examples - len(result.examples)
            result.examples += [_example(r) for r in records[: max(room, 0)]]
            if bar is not None:
                bar.set_postfix(
                    pairs_per_s=f"{result.pairs_per_s:.1f}",
                    invalid=f"{result.invalid / result.pairs:.1%}",
                    refresh=False,
                )
                bar.update(len(records))
            if on_progress and (
                result.batches_done % service.log_every_batches == 0 or not in_flight
            ):
                on_progress(
                    {
                        "annotation/pairs_per_s": result.pairs_per_s,
                        "annotation/invalid_rate": result.invalid / result.pairs,
                        "annotation/queue_depth": waiting,
                    },
                    result.pairs,
                )
    finally:
        if bar is not None:
            bar.close()
        if pool is None:
            stop_pool(actors)
    return result


def annotator_pool(annotator: AnnotatorConfig, service: AnnotationServiceConfig, size: int) -> list:
    """`size` annotator actors (`AnnotatorActor`), restarted by Ray if they die."""
    import ray

    actor_class = ray.remote(
        num_cpus=service.cpus_per_annotator,
        num_gpus=service.gpus_per_annotator,
        max_restarts=service.restarts,
        max_task_retries=service.restarts,
    )(AnnotatorActor)
    return [actor_class.remote(annotator.model_dump()) for _ in range(size)]


def stop_pool(actors: list) -> None:
    import ray

    for actor in actors:
        ray.kill(actor)


def _example(record: PreferenceRecord) -> dict[str, Any]:
    return {
        "caption_1": record.caption_1,
        "caption_2": record.caption_2,
        "label": record.label,
        "raw_answer": record.raw_answer,
    }
