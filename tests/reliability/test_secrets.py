"""A spec cannot reach secrets or code: API keys go only to the hosts they belong to, a
spec names no other environment variable as a key, and running a model's own code is the
environment's choice."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from maestro.llm.backends import AnnotatorConfig, AnnotatorError, api_key_for


@pytest.fixture
def clean_env(monkeypatch):
    for name in (
        "OPENAI_API_KEY",
        "MAESTRO_LLM_API_KEY",
        "OPENAI_BASE_URL",
        "MAESTRO_LLM_API_HOSTS",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_key_goes_only_to_its_own_hosts(clean_env):
    clean_env.setenv("OPENAI_API_KEY", "sk-openai")
    assert api_key_for("https://api.openai.com/v1", "OPENAI_API_KEY") == "sk-openai"
    with pytest.raises(AnnotatorError, match="not sent to 'listener.example'"):
        api_key_for("http://listener.example:9000/v1", "OPENAI_API_KEY")
    clean_env.setenv("OPENAI_BASE_URL", "http://vllm.internal:8000/v1")
    assert api_key_for("http://vllm.internal:8000/v1", "OPENAI_API_KEY") == "sk-openai"
    clean_env.setenv("MAESTRO_LLM_API_KEY", "own-key")
    with pytest.raises(AnnotatorError):
        api_key_for("http://other.internal/v1", "MAESTRO_LLM_API_KEY")
    clean_env.setenv("MAESTRO_LLM_API_HOSTS", "other.internal, third.internal")
    assert api_key_for("http://other.internal/v1", "MAESTRO_LLM_API_KEY") == "own-key"
    # No key set: local servers take any, and nothing secret is sent.
    clean_env.delenv("OPENAI_API_KEY")
    assert api_key_for("http://listener.example:9000/v1", "OPENAI_API_KEY") == "none"


def test_a_spec_names_no_other_variable_as_a_key_and_no_remote_code():
    base = {"backend": "openai", "model": "m"}
    with pytest.raises(ValidationError, match="api_key_env"):
        AnnotatorConfig.model_validate({**base, "openai": {"api_key_env": "AWS_SECRET_ACCESS_KEY"}})
    assert AnnotatorConfig.model_validate(
        {**base, "openai": {"api_key_env": "MAESTRO_LLM_API_KEY"}}
    )
    vllm = {"backend": "vllm", "model": "m", "vllm": {"engine_kwargs": {"trust_remote_code": True}}}
    with pytest.raises(ValidationError, match="MAESTRO_TRUST_REMOTE_CODE"):
        AnnotatorConfig.model_validate(vllm)


def test_an_unknown_prompt_is_refused_with_the_config():
    with pytest.raises(ValidationError, match="no-such-prompt"):
        AnnotatorConfig.model_validate({"prompt": "no-such-prompt"})
