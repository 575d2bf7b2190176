"""MaestroMotif's code-writing loop: a language model writes skill code, a text unit test runs
it, the model checks the results and rewrites, up to `rounds` rounds (the paper: 5).

One `CodeRequest` asks for one piece of code: the skills' initiation and termination
functions, the training policy over skills, or a task's policy over skills. Each round:

1. the model writes the code (the first round from the writing prompt, later rounds from
   the rewrite prompt, which shows the previous code and what was wrong with it);
2. the code is taken from the completion (its last ```python block, else the whole text)
   and compiled by the sandbox (`compile_skill_code`), which refuses code breaking its rules
   or missing a required function;
3. the text unit test runs every function on a handful of scenarios in the sandbox
   (`run_unit_test`); a call that fails or returns the wrong type (not a bool from an
   initiation or termination function, not a skill name from a policy) fails the round;
4. the model reads the code and the transcript and answers with a verdict, its last
   `VERDICT: PASS` or `VERDICT: FAIL <reason>` line.

A PASS returns a `GeneratedCode`; a failure at any step feeds its reason into the next
round's rewrite prompt; after `rounds` failed rounds `CodegenFailed` carries every round's
record. Nothing is stored by the loop: `store_generated` keeps accepted code in the
artifact store under its content digest. `load_user_code` reads hand-written code into the
same `GeneratedCode` type (model "user"), so offline runs take the same path.

The prompts are data: `codegen_prompts.yaml` beside this file (or a file named by
`CodegenConfig.prompts`); every generated code records the SHA-256 of the prompt file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from maestro.llm.backends import AnnotatorConfig, make_annotator
from maestro.llm.prompts import FIELD_PATTERN, messages_to_text
from maestro.llm.sandbox import (
    SkillCallFailed,
    SkillCode,
    SkillCodeError,
    SkillSandbox,
    compile_skill_code,
)
from maestro.methods.maestromotif.features import FEATURE_NAMES
from maestro.methods.maestromotif.skills import SKILL_NAME
from maestro.store import ArtifactStore

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "codegen_prompts.yaml"

Kind = Literal["skills", "training_policy", "task_policy"]
POLICY_FUNCTION = "policy"
# A fenced block of Python (```python or ```py); without one the whole completion is code.
PYTHON_BLOCK = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
VERDICT_LINE = re.compile(r"^\W*VERDICT\W*(PASS|FAIL)\b(.*)$", re.IGNORECASE | re.MULTILINE)
# Problems of one unit test named in a rewrite prompt (the rest are counted).
MAX_PROBLEMS_SHOWN = 3


# ---------------------------------------------------------------- configuration and request


class CodegenConfig(BaseModel):
    """How code is written: which language model, how many rounds, how long an answer."""

    model_config = ConfigDict(extra="forbid")

    llm: AnnotatorConfig = Field(description="the language model (a text backend)")
    rounds: int = Field(default=5, ge=1, description="write-test-check rounds (the paper: 5)")
    max_tokens: int = Field(default=2048, ge=1, description="per completion, code and verdicts")
    prompts: str | None = Field(
        default=None, description="a prompts YAML file; default: codegen_prompts.yaml"
    )
    gpus: float = Field(default=0.0, ge=0, description="GPUs of the actor holding the model")
    cpus: float = Field(default=1.0, gt=0, description="CPUs of the actor holding the model")

    @field_validator("llm")
    @classmethod
    def _text_backend(cls, llm: AnnotatorConfig) -> AnnotatorConfig:
        if llm.backend == "embedding":
            raise ValueError("code is written by a text backend (vllm, openai or hf)")
        return llm


class CodeRequest(BaseModel):
    """One piece of code to write: `kind`, the skills (name -> what the skill does, in the
    skills' order), for a task policy the task's name and description, and for a policy
    optionally the accepted skills code (`skills_source`), whose initiation functions then
    decide `available` in the policy's unit test (without it every skill is available)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    skills: dict[str, str] = Field(min_length=1)
    task_name: str | None = None
    task: str | None = None
    skills_source: str | None = None

    @field_validator("skills")
    @classmethod
    def _skill_names(cls, skills: dict[str, str]) -> dict[str, str]:
        for name in skills:
            if not SKILL_NAME.match(name):
                raise ValueError(f"skill name {name!r} must be a lower-case identifier")
        return skills

    @model_validator(mode="after")
    def _task_for_task_policy(self) -> CodeRequest:
        if self.kind == "task_policy" and not (self.task_name and self.task):
            raise ValueError("a task_policy request needs task_name and task")
        if self.kind == "skills" and self.skills_source is not None:
            raise ValueError("skills_source is for policy requests")
        return self

    @property
    def piece(self) -> str:
        """What is written, for messages and logs: "skills", "training_policy" or
        "task_policy <task_name>"."""
        return f"task_policy {self.task_name}" if self.kind == "task_policy" else self.kind

    @property
    def skill_names(self) -> tuple[str, ...]:
        return tuple(self.skills)

    @property
    def functions(self) -> tuple[str, ...]:
        """The functions the code must define: `initiation_<skill>` and
        `termination_<skill>` for every skill, or `policy`."""
        if self.kind == "skills":
            return initiation_functions(self.skill_names) + termination_functions(self.skill_names)
        return (POLICY_FUNCTION,)


def initiation_functions(skill_names: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"initiation_{name}" for name in skill_names)


def termination_functions(skill_names: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"termination_{name}" for name in skill_names)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class GeneratedCode:
    """Accepted code: its source and SHA-256 digest (its version), the functions it defines,
    the round it passed in (0 for user code), its unit-test transcript, the checker's whole
    answer ending in its verdict, the model that wrote it ("user" for hand-written code)
    and the SHA-256 of the prompt file ("" for user code)."""

    piece: str
    functions: tuple[str, ...]
    source: str
    digest: str
    round: int
    transcript: str
    verdict: str
    model: str
    prompts_digest: str

    def skill_code(self) -> SkillCode:
        """The code compiled for a `SkillSandbox`."""
        return compile_skill_code(self.source, self.functions)

    def metadata(self) -> dict[str, Any]:
        """Everything but the source, as stored beside it."""
        metadata = asdict(self)
        del metadata["source"]
        metadata["functions"] = list(self.functions)
        return metadata


Stage = Literal["refused", "unit_test", "checker", "passed"]


@dataclass(frozen=True)
class RoundRecord:
    """One round: the model's completion, the code taken from it, where the round ended
    (`refused` by the sandbox, failed the `unit_test`, failed by the `checker`, or
    `passed`), the reason (one line, "" when passed), the transcript and the checker's
    answer where the round got that far."""

    round: int
    completion: str
    code: str
    stage: Stage
    reason: str
    transcript: str = ""
    checker_answer: str = ""


class CodegenFailed(RuntimeError):
    """No code passed in `rounds` rounds; the message is one line (the piece, the number of
    rounds, the last reason) and `records` holds every round's `RoundRecord`."""

    def __init__(self, piece: str, records: Sequence[RoundRecord]):
        self.piece = piece
        self.records = tuple(records)
        last = records[-1]
        super().__init__(
            one_line(
                f"no code for {piece} passed in {len(records)} rounds; "
                f"round {last.round} {last.stage}: {last.reason}"
            )
        )


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- prompts


@dataclass(frozen=True)
class CodegenPrompts:
    """The prompt file: templates with `{field}`s, the feature lines, the sandbox rules and
    what each kind of code is for; `digest` is the file's SHA-256."""

    version: str
    system: str
    features: dict[str, str]
    rules: str
    pieces: dict[str, str]
    brief: str
    write: str
    check: str
    rewrite: str
    digest: str

    def brief_for(self, request: CodeRequest) -> str:
        """What is asked, shared by every prompt: the piece, skills, task, features and
        rules."""
        functions = "\n".join(f"- {name}(features)" for name in request.functions)
        piece = fill(self.pieces[request.kind], {"skill_functions": functions})
        skills = "\n".join(f"- {name}: {text}" for name, text in request.skills.items())
        task = f"\nThe task ({request.task_name}):\n{request.task}\n" if request.task else ""
        features = "\n".join(f"- {name}: {line}" for name, line in self.features.items())
        values = {
            "piece": piece,
            "skills": skills,
            "task": task,
            "features": features,
            "rules": self.rules,
        }
        return fill(self.brief, values)

    def write_prompt(self, brief: str) -> str:
        return fill(self.write, {"brief": brief})

    def rewrite_prompt(self, brief: str, code: str, problem: str) -> str:
        return fill(self.rewrite, {"brief": brief, "code": code, "problem": problem})

    def check_prompt(self, brief: str, code: str, transcript: str) -> str:
        return fill(self.check, {"brief": brief, "code": code, "transcript": transcript})


def fill(template: str, values: Mapping[str, str]) -> str:
    """`template` with each `{name}` in `values` replaced, in one pass (text put in is not
    expanded again); other braces stay as they are."""
    return FIELD_PATTERN.sub(lambda match: values.get(match.group(1), match.group(0)), template)


def load_codegen_prompts(path: str | Path | None = None) -> CodegenPrompts:
    """The prompt file at `path` (default: codegen_prompts.yaml beside this module).
    ValueError if a key is missing or the features it lists are not `FEATURE_NAMES`."""
    path = Path(path) if path else DEFAULT_PROMPTS
    data = path.read_bytes()
    raw = yaml.safe_load(data)
    texts = ("version", "system", "rules", "brief", "write", "check", "rewrite")
    missing = [key for key in (*texts, "features", "pieces") if key not in raw]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    if tuple(raw["features"]) != FEATURE_NAMES:
        raise ValueError(f"{path}: `features` must list {', '.join(FEATURE_NAMES)} in order")
    kinds = ("skills", "training_policy", "task_policy")
    if sorted(raw["pieces"]) != sorted(kinds):
        raise ValueError(f"{path}: `pieces` must describe {', '.join(kinds)}")
    return CodegenPrompts(
        **{key: str(raw[key]).strip() for key in texts},
        features={name: str(line) for name, line in raw["features"].items()},
        pieces={kind: str(text).strip() for kind, text in raw["pieces"].items()},
        digest=hashlib.sha256(data).hexdigest(),
    )


# ---------------------------------------------------------------- the text unit test


# The features at the first turn of a game; each scenario changes some of them.
GAME_START: dict[str, Any] = {
    "depth": 1,
    "dungeon_number": 0,
    "in_mines": False,
    "gold": 0,
    "hp": 14,
    "hp_max": 14,
    "xp_level": 1,
    "hunger": 1,
    "turn": 1,
    "message": "",
    "altar_visible": False,
    "shopkeeper_visible": False,
    "inventory_empty": False,
    "active_skill": None,
    "skill_turns": 0,
    "skill_start_depth": 1,
    "skill_start_available": (),
    "history": (),
    "available": (),
    "episode_random": 0.5,
}


@dataclass(frozen=True)
class Scenario:
    """A test situation: the game features that differ from `GAME_START` (`changes`), those
    that differed when the running skill started (`started`), the running skill and the
    skills run before it. Skill names the request does not have are replaced by its first
    skill (running) or dropped (before). A termination function is asked as if its own skill
    were the running one."""

    name: str
    summary: str
    changes: dict[str, Any] = field(default_factory=dict)
    started: dict[str, Any] = field(default_factory=dict)
    running: str | None = None
    before: tuple[str, ...] = ()


SKILL_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("start", "the first turn of a game on depth 1; no skill has run yet"),
    Scenario(
        "exploring",
        "a skill has run 120 turns on depth 1",
        {"turn": 121, "skill_turns": 120},
        running="discoverer",
    ),
    Scenario(
        "explored_600_turns",
        "a skill has run 600 turns on depth 1",
        {"turn": 601, "skill_turns": 600, "xp_level": 3, "gold": 40},
        running="discoverer",
    ),
    Scenario(
        "descended",
        "a skill started on depth 1 and the hero is now on depth 2, 40 turns later",
        {"depth": 2, "turn": 240, "skill_turns": 40},
        {"depth": 1},
        running="descender",
        before=("discoverer",),
    ),
    Scenario(
        "ascended",
        "a skill started on depth 2 and the hero is now on depth 1, 60 turns later",
        {"turn": 900, "skill_turns": 60, "xp_level": 4},
        {"depth": 2},
        running="ascender",
        before=("discoverer", "descender", "discoverer"),
    ),
    Scenario(
        "shopkeeper_appeared",
        "a shopkeeper came into view on depth 3 while a skill ran; the hero carries items",
        {"depth": 3, "turn": 1500, "skill_turns": 25, "shopkeeper_visible": True, "gold": 120},
        {"shopkeeper_visible": False},
        running="discoverer",
        before=("discoverer", "descender", "discoverer", "descender"),
    ),
    Scenario(
        "shopkeeper_empty_inventory",
        "a shopkeeper came into view on depth 3; the hero carries nothing",
        {
            "depth": 3,
            "turn": 1500,
            "skill_turns": 25,
            "shopkeeper_visible": True,
            "inventory_empty": True,
        },
        {"shopkeeper_visible": False},
        running="discoverer",
        before=("descender",),
    ),
    Scenario(
        "altar_appeared",
        "an altar came into view on depth 2 while a skill ran; the hero carries items",
        {"depth": 2, "turn": 800, "skill_turns": 30, "altar_visible": True},
        {"altar_visible": False},
        running="discoverer",
        before=("discoverer", "descender"),
    ),
    Scenario(
        "entered_mines",
        "a skill started on depth 2 and the hero is now on depth 3 in the Gnomish Mines",
        {"depth": 3, "dungeon_number": 2, "in_mines": True, "turn": 1100, "skill_turns": 30},
        {"depth": 2},
        running="descender",
        before=("discoverer", "descender", "discoverer"),
    ),
)
POLICY_SCENARIOS: tuple[Scenario, ...] = (
    *SKILL_SCENARIOS,
    Scenario(
        "start_random_low",
        "the first turn of a game whose episode_random is low",
        {"episode_random": 0.05},
    ),
    Scenario(
        "start_random_high",
        "the first turn of a game whose episode_random is high",
        {"episode_random": 0.95},
    ),
    Scenario(
        "explored_depth_4",
        "a skill has run 500 turns on depth 4 (deep for a young hero)",
        {"depth": 4, "turn": 3000, "skill_turns": 500, "xp_level": 5},
        running="discoverer",
        before=("discoverer", "descender", "discoverer", "descender"),
    ),
)


