"""The answer parser on a corpus of realistic free-form answers (each verdict phrased several
ways, refusals, truncated outputs, answers that mention both captions), and the prompt files
it reads answers to."""

from __future__ import annotations

import pytest

from maestro.llm.parsing import (
    AMBIGUOUS,
    EMPTY,
    NO_VERDICT,
    REFUSAL,
    TRUNCATED,
    parse_answer,
    parse_label,
)
from maestro.llm.prompts import PromptError, load_prompt_set, messages_to_text

MOTIF_STYLE_2 = """NetHack is a roguelike game in which the player descends through the Dungeons of
Doom to retrieve the Amulet of Yendor. The score rewards killing monsters, gaining experience
levels, collecting gold and going deeper into the dungeon.

Description 1 ("It's solid stone.") means the agent tried to walk into solid rock: the move
was wasted and nothing was learned.
Description 2 ("Welcome to experience level 3.") means the agent gained an experience level,
which raises its maximum hit points and adds to the score.

Comparing the two, description 2 clearly reflects progress while description 1 does not.

("best_description": 2)"""

MOTIF_STYLE_1 = """In NetHack the goal is to retrieve the Amulet of Yendor and ascend; along the
way the score grows with kills, gold and depth.

Analysis: description 1 reports that the agent killed a jackal, which yields experience and
score. Description 2 is empty, so nothing happened that the game reported.

Therefore description 1 is the more likely to make progress.
("best_description": 1)"""

MOTIF_STYLE_NONE = """NetHack is a dungeon-crawling game. Both descriptions report the agent
bumping into walls ("It's a wall." and "It's solid stone."); neither shows any progress.
("best_description": None)"""

CASES: list[tuple[str, str, int | None]] = [
    # --- the prompt's own format, several spellings
    ("motif caption 2", MOTIF_STYLE_2, 2),
    ("motif caption 1", MOTIF_STYLE_1, 1),
    ("motif none", MOTIF_STYLE_NONE, 0),
    ("json quoted value", 'My answer: {"best_description": "2"}', 2),
    ("spaced key", "Best description: 1", 1),
    ("markdown bold", '**Final answer:** ("best_description": **1**)', 1),
    ("best description is caption n", "So the best description is description 2.", 2),
    ("null value", '("best_description": null)', 0),
    ("curly quotes", "(“best_description”: 2)", 2),
    # --- labelled answer lines
    ("final answer digit", "Description 1 is about a wall.\nFinal answer: 2", 2),
    ("verdict noun", "Verdict: Description 1", 1),
    ("answer is caption", "After weighing both, my answer is caption 2.", 2),
    ("answer dash neither", "Answer - neither", 0),
    ("final answer the second one", "Final answer: the second one.", 2),
    ("decision parenthesised", "Decision: (1)", 1),
    # --- bare answers (constrained decoding)
    ("bare 1", "1", 1),
    ("bare 2 with space", " 2\n", 2),
    ("bare None", "None", 0),
    ("bare parenthesised", "(2)", 2),
    ("bare caption", "Caption 1.", 1),
    ("bare neither", "Neither.", 0),
    ("bare first description", "The first description", 1),
    # --- verdict sentences without the format
    (
        "sentence more likely",
        "Killing a newt gives experience. Description 2 is more likely to make progress.",
        2,
    ),
    ("sentence prefer", "Overall, I prefer the first caption.", 1),
    (
        "better than, both named",
        "Description 2 is better than description 1 because gaining a level adds to the score.",
        2,
    ),
    (
        "prefer over, both named",
        "Both are short, but I would prefer caption 1 over caption 2 for the score task.",
        1,
    ),
    ("the latter", "Finding gold beats hitting a wall, so the latter is better.", 2),
    ("sentence neither", "Neither description shows progress towards the goal.", 0),
    ("sentence equally", "Both descriptions are equally uninformative.", 0),
    ("sentence no difference", "There is no clear difference between the two captions.", 0),
    (
        "verdict before a closing remark",
        "Description 1 is clearly better. Description 2 only says you hear a noise.",
        1,
    ),
    # --- both numbers mentioned without a decision: not a label
    (
        "both described, no verdict",
        "Description 1 says the door is locked. Description 2 says you see a fountain.",
        None,
    ),
    (
        "conflicting formats",
        'I first thought ("best_description": 1), but on reflection ("best_description": 2).',
        None,
    ),
    (
        "echoed instructions",
        'I must end with ("best_description": 1), ("best_description": 2) or '
        '("best_description": None).',
        None,
    ),
    ("negated comparison", "Description 1 is not better than description 2.", None),
    ("inverted comparison", "Description 2 is less useful than description 1.", None),
    ("both named, no direction", "Description 1 and description 2 are both better.", None),
    # --- refusals
    ("refusal sorry", "I'm sorry, but I can't help with comparing these.", None),
    ("refusal as an ai", "As an AI, I cannot determine which description is better.", None),
    # --- garbage and empty
    ("empty", "", None),
    ("whitespace", "  \n ", None),
    ("noise", "ws ws captionwsws -- more more", None),
    ("analysis only", "Description 1: a wall. Description 2: a jackal bites.", None),
]


