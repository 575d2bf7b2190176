"""MaestroMotif's code-writing loop (maestro.methods.maestromotif.codegen) against a scripted
model: a test double that returns queued completions in place of a language model's text.
Everything else is real: the prompts file, the sandbox compiling and running the code in
its worker process, the text unit test, the verdicts, the artifact store."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import pytest

from maestro.llm.sandbox import SkillCodeError, compile_skill_code
from maestro.methods.maestromotif.codegen import (
    DEFAULT_PROMPTS,
    FEATURE_NAMES,
    CodegenConfig,
    CodegenFailed,
    CodeRequest,
    load_codegen_prompts,
    load_user_code,
    read_verdict,
    run_unit_test,
    store_generated,
    write_code,
)
from maestro.store import open_store

SKILLS = {
    "discoverer": "explore the current level and fight what is met there",
    "descender": "go down to a deeper level",
    "merchant": "deal with a shopkeeper",
}

GOOD_SKILLS = '''
"""Three skills."""

DISCOVERER_TURNS = 500


def initiation_discoverer(features):
    return True


def initiation_descender(features):
    return True


def initiation_merchant(features):
    return features["shopkeeper_visible"] and not features["inventory_empty"]


def termination_discoverer(features):
    return features["skill_turns"] >= DISCOVERER_TURNS


def termination_descender(features):
    return features["depth"] != features["skill_start_depth"]


def termination_merchant(features):
    return features["skill_turns"] >= 10000
'''

GOOD_POLICY = """
def policy(features):
    if "merchant" in features["available"]:
        return "merchant"
    if features["active_skill"] == "discoverer":
        return "descender"
    return "discoverer"