@dataclass(frozen=True)
class UnitTest:
    """A unit test's transcript (one line per call, plus each scenario's situation) and its
    problems: calls that failed or returned the wrong type, one line each."""

    transcript: str
    problems: tuple[str, ...]


def scenario_features(scenario: Scenario, skill_names: Sequence[str]) -> dict[str, Any]:
    """The scenario's features, the running skill and history resolved against
    `skill_names`; `available` and `skill_start_available` are left to the caller."""
    running = scenario.running
    if running is not None and running not in skill_names:
        running = skill_names[0]
    before = tuple(name for name in scenario.before if name in skill_names)
    features = {**GAME_START, **scenario.changes}
    features["active_skill"] = running
    features["history"] = (*before, running) if running else before
    features["skill_start_depth"] = scenario.started.get("depth", features["depth"])
    return features


def describe_features(features: Mapping[str, Any]) -> str:
    """The features that differ from `GAME_START`, as `name=value` pairs."""
    changed = [f"{name}={value!r}" for name, value in features.items() if GAME_START[name] != value]
    return ", ".join(changed) or "as at the start of a game"


def run_unit_test(
    request: CodeRequest, code: SkillCode, skills_code: SkillCode | None = None
) -> UnitTest:
    """Run every function of `code` on the request's scenarios in a sandbox. For a policy,
    `available` comes from `skills_code`'s initiation functions when given, else every skill
    is available; for skills code, from its own initiation functions."""
    skill_names = request.skill_names
    start = ", ".join(f"{name}={value!r}" for name, value in GAME_START.items())
    lines = [f"each scenario changes some features of the first turn of a game: {start}"]
    if request.kind == "skills":
        lines.append("termination_<skill> is called as if <skill> were the running skill")
    problems: list[str] = []
    with ExitStack() as stack:
        sandbox = stack.enter_context(SkillSandbox(code))
        if request.kind == "skills":
            initiation_sandbox = sandbox
        elif skills_code is not None:
            initiation_sandbox = stack.enter_context(SkillSandbox(skills_code))
        else:
            initiation_sandbox = None

        def call(scenario: Scenario, function: str, features: dict, check: Callable) -> Any:
            """One call, its transcript line, and a problem if it failed or `check` (the
            result's type) says so."""
            try:
                result = sandbox.call(function, features)
            except SkillCallFailed as failure:
                lines.append(f"scenario {scenario.name!r}: {function} -> failed: {failure}")
                problems.append(f"scenario {scenario.name!r}: {function} failed: {failure}")
                return None
            lines.append(f"scenario {scenario.name!r}: {function} -> {result!r}")
            wrong = check(result)
            if wrong:
                problems.append(f"scenario {scenario.name!r}: {function} returned {wrong}")
            return result

        def available(features: dict) -> tuple[str, ...]:
            """The skills whose initiation function is True on `features` (a failing one
            counts as False: its call on the scenario itself is reported)."""
            if initiation_sandbox is None:
                return skill_names
            features = {name: value for name, value in features.items() if name != "available"}
            names = []
            for name in skill_names:
                try:
                    if initiation_sandbox.call(f"initiation_{name}", features) is True:
                        names.append(name)
                except SkillCallFailed:
                    pass
            return tuple(names)

        scenarios = SKILL_SCENARIOS if request.kind == "skills" else POLICY_SCENARIOS
        for scenario in scenarios:
            features = scenario_features(scenario, skill_names)
            if features["active_skill"] is not None:
                features["skill_start_available"] = available({**features, **scenario.started})
            features["available"] = available(features)
            lines.append(
                f"scenario {scenario.name!r}: {scenario.summary}: {describe_features(features)}"
            )
            if request.kind == "skills":
                without_available = {k: v for k, v in features.items() if k != "available"}
                for function in initiation_functions(skill_names):
                    call(scenario, function, without_available, not_a_bool)
                for name in skill_names:
                    running = {
                        **features,
                        "active_skill": name,
                        "history": (*features["history"][:-1], name),
                    }
                    call(scenario, f"termination_{name}", running, not_a_bool)
            else:
                call(scenario, POLICY_FUNCTION, features, not_a_skill_name(skill_names))
    return UnitTest("\n".join(lines), tuple(problems))