@pytest.mark.parametrize(("name", "text", "label"), CASES, ids=[case[0] for case in CASES])
def test_corpus(name: str, text: str, label: int | None) -> None:
    verdict = parse_answer(text)
    assert verdict.label == label, f"{name}: {verdict}"
    assert verdict.valid == (label is not None)


def test_reasons_say_why_an_answer_is_invalid() -> None:
    assert parse_answer("").reason == EMPTY
    assert parse_answer(None).reason == EMPTY
    assert parse_answer("I'm sorry, I cannot answer that.").reason == REFUSAL
    assert parse_answer("Description 1 is a wall. Description 2 is a door.").reason == NO_VERDICT
    assert parse_answer('("best_description": 1) or ("best_description": 2)').reason == AMBIGUOUS
    assert parse_answer("Caption 1 is not better than caption 2.").reason == AMBIGUOUS


def test_truncated_answer_reads_only_an_explicit_final_answer() -> None:
    unfinished = (
        "NetHack is a roguelike. Description 2 is more likely to show progress because the "
        "agent gained a level. As for the other one, it"
    )
    # Finished, the same text is read from its verdict sentence ...
    assert parse_label(unfinished[: unfinished.index(" As for")]) == 2
    # ... but cut off it is an unfinished analysis, not a verdict: flagged by the token
    # limit or not (a server that does not say why it stopped).
    for flagged in (True, False):
        verdict = parse_answer(unfinished, truncated=flagged)
        assert verdict.label is None
        assert verdict.reason == TRUNCATED
    # A final answer given before the cut still counts.
    assert parse_label('("best_description": 1) and to elaborate further', truncated=True) == 1
    assert parse_label("2", truncated=True) == 2


def test_the_clause_after_a_turn_decides() -> None:
    assert parse_label("Neither is perfect, but description 2 is better.") == 2
    assert parse_label("Description 2 is better, but neither shows any progress.") == 0
    assert parse_label("Neither is great; however, I prefer the first caption.") == 1


def test_corpus_covers_every_verdict_several_ways() -> None:
    labels = [label for _, _, label in CASES]
    for label in (1, 2, 0):
        assert labels.count(label) >= 5
    assert labels.count(None) >= 10


def test_bundled_prompt_renders_captions_literally() -> None:
    prompts = load_prompt_set("motif")
    assert prompts.version == "motif-v1"
    assert {"score", "descend", "descend_with_pet", "oracle"} <= set(prompts.tasks)
    assert prompts.choices == {"1": 1, "2": 2, "None": 0}
    score = prompts.task("score")
    tricky = 'You read: "{caption_2} {modifier}".'
    system, user = prompts.messages(tricky, "It's a wall.", score)
    assert system["role"] == "system" and "NetHack" in system["content"]
    assert user["role"] == "user"
    assert f'{{"description_1": "{tricky}"}}' in user["content"]
    assert '{"description_2": "It\'s a wall."}' in user["content"]
    assert score.modifier in user["content"]
    assert '("best_description": None)' in user["content"]
    direct = prompts.messages("a", "b", score, direct=True)[1]["content"]
    assert "Answer with 1, 2, or None" in direct
    # The answer format the prompt asks for is what the parser reads.
    assert parse_label('("best_description": 2)') == 2
    text = messages_to_text(prompts.messages("a", "b", score))
    assert text.startswith(system["content"]) and text.endswith("Answer:")


def test_prompt_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(PromptError, match="unknown task 'gnomes'.*score"):
        load_prompt_set().task("gnomes")
    with pytest.raises(PromptError, match="bundled prompts: maestromotif, motif"):
        load_prompt_set("nope")
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "version: x\nsystem: s\nuser: 'compare {caption_1}'\ndirect_user: '{caption_1}"
        " {caption_2}'\nchoices: {'1': 1}\ntasks: {score: {modifier: m, goal: g}}\n"
    )
    with pytest.raises(PromptError, match=r"`user` must contain \['caption_2'\]"):
        load_prompt_set(str(broken))
    broken.write_text(
        "version: x\nsystem: s\nuser: '{caption_1} {caption_2} {mood}'\ndirect_user: "
        "'{caption_1} {caption_2}'\nchoices: {'1': 1}\ntasks: {score: {modifier: m, goal: g}}\n"
    )
    with pytest.raises(PromptError, match="unknown fields \\['mood'\\]"):
        load_prompt_set(str(broken))
