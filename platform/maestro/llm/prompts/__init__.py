"""Prompts as data: YAML files in this folder, loaded by name, or any YAML file by path.

A prompt file holds a `version` id, a `system` message, the free-form `user` template, the
constrained-choice `direct_user` template with its `choices` (answer text -> label), the
`retry` message (sent after an answer that could not be read, asking for the final answer
in the required format), and `tasks` (optional): per task a `modifier` (the sentence that steers the
language model; it may be empty) and a `goal` (what the embedding backend compares captions
with). Templates
name their fields in braces: `{modifier}`, `{caption_1}`, `{caption_2}`; any other brace is
literal text. `retry` is plain text and names no fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

PROMPTS_DIR = Path(__file__).resolve().parent
TEMPLATE_FIELDS = ("modifier", "caption_1", "caption_2")
# Only a bare name in braces is a field, so JSON-like text such as {"description_1": ...}
# stays literal.
FIELD_PATTERN = re.compile(r"\{(\w+)\}")
VALID_LABELS = (0, 1, 2)


class PromptError(ValueError):
    """A prompt file is missing, malformed, or names an unknown task."""


@dataclass(frozen=True)
class TaskText:
    """What a task says to the judge: `modifier` for language models, `goal` for embeddings."""

    name: str
    modifier: str
    goal: str


@dataclass(frozen=True)
class PromptSet:
    """One versioned prompt: templates, constrained choices and task texts."""

    version: str
    system: str
    user: str
    direct_user: str
    choices: dict[str, int]
    retry: str
    tasks: dict[str, TaskText]

    def task(self, name: str) -> TaskText:
        """The task called `name`; PromptError names the known tasks otherwise."""
        if name not in self.tasks:
            known = ", ".join(sorted(self.tasks))
            raise PromptError(f"prompt {self.version}: unknown task {name!r} (known: {known})")
        return self.tasks[name]

    def messages(
        self, caption_1: str, caption_2: str, task: TaskText, direct: bool = False
    ) -> list[dict[str, str]]:
        """Chat messages (system, user) asking to compare the two captions for `task`.
        `direct` asks for a bare choice (for constrained decoding)."""
        values = {"modifier": task.modifier, "caption_1": caption_1, "caption_2": caption_2}
        template = self.direct_user if direct else self.user
        # One pass, so a caption that happens to contain "{caption_2}" is not expanded.
        user = FIELD_PATTERN.sub(lambda match: values[match.group(1)], template)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def retry_messages(self, messages: list[dict[str, str]], answer: str) -> list[dict[str, str]]:
        """The conversation `messages` continued with the model's unreadable `answer` and the
        `retry` message asking for the final answer in the required format."""
        return [
            *messages,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": self.retry},
        ]


def messages_to_text(messages: list[dict[str, str]]) -> str:
    """A plain-text prompt for models without a chat template: the messages in order, each
    earlier answer (assistant message) after the cue `Answer:`, then the cue for the next
    answer."""
    parts = [
        f"Answer: {message['content'].strip()}"
        if message["role"] == "assistant"
        else message["content"]
        for message in messages
    ]
    return "\n\n".join(parts) + "\n\nAnswer:"


def _text(raw: dict, key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PromptError(f"{where}: `{key}` must be a non-empty string")
    return value.strip()


def _check_template(template: str, key: str, where: str) -> None:
    fields = set(FIELD_PATTERN.findall(template))
    unknown = fields - set(TEMPLATE_FIELDS)
    if unknown:
        raise PromptError(f"{where}: `{key}` names unknown fields {sorted(unknown)}")
    missing = {"caption_1", "caption_2"} - fields
    if missing:
        raise PromptError(f"{where}: `{key}` must contain {sorted(missing)}")


def prompt_path(name: str) -> Path:
    """The file for a prompt `name` (a file in this folder, without .yaml) or a path."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    return PROMPTS_DIR / f"{name}.yaml"


def load_prompt_set(name: str = "motif") -> PromptSet:
    """Load and validate a prompt file by name or path."""
    path = prompt_path(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml")))
        raise PromptError(f"prompt {name!r}: no file {path} (bundled prompts: {known})")
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise PromptError(f"{where}: not valid YAML ({error})") from None
    if not isinstance(raw, dict):
        raise PromptError(f"{where}: expected a mapping at the top level")
    user = _text(raw, "user", where)
    direct_user = _text(raw, "direct_user", where)
    _check_template(user, "user", where)
    _check_template(direct_user, "direct_user", where)
    retry = _text(raw, "retry", where)
    if FIELD_PATTERN.search(retry):
        raise PromptError(f"{where}: `retry` is plain text; it names no fields")
    choices = raw.get("choices")
    if (
        not isinstance(choices, dict)
        or not choices
        or any(label not in VALID_LABELS for label in choices.values())
    ):
        raise PromptError(f"{where}: `choices` must map answer texts to labels 0, 1 or 2")
    # A prompt whose tasks come from elsewhere (MaestroMotif's skills file) has none.
    tasks_raw = raw.get("tasks", {})
    if not isinstance(tasks_raw, dict):
        raise PromptError(f"{where}: `tasks` must map task names to modifier and goal")
    tasks = {}
    for task_name, body in tasks_raw.items():
        if not isinstance(body, dict):
            raise PromptError(f"{where}: task {task_name!r} must have `modifier` and `goal`")
        task_where = f"{where}: task {task_name!r}"
        modifier = body.get("modifier")
        if not isinstance(modifier, str):  # may be empty: no steering sentence at all
            raise PromptError(f"{task_where}: `modifier` must be a string")
        tasks[task_name] = TaskText(task_name, modifier.strip(), _text(body, "goal", task_where))
    return PromptSet(
        version=_text(raw, "version", where),
        system=_text(raw, "system", where),
        user=user,
        direct_user=direct_user,
        choices={str(text): int(label) for text, label in choices.items()},
        retry=retry,
        tasks=tasks,
    )