def not_a_bool(result: Any) -> str:
    """Why `result` is not a bool ("" if it is)."""
    if type(result) is bool:
        return ""
    return f"{result!r} (a {type(result).__name__}), not a bool"


def not_a_skill_name(skill_names: Sequence[str]) -> Callable[[Any], str]:
    def check(result: Any) -> str:
        """Why `result` is not one of the skill names ("" if it is)."""
        if type(result) is str and result in skill_names:
            return ""
        return f"{result!r}, not one of the skill names {', '.join(skill_names)}"

    return check


def summarise_problems(problems: Sequence[str]) -> str:
    """The first problems of a unit test, and how many more there were, in one line."""
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    hidden = len(problems) - MAX_PROBLEMS_SHOWN
    return shown + (f"; and {hidden} more" if hidden > 0 else "")


# ---------------------------------------------------------------- the loop


class TextGenerator(Protocol):
    """What the loop needs of a language model: `maestro.llm.backends.Annotator` (text
    backends) has both."""

    model_id: str

    def generate(self, prompts: Sequence[Any], max_tokens: int | None = None) -> list[str]: ...


def extract_code(completion: str) -> str:
    """The code in a completion: its last ```python (or ```py) block, else the whole text."""
    blocks = PYTHON_BLOCK.findall(completion)
    return (blocks[-1] if blocks else completion).strip() + "\n"


