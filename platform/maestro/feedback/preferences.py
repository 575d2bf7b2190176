"""The preference store: labelled caption pairs as Parquet shards plus a manifest.

Questions are answered in fixed, numbered batches (batch k is always the same questions for
the same seed). Each finished batch becomes one shard, `shards/batch-<k>.parquet`, written
atomically; then the manifest (`manifest.json`: the finished batches and their checksums) is
rewritten atomically. A crash between the two leaves a shard the manifest does not name; it
is ignored and overwritten when the batch is redone. So every batch is in the store exactly
once, and a resumed annotation ends with the same records as an uninterrupted one.

Each record keeps the pair, the label (1: caption 1 shows more progress, 2: caption 2,
0: neither/tie, null: the answer could not be parsed), whether it is valid, the raw answer,
the model, the prompt version and the time.

Beside the shards, `questions.parquet` holds every drawn question (identical-caption ties
included, which are never asked) with the number of draws it stands for: the weights of
reward training.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from maestro.feedback.pairs import Question
from maestro.store import ArtifactStore

SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("caption_1", pa.string()),
        ("caption_2", pa.string()),
        ("label", pa.int8()),
        ("valid", pa.bool_()),
        ("raw_answer", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("annotated_at", pa.float64()),
    ]
)
QUESTIONS_SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("caption_1", pa.string()),
        ("caption_2", pa.string()),
        ("count", pa.int64()),
    ]
)


@dataclass
class PreferenceRecord:
    """One answered question."""

    question_id: str
    caption_1: str
    caption_2: str
    label: int | None
    raw_answer: str
    model: str
    prompt_version: str
    annotated_at: float
    valid: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.label not in (None, 0, 1, 2):
            raise ValueError(f"label must be 0, 1, 2 or None, got {self.label!r}")
        self.valid = self.label is not None


class PreferenceStore:
    """Preference shards and their manifest under `prefix` in an artifact store."""

    def __init__(self, store: ArtifactStore, prefix: str):
        self.store = store
        self.prefix = prefix.rstrip("/")
        self.manifest_key = f"{self.prefix}/manifest.json"

    def manifest(self) -> dict:
        """`{"batches": {"<k>": {"rows": n, "sha256": ...}}}` (empty when new)."""
        if self.store.exists(self.manifest_key):
            return self.store.get_json(self.manifest_key)
        return {"batches": {}}

    def done_batches(self) -> set[int]:
        """Numbers of the batches already stored."""
        return {int(k) for k in self.manifest()["batches"]}

    def write_questions(self, questions: list[Question]) -> None:
        """Store the drawn questions and their draw counts (once: the same for a rerun)."""
        key = f"{self.prefix}/questions.parquet"
        if self.store.exists(key):
            return
        table = pa.Table.from_pydict(
            {
                "question_id": [q.id for q in questions],
                "caption_1": [q.caption_1 for q in questions],
                "caption_2": [q.caption_2 for q in questions],
                "count": [q.count for q in questions],
            },
            schema=QUESTIONS_SCHEMA,
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.store.put_bytes(key, buffer.getvalue())

    def read_questions(self) -> pa.Table:
        """The drawn questions with their draw counts (`write_questions`)."""
        return pq.read_table(io.BytesIO(self.store.get_bytes(f"{self.prefix}/questions.parquet")))

    def shard_key(self, batch: int) -> str:
        return f"{self.prefix}/shards/batch-{batch:06d}.parquet"

    def write_batch(self, batch: int, records: list[PreferenceRecord]) -> None:
        """Store one finished batch: its shard, then the manifest naming it."""
        table = pa.Table.from_pylist(
            [{name: getattr(r, name) for name in SCHEMA.names} for r in records], schema=SCHEMA
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        digest = self.store.put_bytes(self.shard_key(batch), buffer.getvalue())
        manifest = self.manifest()
        manifest["batches"][str(batch)] = {"rows": len(records), "sha256": digest}
        self.store.put_json(self.manifest_key, manifest)

    def read(self) -> pa.Table:
        """All stored records, in batch order."""
        batches = sorted(self.done_batches())
        tables = [
            pq.read_table(io.BytesIO(self.store.get_bytes(self.shard_key(b)))) for b in batches
        ]
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table()

    def answered_ids(self) -> set[str]:
        """Ids of every question already answered (valid or not)."""
        return set(self.read().column("question_id").to_pylist())

    def counts(self) -> dict[str, int]:
        """How many records, valid ones, invalid ones, and each label."""
        table = self.read()
        labels = table.column("label").to_pylist()
        return {
            "records": len(labels),
            "valid": sum(label is not None for label in labels),
            "invalid": sum(label is None for label in labels),
            "prefer_1": labels.count(1),
            "prefer_2": labels.count(2),
            "ties": labels.count(0),
        }
