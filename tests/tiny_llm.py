"""Random-weight Llama models built locally, for the tests of the text backends and dashboards.

Nothing is downloaded: a byte-level BPE tokenizer is trained with `tokenizers` on the
prompt texts (so prompts tokenize compactly), and a `LlamaForCausalLM` with random weights
is saved beside it in the Hugging Face layout that vLLM and transformers load. Its answers
are noise, which is the point: the serving and parsing paths run for real, and every
answer must still be recorded (mostly as invalid).
"""

from __future__ import annotations

from pathlib import Path

from maestro.llm.prompts import load_prompt_set

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
# A minimal chat template: roles and contents in order, then the assistant's turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: "
    "{{ message['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def tokenizer_corpus() -> list[str]:
    """Texts to train the tokenizer on: every bundled prompt template and task text."""
    prompts = load_prompt_set()
    texts = [prompts.system, prompts.user, prompts.direct_user, *prompts.choices]
    for task in prompts.tasks.values():
        texts += [task.modifier, task.goal]
    return texts


def build_random_llama(
    folder: str | Path,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    max_positions: int = 1024,
    dtype: str = "bfloat16",
    seed: int = 0,
) -> Path:
    """Write a tokenizer and a random-weight Llama model to `folder`; returns it.

    The defaults make a model of a few hundred thousand parameters that loads in a second;
    pass an 8B-class shape (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate
    14336, vocab 128256) for throughput work on a GPU."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    return folder