@dataclass(frozen=True)
class Verdict:
    """The checker's verdict: passed or not, and the reason given after FAIL ("" if none);
    `passed` is False and `found` False when the answer holds no verdict line."""

    found: bool
    passed: bool
    reason: str


def read_verdict(answer: str) -> Verdict:
    """The last `VERDICT: PASS` / `VERDICT: FAIL <reason>` line of the checker's answer (the
    reason may continue on the following lines)."""
    matches = list(VERDICT_LINE.finditer(answer))
    if not matches:
        return Verdict(found=False, passed=False, reason="")
    last = matches[-1]
    passed = last.group(1).upper() == "PASS"
    rest = (last.group(2) + answer[last.end() :]).lstrip(" \t\n:.-*").strip()
    return Verdict(found=True, passed=passed, reason="" if passed else one_line(rest))


def ask(generator: TextGenerator, config: CodegenConfig, system: str, user: str) -> str:
    """One completion for the system and user messages (as plain text when the backend is
    configured without chat)."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    prompt = messages if config.llm.chat else messages_to_text(messages)
    return generator.generate([prompt], config.max_tokens)[0]


def write_code(
    request: CodeRequest, generator: TextGenerator, config: CodegenConfig
) -> GeneratedCode:
    """Have `generator` write the code for `request`: at most `config.rounds` rounds of
    write, compile, unit test and check (see the module docstring). Returns the first code
    that passes; `CodegenFailed` with every round's record if none does. Stores nothing."""
    prompts = load_codegen_prompts(config.prompts)
    brief = prompts.brief_for(request)
    skills_code = None
    if request.skills_source is not None:
        skills_functions = initiation_functions(request.skill_names)
        skills_code = compile_skill_code(request.skills_source, skills_functions)
    records: list[RoundRecord] = []
    for round_number in range(1, config.rounds + 1):
        if records:
            last = records[-1]
            user = prompts.rewrite_prompt(brief, last.code, what_was_wrong(last))
        else:
            user = prompts.write_prompt(brief)
        completion = ask(generator, config, prompts.system, user)
        code = extract_code(completion)
        record = {"round": round_number, "completion": completion, "code": code}
        try:
            compiled = compile_skill_code(code, request.functions)
        except SkillCodeError as refusal:
            records.append(RoundRecord(**record, stage="refused", reason=str(refusal)))
            continue
        unit_test = run_unit_test(request, compiled, skills_code)
        record["transcript"] = unit_test.transcript
        if unit_test.problems:
            reason = summarise_problems(unit_test.problems)
            records.append(RoundRecord(**record, stage="unit_test", reason=reason))
            continue
        answer = ask(
            generator,
            config,
            prompts.system,
            prompts.check_prompt(brief, code, unit_test.transcript),
        )
        verdict = read_verdict(answer)
        if verdict.passed:
            return GeneratedCode(
                piece=request.piece,
                functions=request.functions,
                source=compiled.source,
                digest=compiled.digest,
                round=round_number,
                transcript=unit_test.transcript,
                verdict=answer,
                model=generator.model_id,
                prompts_digest=prompts.digest,
            )
        reason = verdict.reason or "no reason given"
        if not verdict.found:
            reason = "the checker's answer has no VERDICT line"
        records.append(RoundRecord(**record, stage="checker", reason=reason, checker_answer=answer))
    raise CodegenFailed(request.piece, records)


