"""Language models for Maestro: caption-pair judges and text generators behind one interface
(`backends`), prompts as data files (`prompts/`), and the answer parser (`parsing`)."""

from maestro.llm.backends import (
    BACKENDS,
    Annotator,
    AnnotatorActor,
    AnnotatorConfig,
    AnnotatorError,
    Judgement,
    PairQuestion,
    make_annotator,
)
from maestro.llm.parsing import Verdict, parse_answer, parse_label
from maestro.llm.prompts import PromptError, PromptSet, TaskText, load_prompt_set

__all__ = [
    "BACKENDS",
    "Annotator",
    "AnnotatorActor",
    "AnnotatorConfig",
    "AnnotatorError",
    "Judgement",
    "PairQuestion",
    "PromptError",
    "PromptSet",
    "TaskText",
    "Verdict",
    "load_prompt_set",
    "make_annotator",
    "parse_answer",
    "parse_label",
]