"""

PASS = "Every result matches the request.\nVERDICT: PASS"


def fenced(code: str) -> str:
    return f"Here is the code.\n```python\n{code}\n```\nIt should work."


class ScriptedModel:
    """Stands in for a language model: answers each prompt with the next queued completion
    and keeps the prompts it was given."""

    model_id = "scripted-model"

    def __init__(self, completions: Sequence[str]):
        self.completions = list(completions)
        self.prompts: list = []

    def generate(self, prompts, max_tokens=None) -> list[str]:
        self.prompts.extend(prompts)
        return [self.completions.pop(0) for _ in prompts]

    def user_message(self, index: int) -> str:
        return self.prompts[index][-1]["content"]


def config(rounds: int = 5) -> CodegenConfig:
    return CodegenConfig(llm={"backend": "openai", "model": "scripted-model"}, rounds=rounds)


def skills_request() -> CodeRequest:
    return CodeRequest(kind="skills", skills=SKILLS)


def results(transcript: str) -> dict[tuple[str, str], str]:
    """(scenario, function) -> the result as the transcript shows it."""
    found = re.findall(r"^scenario '(\w+)': (\w+) -> (.*)$", transcript, re.MULTILINE)
    return {(scenario, function): result for scenario, function, result in found}


def test_refused_code_is_rewritten_with_the_reason_then_passes() -> None:
    model = ScriptedModel(
        [fenced("import os\n\n" + GOOD_SKILLS), fenced(GOOD_SKILLS), "Looks right.\n" + PASS]
    )
    generated = write_code(skills_request(), model, config())

    assert len(model.prompts) == 3  # write, rewrite, check
    rewrite = model.user_message(1)
    assert "the sandbox refused the code: Line 1: imports are not allowed" in rewrite
    assert "import os" in rewrite  # the previous code is shown
    check = model.user_message(2)
    assert generated.transcript in check and GOOD_SKILLS.strip() in check
    assert model.prompts[0][0] == {"role": "system", "content": load_codegen_prompts().system}

    assert generated.round == 2
    assert generated.source == GOOD_SKILLS.strip() + "\n"
    assert generated.digest == hashlib.sha256(generated.source.encode()).hexdigest()
    assert generated.model == "scripted-model"
    assert generated.verdict == "Looks right.\n" + PASS
    assert generated.prompts_digest == hashlib.sha256(DEFAULT_PROMPTS.read_bytes()).hexdigest()
    assert generated.functions == (
        "initiation_discoverer",
        "initiation_descender",
        "initiation_merchant",
        "termination_discoverer",
        "termination_descender",
        "termination_merchant",
    )
    assert generated.piece == "skills"


def test_a_termination_returning_a_string_fails_the_unit_test() -> None:
    wrong = GOOD_SKILLS.replace(
        'return features["depth"] != features["skill_start_depth"]', 'return "yes"'
    )
    model = ScriptedModel([fenced(wrong)])
    with pytest.raises(CodegenFailed) as failed:
        write_code(skills_request(), model, config(rounds=1))

    assert len(model.prompts) == 1  # the checker is never asked
    (record,) = failed.value.records
    assert record.stage == "unit_test"
    assert record.reason.startswith(
        "scenario 'start': termination_descender returned 'yes' (a str), not a bool; "
    )
    assert record.reason.endswith("; and 6 more")  # 9 scenarios, 3 shown
    assert "scenario 'descended': termination_descender -> 'yes'" in record.transcript


def test_a_checker_fail_is_rewritten_with_its_reason() -> None:
    never_stops = GOOD_SKILLS.replace(
        'return features["depth"] != features["skill_start_depth"]', "return False"
    )
    reason = "in 'descended', termination_descender should be True: the depth changed."
    model = ScriptedModel(
        [never_stops, f"Mostly fine.\nVERDICT: FAIL {reason}", fenced(GOOD_SKILLS), PASS]
    )
    generated = write_code(skills_request(), model, config())

    assert generated.round == 2
    rewrite = model.user_message(2)
    assert f"the check of its results failed it: {reason}" in rewrite
    assert "return False" in rewrite


def test_failing_every_round_raises_and_stores_nothing(tmp_path) -> None:
    store = open_store(str(tmp_path / "store"))
    request = CodeRequest(
        kind="task_policy",
        skills=SKILLS,
        task_name="gnomish_mines",
        task="reach the Gnomish Mines",
    )
    model = ScriptedModel(
        [
            "I cannot write that.",  # refused: not Python
            fenced("def policy(features):\n    return 'fly'\n"),  # not a skill name
            fenced(GOOD_POLICY),
            "VERDICT: FAIL the policy never reaches the Mines.",
        ]
    )
    with pytest.raises(CodegenFailed) as failed:
        write_code(request, model, config(rounds=3))

    message = str(failed.value)
    assert "\n" not in message
    assert message == (
        "no code for task_policy gnomish_mines passed in 3 rounds; "
        "round 3 checker: the policy never reaches the Mines."
    )
    assert [r.stage for r in failed.value.records] == ["refused", "unit_test", "checker"]
    assert failed.value.records[0].reason.startswith("Line 1: syntax error")
    assert "policy returned 'fly', not one of the skill names" in failed.value.records[1].reason
    assert failed.value.records[2].checker_answer.startswith("VERDICT: FAIL")
    assert "The task (gnomish_mines):\nreach the Gnomish Mines" in model.user_message(0)
    assert model.completions == []
    assert store.list() == []


def test_the_same_code_stored_twice_is_one_file(tmp_path) -> None:
    store = open_store(f"file://{tmp_path}/store")
    first = write_code(skills_request(), ScriptedModel([GOOD_SKILLS, PASS]), config())
    again = write_code(skills_request(), ScriptedModel(["import os", GOOD_SKILLS, PASS]), config())
    assert (first.round, again.round) == (1, 2)

    key = store_generated(store, "maestromotif/code/skills", first)
    assert store_generated(store, "maestromotif/code/skills/", again) == key
    assert key == f"maestromotif/code/skills/{first.digest}.py"
    assert store.list() == sorted([key, key.replace(".py", ".json")])
    assert store.get_bytes(key).decode() == first.source
    metadata = store.get_json(key.replace(".py", ".json"))
    assert metadata["round"] == 1  # the first record is kept
    assert metadata["model"] == "scripted-model"
    assert metadata["transcript"] == first.transcript
    assert metadata["verdict"] == PASS
    assert metadata["prompts_digest"] == first.prompts_digest
    assert "source" not in metadata


def test_transcript_of_correct_skills_code() -> None:
    code = compile_skill_code(GOOD_SKILLS, skills_request().functions)
    unit_test = run_unit_test(skills_request(), code)
    assert unit_test.problems == ()
    shown = results(unit_test.transcript)
    assert len(shown) == 9 * 6
    expected = {
        ("start", "initiation_merchant"): "False",
        ("start", "termination_descender"): "False",
        ("exploring", "termination_discoverer"): "False",
        ("explored_600_turns", "termination_discoverer"): "True",
        ("descended", "termination_descender"): "True",
        ("descended", "termination_discoverer"): "False",
        ("shopkeeper_appeared", "initiation_merchant"): "True",
        ("shopkeeper_empty_inventory", "initiation_merchant"): "False",
        ("altar_appeared", "initiation_merchant"): "False",
        ("entered_mines", "termination_descender"): "True",
        ("entered_mines", "initiation_descender"): "True",
    }
    assert {key: shown[key] for key in expected} == expected
    # Each scenario's situation is shown, `available` from the code's initiation functions.
    assert (
        "scenario 'shopkeeper_appeared': a shopkeeper came into view on depth 3 while a skill "
        "ran; the hero carries items: depth=3, gold=120, turn=1500, shopkeeper_visible=True, "
        "active_skill='discoverer', skill_turns=25, skill_start_depth=3, "
        "skill_start_available=('discoverer', 'descender'), "
        "history=('discoverer', 'descender', 'discoverer', 'descender', 'discoverer'), "
        "available=('discoverer', 'descender', 'merchant')"
    ) in unit_test.transcript.splitlines()


def test_a_failing_call_shows_its_reason_in_the_transcript() -> None:
    dividing = GOOD_SKILLS.replace(
        'return features["skill_turns"] >= 10000', 'return features["gold"] / 0 > 1'
    )
    code = compile_skill_code(dividing, skills_request().functions)
    unit_test = run_unit_test(skills_request(), code)
    assert (
        "scenario 'start': termination_merchant -> failed: ZeroDivisionError: division by zero"
        in unit_test.transcript.splitlines()
    )
    assert len(unit_test.problems) == 9


def test_policy_transcript_uses_the_skills_code_for_available() -> None:
    request = CodeRequest(kind="training_policy", skills=SKILLS, skills_source=GOOD_SKILLS)
    model = ScriptedModel([fenced(GOOD_POLICY), PASS])
    generated = write_code(request, model, config())
    shown = results(generated.transcript)
    assert shown[("start", "policy")] == "'discoverer'"
    assert shown[("exploring", "policy")] == "'descender'"
    assert shown[("shopkeeper_appeared", "policy")] == "'merchant'"
    assert shown[("shopkeeper_empty_inventory", "policy")] == "'descender'"
    assert len(shown) == 12


def test_read_verdict() -> None:
    assert read_verdict("fine\nVERDICT: PASS").passed
    assert read_verdict("**Verdict:** pass").passed
    failed = read_verdict("VERDICT: PASS?\nno wait.\nVERDICT: FAIL: the merchant\nnever stops.")
    assert (failed.found, failed.passed, failed.reason) == (
        True,
        False,
        "the merchant never stops.",
    )
    assert read_verdict("I think it is good.").found is False


def test_an_answer_without_a_verdict_fails_the_round() -> None:
    model = ScriptedModel([GOOD_SKILLS, "Looks good to me."])
    with pytest.raises(CodegenFailed, match="round 1 checker: the checker's answer has no"):
        write_code(skills_request(), model, config(rounds=1))


def test_user_code_goes_through_the_sandbox(tmp_path) -> None:
    path = tmp_path / "skills.py"
    path.write_text(GOOD_SKILLS)
    user = load_user_code(path, skills_request().functions, piece="skills")
    assert (user.model, user.round, user.piece) == ("user", 0, "skills")
    assert user.digest == hashlib.sha256(GOOD_SKILLS.encode()).hexdigest()
    assert user.skill_code().functions == skills_request().functions
    with pytest.raises(SkillCodeError, match="'termination_ascender' is not defined"):
        load_user_code(path, ("termination_ascender",))


def test_prompts_list_every_feature() -> None:
    prompts = load_codegen_prompts()
    assert tuple(prompts.features) == FEATURE_NAMES
    brief = prompts.brief_for(skills_request())
    assert all(f"- {name}: " in brief for name in FEATURE_NAMES)
    assert "- termination_merchant(features)" in brief
    assert "{" + "features}" not in brief


def test_config_and_request_are_checked() -> None:
    with pytest.raises(ValueError, match="text backend"):
        CodegenConfig(llm={"backend": "embedding"})
    with pytest.raises(ValueError, match="extra"):
        CodegenConfig(llm={"backend": "openai", "model": "m"}, round=3)
    assert CodegenConfig(llm={"backend": "openai", "model": "m"}).rounds == 5
    with pytest.raises(ValueError, match="task_name and task"):
        CodeRequest(kind="task_policy", skills=SKILLS)
    with pytest.raises(ValueError, match="lower-case identifier"):
        CodeRequest(kind="skills", skills={"Go Down": "descend"})