def what_was_wrong(record: RoundRecord) -> str:
    """The problem of a failed round, as the rewrite prompt says it."""
    if record.stage == "refused":
        return f"the sandbox refused the code: {record.reason}"
    if record.stage == "unit_test":
        return f"the unit test found: {record.reason}"
    return f"the check of its results failed it: {record.reason}"


class CodeWriter:
    """The configured language model, loaded once, writing piece after piece: a Ray actor
    in a run (`gpus` and `cpus` of `CodegenConfig`), so a model that needs GPUs gets them.
    `write` returns the accepted code, or every round's record when none passed (plain
    data, where an exception would cross Ray's boundary)."""

    def __init__(self, config: CodegenConfig):
        self.config = config
        self.generator = make_annotator(config.llm)

    def write(self, request: CodeRequest) -> GeneratedCode | tuple[RoundRecord, ...]:
        try:
            return write_code(request, self.generator, self.config)
        except CodegenFailed as failure:
            return failure.records

    def close(self) -> None:
        self.generator.close()


# ---------------------------------------------------------------- storage and user code


def store_generated(store: ArtifactStore, prefix: str, generated: GeneratedCode) -> str:
    """Keep `generated` under `<prefix>/<digest>.py`, its metadata in `<prefix>/<digest>.json`
    (model, prompts digest, round, transcript, verdict, ...); returns the code's key. Code
    already stored (the same digest) is left as it is, with its first metadata."""
    key = f"{prefix.rstrip('/')}/{generated.digest}.py"
    metadata_key = key.removesuffix(".py") + ".json"
    if not store.exists(metadata_key):
        store.put_json(metadata_key, generated.metadata())
    if not store.exists(key):
        store.put_bytes(key, generated.source.encode())
    return key


def load_user_code(
    path: str | Path, functions: Sequence[str], piece: str = "user code"
) -> GeneratedCode:
    """Hand-written skill code from the file at `path` as a `GeneratedCode` (model "user",
    round 0, no transcript or verdict), compiled through the sandbox: `SkillCodeError` if it
    breaks its rules or lacks one of `functions`."""
    compiled = compile_skill_code(Path(path).read_text(), functions)
    return GeneratedCode(
        piece=piece,
        functions=compiled.functions,
        source=compiled.source,
        digest=compiled.digest,
        round=0,
        transcript="",
        verdict="",
        model="user",
        prompts_digest="",
    )
