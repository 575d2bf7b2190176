"""Reading a language model's free-form comparison of two captions.

`parse_answer(text, truncated)` returns a `Verdict`: `label` 1 or 2 (that caption shows more
progress), 0 (neither / a tie), or None when the answer cannot be read as one verdict, with
`reason` saying how it was read or why not. A label is only ever given when the answer
commits to it; anything doubtful is None, because a wrong label teaches the reward model
the wrong thing while an invalid answer only costs a question.

Reading order, first match wins:
1. Bare answer: the whole answer is a choice such as `2`, `(1)`, `None`, `Description 2.`
   (what constrained-choice decoding produces).
2. The prompt's final-answer format, `("best_description": 2)`, and spellings of it
   (`best description: caption 1`, JSON with quotes). Every occurrence must agree:
   an answer that lists several values (e.g. repeats the instructions) is ambiguous.
3. A labelled answer line: `Final answer: 2`, `Verdict: Description 1`, `Answer - neither`.
   Again every occurrence must agree.
4. A verdict sentence among the last few sentences, read from the end: "Description 2 is
   more likely to make progress", "I prefer the first caption over the second", "Neither
   description shows progress". A sentence with a negated or inverted comparison ("is not
   better", "is less useful") is ambiguous rather than guessed. In a sentence that turns
   ("Neither is perfect, but description 2 is better"), the clause after the turn decides.
A truncated answer (the model hit its token limit, or the text stops mid-sentence, without
closing punctuation) is read by steps 1-3 only: a sentence in an unfinished analysis is not
a verdict.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Invalid reasons, counted separately by the annotation stage.
EMPTY = "empty"
REFUSAL = "refusal"
AMBIGUOUS = "ambiguous"
TRUNCATED = "truncated"
NO_VERDICT = "no_verdict"

# How far back from the end a verdict sentence may be.
VERDICT_SENTENCES = 3

_NUMBER = {
    "1": 1,
    "one": 1,
    "first": 1,
    "former": 1,
    "2": 2,
    "two": 2,
    "second": 2,
    "latter": 2,
    "none": 0,
    "null": 0,
    "neither": 0,
    "tie": 0,
}
_NOUN = r"(?:description|caption|message|option|choice|candidate)"
# A value right at the start of a string: "2", "(2)", "caption 2", "the second one",
# "neither". Number words and ordinals count only with a noun ("answer: first, ..." is not 1).
_VALUE = re.compile(
    r"^[\s(\[{\"'#:=-]*(?:the\s+)?(?:"
    r"" + _NOUN + r"\s*[#_]?\s*(?:no\.?\s*|number\s*)?(1|2|one|two)\b"
    r"|(first|second|former|latter)\s+(?:" + _NOUN + r"|one)\b"
    r"|(former|latter)\b"
    r"|(1|2)\b(?!\.\d)"
    r"|(none|null|neither|tie)\b)"
)
_BARE = re.compile(
    r"^[\s(\[{\"'#]*(?:the\s+)?(?:" + _NOUN + r"\s*[#_]?\s*(?:no\.?\s*)?)?"
    r"(1|2|one|two|first|second|none|null|neither|tie)(?:\s+" + _NOUN + r")?[\s)\]}\"'.!]*$"
)
_MOTIF_FORMAT = re.compile(
    r"best[\s_-]*(?:description|caption|message)s?\W{0,6}(?:is\W{1,3})?"
    r"(?:" + _NOUN + r"[\s_#]*)?(1|2|one|two|none|null|neither)\b"
)
_ANSWER_LINE = re.compile(
    r"\b(?:final\s+|my\s+)?(?:answer|verdict|decision|choice)(?:\s*(?::|=|-)|\s+is\b)"
)
# A reference to one caption inside a sentence.
_REFERENCE = re.compile(
    r"\b" + _NOUN + r"s?\s*[#_]?\s*(?:no\.?\s*|number\s*)?(1|2|one|two)\b"
    r"|\b(first|second|former|latter)\s+(?:" + _NOUN + r"|one)\b"
    r"|\bthe\s+(former|latter)\b"
)
_PREFERENCE = re.compile(
    r"\b(?:better|best|more\s+likely|most\s+likely|more\s+progress|greater\s+progress|more"
    r"\s+useful|more\s+valuable|more\s+promising|more\s+significant|more\s+beneficial|more"
    r"\s+advanced|preferable|preferred|prefer|superior|wins|winner|choose|chose|pick|select"
    r"|go\s+with|favou?r)\b"
)
_NEITHER = re.compile(r"^\W*neither\b|\bneither\s+(?:" + _NOUN + r"s?|one|of|is|shows?|seems?)\b")
_TIE = re.compile(
    r"\bnone\s+of\s+(?:the|them)\b|\bequally\b|\ba\s+tie\b|\bno\s+(?:clear\s+)?"
    r"(?:difference|preference|winner)\b|\bboth\s+(?:are|show|describe|seem)\s+(?:equally|"
    r"the\s+same|similar)|\bthe\s+same\s+(?:amount|level)\s+of\s+progress\b"
)
_INVERTED = re.compile(r"\b(?:not|never|less|worse|fewer|lower|hardly|cannot)\b|n't\b")
_COMPARED = re.compile(r"\b(?:than|over|instead\s+of)\b")
_REFUSAL = re.compile(
    r"\b(?:i'?m\s+sorry|i\s+am\s+sorry|i\s+apologi[sz]e|as\s+an\s+ai|i\s+(?:cannot|can't|can"
    r"\s+not|am\s+unable\s+to|won't|will\s+not)\s+(?:help|assist|answer|determine|decide|"
    r"provide|comply|judge|compare|say))"
)
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")
_FINISHED = re.compile(r"[.!?)\]}\"':]\s*$")  # how a complete answer ends
_TURN = re.compile(r"\b(?:but|however|yet|although|though)\b")


@dataclass(frozen=True)
class Verdict:
    """A parsed answer: `label` in {1, 2, 0} or None, and how it was read (`reason`)."""

    label: int | None
    reason: str

    @property
    def valid(self) -> bool:
        """Whether the answer gave a label."""
        return self.label is not None


def normalise(text: str) -> str:
    """Lower-case text with unicode quotes and dashes made plain and markdown emphasis
    (`*`, backticks) removed, so the patterns see one spelling."""
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-"}))
    text = text.replace("—", "-").replace("*", "").replace("`", "")
    return text.lower().strip()


def _first_group(match: re.Match) -> str:
    return next(group for group in match.groups() if group)


def _agreeing(labels: list[int]) -> Verdict | None:
    """The one label all matches agree on, an ambiguous verdict if they differ, None if
    there are no matches."""
    if not labels:
        return None
    if len(set(labels)) > 1:
        return Verdict(None, AMBIGUOUS)
    return Verdict(labels[0], "explicit")


def _answer_lines(text: str) -> list[int]:
    labels = []
    for match in _ANSWER_LINE.finditer(text):
        value = _VALUE.match(text[match.end() : match.end() + 60])
        if value:
            labels.append(_NUMBER[_first_group(value)])
    return labels


def _sentence_verdict(sentence: str) -> Verdict | None:
    """The verdict one sentence states (the clause after its last turn first), an
    ambiguous verdict for a decisive sentence that cannot be read safely, or None for a
    sentence that decides nothing."""
    turns = list(_TURN.finditer(sentence))
    if turns:
        verdict = _clause_verdict(sentence[turns[-1].end() :])
        if verdict is not None:
            return verdict
    return _clause_verdict(sentence)


def _clause_verdict(sentence: str) -> Verdict | None:
    references = [
        (match.start(), _NUMBER[_first_group(match)]) for match in _REFERENCE.finditer(sentence)
    ]
    named = {label for _, label in references}
    preference = _PREFERENCE.search(sentence)
    if _NEITHER.search(sentence) or (_TIE.search(sentence) and not (preference and named)):
        return Verdict(0, "statement")
    if not preference or not named:
        return None
    if _INVERTED.search(sentence):
        return Verdict(None, AMBIGUOUS)
    if len(named) == 1:
        return Verdict(named.pop(), "statement")
    # Both captions named: "X is better than Y", "prefer X over Y".
    compared = _COMPARED.search(sentence)
    if compared:
        before = [label for position, label in references if position < compared.start()]
        after = [label for position, label in references if position > compared.start()]
        if before and after and before[-1] != after[0]:
            return Verdict(before[-1], "statement")
    return Verdict(None, AMBIGUOUS)


def parse_answer(text: str | None, truncated: bool = False) -> Verdict:
    """Read a free-form answer; see the module docstring for the rules."""
    if text is None or not text.strip():
        return Verdict(None, EMPTY)
    clean = normalise(text)
    bare = _BARE.match(clean)
    if bare:
        return Verdict(_NUMBER[bare.group(1)], "bare")
    for labels in (
        [_NUMBER[match.group(1)] for match in _MOTIF_FORMAT.finditer(clean)],
        _answer_lines(clean),
    ):
        verdict = _agreeing(labels)
        if verdict is not None:
            return verdict
    if truncated or not _FINISHED.search(clean):
        return Verdict(None, TRUNCATED)
    sentences = [part for part in _SENTENCE_END.split(clean) if part.strip()]
    for sentence in reversed(sentences[-VERDICT_SENTENCES:]):
        verdict = _sentence_verdict(sentence)
        if verdict is not None:
            return verdict
    if _REFUSAL.search(clean):
        return Verdict(None, REFUSAL)
    return Verdict(None, NO_VERDICT)


def parse_label(text: str | None, truncated: bool = False) -> int | None:
    """Just the label of `parse_answer` (1, 2, 0, or None)."""
    return parse_answer(text, truncated).label
