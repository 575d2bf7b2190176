"""The sandbox for skill code a language model writes (maestro.llm.sandbox):
well-behaved code computes the right values in a real worker process; every program of an
adversarial corpus is refused at compile time or stopped at run time with its reason, leaves
the sandbox answering, and writes nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import signal
import textwrap

import pytest

from maestro.llm.sandbox import (
    SkillCallFailed,
    SkillCodeError,
    SkillSandbox,
    compile_skill_code,
)

# Small limits keep the corpus fast; the defaults are the same mechanisms.
TIMEOUT_S = 0.3
MEMORY_LIMIT_MB = 128

SKILL_SOURCE = '''
"""Descending the dungeon, written the way a language model writes skill code."""

LOW_HEALTH = 0.3
SKILLS = ("explore", "descend", "heal")


def health(features):
    return features["hp"] / features["max_hp"]


def potions(features):
    return [item for item in features["inventory"] if item.lower().startswith("potion")]


def initiation_descend(features):
    return features["stairs_visible"] and health(features) > LOW_HEALTH


def termination_descend(features):
    return features["depth"] > features["start_depth"] or health(features) <= LOW_HEALTH


def initiation_heal(features):
    return health(features) <= LOW_HEALTH and len(potions(features)) > 0


def policy(features):
    if initiation_heal(features):
        return SKILLS.index("heal")
    if initiation_descend(features):
        return SKILLS.index("descend")
    return SKILLS.index("explore")


def policy_by_name(features):
    words = {}
    for word in features["message"].lower().strip().split():
        words[word] = words.get(word, 0) + 1
    x, y = features["position"]
    steps = 0
    for stair, here in zip(features["stairs"], (x, y)):
        steps += abs(stair - here)
    if "staircase" in words and steps <= features.get("reach", 1):
        return "descend"
    return SKILLS[0] if sum(words.values()) < 10 else "heal"
'''
SKILL_FUNCTIONS = (
    "initiation_descend",
    "termination_descend",
    "initiation_heal",
    "policy",
    "policy_by_name",
)


def features(**changes):
    """Hand-built features of a NetHack step: healthy, on level 3, stairs in sight."""
    base = {
        "hp": 12,
        "max_hp": 16,
        "depth": 3,
        "start_depth": 3,
        "stairs_visible": True,
        "inventory": ["a +1 long sword", "Potion of healing", "an apple"],
        "message": "There is a staircase down here.",
        "position": (10, 4),
        "stairs": [10, 5],
    }
    return base | changes


def test_compile_gives_the_source_its_digest_and_functions():
    code = compile_skill_code(SKILL_SOURCE, list(SKILL_FUNCTIONS))
    assert code.source == SKILL_SOURCE
    assert code.digest == hashlib.sha256(SKILL_SOURCE.encode()).hexdigest()
    assert code.functions == SKILL_FUNCTIONS
    with pytest.raises(dataclasses.FrozenInstanceError):
        code.digest = "0" * 64


def test_well_behaved_skill_code_computes_the_right_values():
    code = compile_skill_code(SKILL_SOURCE, SKILL_FUNCTIONS)
    with SkillSandbox(code, timeout_s=TIMEOUT_S, memory_limit_mb=MEMORY_LIMIT_MB) as sandbox:
        assert sandbox.call("initiation_descend", features()) is True
        assert sandbox.call("initiation_descend", features(stairs_visible=False)) is False
        assert sandbox.call("initiation_descend", features(hp=4)) is False
        assert sandbox.call("termination_descend", features()) is False
        assert sandbox.call("termination_descend", features(depth=4)) is True
        assert sandbox.call("termination_descend", features(hp=3)) is True
        assert sandbox.call("initiation_heal", features(hp=4)) is True
        assert sandbox.call("initiation_heal", features(hp=4, inventory=["an apple"])) is False
        assert sandbox.call("policy", features()) == 1
        assert sandbox.call("policy", features(hp=4)) == 2
        assert sandbox.call("policy", features(stairs_visible=False)) == 0
        assert sandbox.call("policy_by_name", features()) == "descend"
        assert sandbox.call("policy_by_name", features(position=(0, 0))) == "explore"
        assert sandbox.call("policy_by_name", features(position=(0, 0), reach=20)) == "descend"
        long_message = "You hear the footsteps of a guard on patrol and a door opens."
        assert sandbox.call("policy_by_name", features(message=long_message)) == "heal"


def test_no_state_passes_from_one_call_to_the_next():
    source = textwrap.dedent(
        """
        def remember(item, seen=[]):
            seen.append(item)
            return len(seen)

        def count_calls(features):
            features["calls"] = features["calls"] + 1
            features["log"].append("called")
            return remember(1) * 100 + len(features["log"]) * 10 + features["calls"]
        """
    )
    given = {"calls": 0, "log": []}
    with SkillSandbox(compile_skill_code(source, ["count_calls"])) as sandbox:
        assert [sandbox.call("count_calls", given) for _ in range(3)] == [111, 111, 111]
    assert given == {"calls": 0, "log": []}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({1, 2}, "features['value'] is of type set, not a plain value"),
        (object(), "features['value'] is of type object, not a plain value"),
        ({1: "a"}, "features['value'] has a key 1 that is not a str"),
        ([[[[[[[[[1]]]]]]]]], "is nested deeper than 8 levels"),
    ],
    ids=["set", "object", "int_key", "deep"],
)
def test_features_must_be_plain_values(value, reason):
    code = compile_skill_code("def echo(features):\n    return len(features)\n", ["echo"])
    with SkillSandbox(code) as sandbox:
        with pytest.raises(TypeError, match=re.escape(reason)):
            sandbox.call("echo", {"value": value})
        with pytest.raises(ValueError, match="'health' is not one of"):
            sandbox.call("health", {})
        assert sandbox.call("echo", {"value": [1, (2.5, "x"), {"k": None}]}) == 1


def test_a_worker_killed_from_outside_is_replaced():
    code = compile_skill_code("def ok(features):\n    return features['x'] + 1\n", ["ok"])
    with SkillSandbox(code) as sandbox:
        assert sandbox.call("ok", {"x": 1}) == 2
        os.kill(sandbox._process.pid, signal.SIGKILL)
        with pytest.raises(SkillCallFailed, match=r"the worker died \(exit code -9\)"):
            sandbox.call("ok", {"x": 1})
        assert sandbox.call("ok", {"x": 2}) == 3


# The adversarial corpus. Every program defines `attack(features)`; `ok` is added to each.
MARKER = "sandbox-escape-marker"  # the file every write attempt targets
REFUSED = "refused at compile time"
STOPPED = "stopped at run time"
OK_SOURCE = "\n\ndef ok(features):\n    return features['x'] + 1\n"


def attack(body: str, before: str = "") -> str:
    """Source of `def attack(features):` running `body`, after the module lines `before`."""
    lines = textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")
    return f"{before}def attack(features):\n{lines}\n"


CORPUS = [
    # Imports, and the dunder routes to modules and to object internals.
    pytest.param(
        attack("import os\nreturn os.getcwd()"), REFUSED, "Line 2: imports", id="import_os"
    ),
    pytest.param(
        attack(f"return system('touch {MARKER}')", before="from os import system\n"),
        REFUSED,
        "Line 1: imports are not allowed",
        id="from_os_import_system",
    ),
    pytest.param(
        attack(f"return __import__('os').system('touch {MARKER}')"),
        REFUSED,
        '"__import__" is an invalid variable name because it starts with "_"',
        id="dunder_import",
    ),
    pytest.param(
        attack("return ().__class__.__bases__[0].__subclasses__()"),
        REFUSED,
        '"__class__" is an invalid attribute name because it starts with "_"',
        id="subclasses_walk",
    ),
    pytest.param(
        attack("return attack.__globals__['__builtins__']"),
        REFUSED,
        '"__globals__" is an invalid attribute name',
        id="function_globals",
    ),
    pytest.param(
        attack("return features.__class__.__mro__"),
        REFUSED,
        '"__class__" is an invalid attribute name',
        id="features_class",
    ),
    pytest.param(
        attack(f"return __builtins__['open']('{MARKER}', 'w')"),
        REFUSED,
        '"__builtins__" is an invalid variable name',
        id="builtins_dict",
    ),
    pytest.param(
        attack("return (lambda: 0).__code__"),
        REFUSED,
        '"__code__" is an invalid attribute name',
        id="lambda_code",
    ),
    pytest.param(
        attack('return f"{features.__class__}"'),
        REFUSED,
        '"__class__" is an invalid attribute name',
        id="fstring_dunder",
    ),
    pytest.param(
        attack("return 1", before="class Escape:\n    pass\n\n"),
        REFUSED,
        "Line 1: class definitions are not allowed",
        id="class_definition",
    ),
    pytest.param(
        attack("global COUNTER\nCOUNTER += 1\nreturn COUNTER", before="COUNTER = 0\n"),
        REFUSED,
        "Line 3: global statements are not allowed",
        id="global_state",
    ),
    pytest.param(
        attack("count = 0\ndef bump():\n    nonlocal count\n    count += 1\nreturn bump()"),
        REFUSED,
        "Line 4: nonlocal statements are not allowed",
        id="nonlocal_state",
    ),
    pytest.param(
        attack("print(features)\nreturn 1"),
        REFUSED,
        "Line 2: print is not available",
        id="print",
    ),
    pytest.param(
        "async def attack(features):\n    return 1\n",
        REFUSED,
        "Line 1: async code is not allowed",
        id="async_function",
    ),
    pytest.param(
        attack("return 1", before=f"open('{MARKER}', 'w').write('escaped')\n"),
        REFUSED,
        "Line 1: only function definitions and constant assignments may be at module level",
        id="module_level_open_write",
    ),
    pytest.param(
        attack("SEEN.append(1)\nreturn len(SEEN)", before="SEEN = []\n"),
        REFUSED,
        "Line 1: only function definitions and constant assignments",
        id="module_level_mutable_state",
    ),
    pytest.param(
        "attack = lambda features: 1\n",
        REFUSED,
        "Line 1: only function definitions and constant assignments",
        id="module_level_lambda",
    ),
    pytest.param(
        attack("try:\n    return 1\nexcept* ValueError:\n    return 2"),
        REFUSED,
        "TryStar statements are not allowed",
        id="exception_group",
    ),
    pytest.param(attack("return ("), REFUSED, "syntax error", id="syntax_error"),
    pytest.param(
        "def attak(features):\n    return 1\n",
        REFUSED,
        "function 'attack' is not defined at module level",
        id="attack_missing",
    ),
    pytest.param(
        "def attack(features, *escape):\n    return 1\n",
        REFUSED,
        "Line 1: function 'attack' must take one argument, the features",
        id="extra_arguments",
    ),
    # Builtins that are not there: files, code, introspection, the debugger, modules.
    pytest.param(
        attack("return open('/etc/passwd').read()"),
        STOPPED,
        "NameError: name 'open' is not defined",
        id="open_read",
    ),
    pytest.param(
        attack(f"open('{MARKER}', 'w').write('escaped')\nreturn 1"),
        STOPPED,
        "NameError: name 'open' is not defined",
        id="open_write",
    ),
    pytest.param(
        attack(f"with open('{MARKER}', 'w') as handle:\n    handle.write('escaped')\nreturn 1"),
        STOPPED,
        "NameError: name 'open' is not defined",
        id="with_open",
    ),
    pytest.param(
        attack("return 1", before=f"@open('{MARKER}', 'w')\n"),
        REFUSED,
        "Line 2: decorators are not allowed",
        id="decorator_open",
    ),
    pytest.param(attack("return eval('1 + 1')"), REFUSED, "Eval calls are not", id="eval"),
    pytest.param(attack("exec('import os')"), REFUSED, "Exec calls are not", id="exec"),
    pytest.param(
        attack("return compile('1', 'x', 'eval')"), STOPPED, "name 'compile' is not", id="compile"
    ),
    pytest.param(
        attack("return getattr(features, 'get')"), STOPPED, "name 'getattr' is not", id="getattr"
    ),
    pytest.param(
        attack("setattr(features, 'x', 1)"), STOPPED, "name 'setattr' is not", id="setattr"
    ),
    pytest.param(
        attack("return globals()['open']"), STOPPED, "name 'globals' is not", id="globals"
    ),
    pytest.param(attack("return vars()"), STOPPED, "name 'vars' is not", id="vars"),
    pytest.param(attack("return type(features) is dict"), STOPPED, "name 'type' is", id="type"),
    pytest.param(attack("breakpoint()"), REFUSED, '"breakpoint" is a reserved', id="breakpoint"),
    pytest.param(attack("return input()"), STOPPED, "name 'input' is not", id="input"),
    pytest.param(
        attack(f"return sys.modules['os'].system('touch {MARKER}')"),
        STOPPED,
        "NameError: name 'sys' is not defined",
        id="os_system_through_sys_modules",
    ),
    # Attributes outside the allow-list, and writes outside lists, dicts and sets.
    pytest.param(
        attack('return "{0.__class__}".format(features)'),
        STOPPED,
        "AttributeError: attribute 'format' is not allowed on str",
        id="format_string_escape",
    ),
    pytest.param(
        attack("return (x for x in features).gi_frame.f_globals"),
        REFUSED,
        '"gi_frame" is a restricted name',
        id="generator_frame",
    ),
    pytest.param(
        attack("return (x for x in features).send(None)"),
        STOPPED,
        "attribute 'send' is not allowed on generator",
        id="generator_send",
    ),
    pytest.param(
        attack("return features.keys().mapping"),
        STOPPED,
        "attribute 'mapping' is not allowed on dict_keys",
        id="dict_view_mapping",
    ),
    pytest.param(
        attack("return str.maketrans('a', 'b')"),
        STOPPED,
        "attribute 'maketrans' is not allowed on type",
        id="method_of_a_type",
    ),
    pytest.param(
        attack("point = (1, 2)\npoint[0] = 3\nreturn point[0]"),
        STOPPED,
        "writing into a tuple is not allowed",
        id="write_into_tuple",
    ),
    pytest.param(
        attack("features.x = 1\nreturn 1"),
        STOPPED,
        "AttributeError: 'dict' object has no attribute 'x'",
        id="attribute_write",
    ),
    # Time, memory and the stack.
    pytest.param(
        attack("while True:\n    pass"), STOPPED, "timed out after 0.3 s", id="while_true"
    ),
    pytest.param(
        attack(
            """
            while True:
                try:
                    features["x"] = [0] * 10 ** 10
                except:
                    pass
            """
        ),
        STOPPED,
        "timed out after 0.3 s",
        id="while_true_swallowing_errors",
    ),
    pytest.param(attack("return 10 ** 10 ** 8"), STOPPED, "timed out", id="power_tower"),
    pytest.param(attack("return len([0] * 10 ** 10)"), STOPPED, "MemoryError", id="huge_list"),
    pytest.param(attack("return len('a' * 10 ** 10)"), STOPPED, "MemoryError", id="huge_string"),
    pytest.param(
        attack("chunks = []\nwhile True:\n    chunks.append('a' * 10 ** 8)"),
        STOPPED,
        "MemoryError",
        id="memory_growth",
    ),
    pytest.param(attack("return attack(features)"), STOPPED, "RecursionError", id="recursion_bomb"),
    pytest.param(
        attack("nested = []\nfor _ in range(10 ** 5):\n    nested = [nested]\nreturn str(nested)"),
        STOPPED,
        "RecursionError",
        id="nested_repr",
    ),
    # Results that are not plain values.
    pytest.param(
        attack("yield features['x']"),
        STOPPED,
        "returned a generator, not a plain value",
        id="generator_returned",
    ),
    pytest.param(
        attack("return lambda: open"),
        STOPPED,
        "returned a function, not a plain value",
        id="lambda_returned",
    ),
    pytest.param(
        attack("return len"),
        STOPPED,
        "returned a builtin_function_or_method, not a plain value",
        id="builtin_returned",
    ),
    pytest.param(
        attack("return features"), STOPPED, "returned a dict, not a plain value", id="dict_returned"
    ),
    pytest.param(
        attack("return 'a' * 100000"),
        STOPPED,
        "returned a str of 100000 characters",
        id="huge_result",
    ),
    # Plain errors.
    pytest.param(attack("return features['hp']"), STOPPED, "KeyError: 'hp'", id="missing_feature"),
    pytest.param(
        attack("raise ValueError('boom')"),
        STOPPED,
        "NameError: name 'ValueError' is not defined",
        id="raise_exception",
    ),
    pytest.param(
        attack("raise 'boom'"),
        STOPPED,
        "TypeError: exceptions must derive from BaseException",
        id="raise_a_string",
    ),
    pytest.param(
        attack("return 1 / 0"),
        STOPPED,
        "ZeroDivisionError: division by zero",
        id="zero_division",
    ),
    pytest.param(
        attack("return str(10 ** 5000)"),
        STOPPED,
        "ValueError: Exceeds the limit",
        id="int_to_str_limit",
    ),
]


@pytest.mark.parametrize(("source", "outcome", "reason"), CORPUS)
def test_adversarial_code_is_refused_or_stopped_with_its_reason(
    source, outcome, reason, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # where every relative write would land
    source += OK_SOURCE
    if outcome == REFUSED:
        with pytest.raises(SkillCodeError) as refusal:
            compile_skill_code(source, ["attack", "ok"])
        message = str(refusal.value)
    else:
        code = compile_skill_code(source, ["attack", "ok"])
        with SkillSandbox(code, timeout_s=TIMEOUT_S, memory_limit_mb=MEMORY_LIMIT_MB) as sandbox:
            with pytest.raises(SkillCallFailed) as failure:
                sandbox.call("attack", {"x": 1, "name": "Agent"})
            # The same sandbox goes on answering.
            assert sandbox.call("ok", {"x": 41}) == 42
        message = failure.value.reason
        assert message == str(failure.value)
    assert reason in message
    assert "\n" not in message
    assert not (tmp_path / MARKER).exists()
    assert list(tmp_path.iterdir()) == []
