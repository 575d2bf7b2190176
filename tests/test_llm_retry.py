"""Asking again when an answer cannot be read (`AnnotatorConfig.retries`), and the sampling
settings (`top_k`) each text backend passes on.

The retry logic runs for real in `TextAnnotator.judge`; only `complete` is scripted, by a
small subclass that answers as a model would, so the labels are known. The `hf` backend
then runs it on a tiny random-weight Llama built here (no download)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from maestro.llm import AnnotatorConfig, PairQuestion, PromptError, load_prompt_set
from maestro.llm.backends import (
    Completion,
    TextAnnotator,
    hf_sampling_kwargs,
    make_annotator,
    openai_request_options,
    vllm_sampling_params,
)
from maestro.llm.prompts import messages_to_text

from .tiny_llm import build_random_llama

READABLE = '("best_description": 1)'
RAMBLING = "Both descriptions are interesting. The first one mentions"


class ScriptedAnnotator(TextAnnotator):
    """A text annotator whose model answers from a script: per first caption, the answers
    of successive attempts. Every batch of prompts it is sent is kept in `calls`."""

    def __init__(self, script: dict[str, list[str]], **config):
        super().__init__(AnnotatorConfig(backend="hf", model="scripted", **config))
        self.script = script
        self.calls: list[list] = []

    def complete(self, prompts, choices, max_tokens):
        self.calls.append(list(prompts))
        completions = []
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else prompt[1]["content"]
            caption = next(caption for caption in self.script if f'"{caption}"' in text)
            # Each earlier attempt left one "Answer:" cue (plain text) or one assistant turn.
            done = text.count("Answer: ") if isinstance(prompt, str) else len(prompt) // 2 - 1
            completions.append(Completion(self.script[caption][done], False))
        return completions


@pytest.fixture(scope="module")
def task():
    return load_prompt_set().task("score")


def test_only_unreadable_answers_are_asked_again_in_one_batch(task) -> None:
    annotator = ScriptedAnnotator(
        {
            "at once": [READABLE],
            "second try": [RAMBLING, '("best_description": 2)'],
            "never": [RAMBLING, "I cannot decide."],
        },
        retries=1,
    )
    questions = [PairQuestion(caption, "It's a wall.", task) for caption in annotator.script]
    judgements = annotator.judge(questions)

    assert [len(call) for call in annotator.calls] == [3, 1 + 1]
    first = annotator.prompts.messages("second try", "It's a wall.", task)
    assert annotator.calls[1][0] == [
        *first,
        {"role": "assistant", "content": RAMBLING},
        {"role": "user", "content": annotator.prompts.retry},
    ]
    assert [j.label for j in judgements] == [1, 2, None]
    assert [j.attempts for j in judgements] == [1, 2, 2]
    assert judgements[0].raw == READABLE
    assert judgements[1].raw == f'{RAMBLING}\n\n--- attempt 2 ---\n\n("best_description": 2)'
    assert judgements[1].reason == "explicit"
    assert judgements[2].raw.startswith(RAMBLING) and judgements[2].raw.endswith("decide.")
    assert judgements[2].reason == "refusal"  # the last attempt's


def test_without_retries_an_unreadable_answer_is_invalid(task) -> None:
    annotator = ScriptedAnnotator({"second try": [RAMBLING, READABLE]})
    [judgement] = annotator.judge([PairQuestion("second try", "It's a wall.", task)])
    assert len(annotator.calls) == 1
    assert judgement.label is None
    assert judgement.raw == RAMBLING
    assert judgement.attempts == 1


def test_each_retry_carries_the_whole_conversation(task) -> None:
    script = {"late": [RAMBLING, "Still thinking.", '("best_description": None)']}
    annotator = ScriptedAnnotator(script, retries=2)
    [judgement] = annotator.judge([PairQuestion("late", "It's a wall.", task)])
    assert (judgement.label, judgement.attempts) == (0, 3)
    third = annotator.calls[2][0]
    assert [message["role"] for message in third] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert [third[2]["content"], third[4]["content"]] == script["late"][:2]
    assert judgement.raw.count("--- attempt") == 2


def test_plain_text_retry_prompt(task) -> None:
    annotator = ScriptedAnnotator({"second try": [RAMBLING, READABLE]}, retries=1, chat=False)
    [judgement] = annotator.judge([PairQuestion("second try", "It's a wall.", task)])
    assert (judgement.label, judgement.attempts) == (1, 2)
    first, again = annotator.calls[0][0], annotator.calls[1][0]
    assert again == f"{first} {RAMBLING}\n\n{annotator.prompts.retry}\n\nAnswer:"
    assert first == messages_to_text(annotator.prompts.messages("second try", "It's a wall.", task))


def test_prompt_files_need_a_plain_retry_message(tmp_path) -> None:
    assert "final answer" in load_prompt_set().retry
    body = (
        "version: x\nsystem: s\nuser: '{caption_1} {caption_2}'\ndirect_user: '{caption_1}"
        " {caption_2}'\nchoices: {'1': 1}\ntasks: {score: {modifier: m, goal: g}}\n"
    )
    prompt = tmp_path / "mine.yaml"
    prompt.write_text(body)
    with pytest.raises(PromptError, match="`retry` must be a non-empty string"):
        load_prompt_set(str(prompt))
    prompt.write_text(body + "retry: 'Which is better, {caption_1}?'\n")
    with pytest.raises(PromptError, match="`retry` is plain text"):
        load_prompt_set(str(prompt))
    prompt.write_text(body + "retry: Give your final answer only.\n")
    assert load_prompt_set(str(prompt)).retry == "Give your final answer only."


def test_top_k_and_retries_are_validated() -> None:
    config = AnnotatorConfig()
    assert (config.top_k, config.retries) == (0, 0)
    assert AnnotatorConfig(top_k=50, retries=1).top_k == 50
    for bad in ({"top_k": -1}, {"retries": -1}, {"top_k": 2.5}):
        with pytest.raises(ValidationError):
            AnnotatorConfig(**bad)


PAPER = {"backend": "vllm", "model": "m", "temperature": 0.1, "top_p": 0.95, "top_k": 50}


def test_vllm_sampling_params_carry_top_k() -> None:
    params = vllm_sampling_params(AnnotatorConfig(**PAPER), None, 4096)
    assert (params.top_k, params.top_p, params.temperature) == (50, 0.95, 0.1)
    assert params.max_tokens == 4096
    off = vllm_sampling_params(AnnotatorConfig(**{**PAPER, "top_k": 0}), ["1", "2"], 8)
    assert off.top_k == 0  # vLLM's "off"
    assert off.structured_outputs.choice == ["1", "2"]


def test_hf_and_openai_arguments_carry_top_k() -> None:
    assert hf_sampling_kwargs(AnnotatorConfig(**PAPER)) == {
        "do_sample": True,
        "temperature": 0.1,
        "top_p": 0.95,
        "top_k": 50,
    }
    # Off is 0, not unset: unset, transformers would sample from the top 50.
    assert hf_sampling_kwargs(AnnotatorConfig(**{**PAPER, "top_k": 0}))["top_k"] == 0
    assert hf_sampling_kwargs(AnnotatorConfig(**{**PAPER, "temperature": 0}))["do_sample"] is False

    assert openai_request_options(AnnotatorConfig(**PAPER), None, 64)["extra_body"] == {"top_k": 50}
    plain = openai_request_options(AnnotatorConfig(**{**PAPER, "top_k": 0}), None, 64)
    assert plain["extra_body"] is None
    choice = openai_request_options(AnnotatorConfig(**{**PAPER, "top_k": 0}), ["1"], 64)
    assert choice["extra_body"] == {"structured_outputs": {"choice": ["1"]}}


def test_hf_backend_retries_and_top_k_for_real(tmp_path, task) -> None:
    model = str(build_random_llama(tmp_path / "model"))
    greedy = make_annotator({"backend": "hf", "model": model})
    # Sampling from the single most likely token is greedy decoding: top_k reaches generate.
    top_1 = make_annotator({"backend": "hf", "model": model, "temperature": 1.0, "top_k": 1})
    prompts = ["NetHack", [{"role": "user", "content": "Which description?"}]]
    assert top_1.generate(prompts, 12) == greedy.generate(prompts, 12)

    paper = {**PAPER, "backend": "hf", "model": model, "max_tokens": 16, "retries": 1}
    questions = [PairQuestion("You kill the newt!", "It's a wall.", task)] * 3
    judgements = make_annotator(paper).judge(questions)
    assert len(judgements) == 3
    # Random weights ramble: an unreadable answer is asked once more, both answers kept.
    for judgement in judgements:
        answers = judgement.raw.split("\n\n--- attempt 2 ---\n\n")
        assert len(answers) == judgement.attempts
        if judgement.attempts == 1:
            assert judgement.label is not None
    assert sum(judgement.attempts == 2 for judgement in judgements) >= 2
