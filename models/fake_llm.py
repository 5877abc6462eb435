"""Tiny random-weight decoders, one per supported family, for fast tests.

Each is a real transformers model class with a few thousand parameters and a byte-level
tokenizer (256 byte tokens + 3 specials), so the whole compress/eval/save path runs on
them in seconds. Widths are multiples of 8 so 2:4 and 4:8 patterns apply everywhere.
"""

from __future__ import annotations

import torch

from models.registry import LoadedModel, register_model

FAKE_SEED = 0
_TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
    bos_token_id=1, eos_token_id=2, pad_token_id=2,
)


def byte_level_tokenizer():
    """A 259-entry byte-level BPE tokenizer without merges: every UTF-8 byte is a token."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(tok_models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="</s>",
    )


def _build_fake(config_class_name: str, **overrides) -> LoadedModel:
    import transformers
    from transformers import AutoModelForCausalLM

    tokenizer = byte_level_tokenizer()
    config_class = getattr(transformers, config_class_name)
    config = config_class(vocab_size=len(tokenizer), **{**_TINY, **overrides})
    with torch.random.fork_rng():
        torch.manual_seed(FAKE_SEED)
        module = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    module.eval()
    source = f"random init ({config_class_name})"
    return LoadedModel(module=module, tokenizer=tokenizer, source=source)


@register_model("fake-llama", family="llm", weights="random, generated (tests)",
                description="2-block Llama with hidden 64", fake=True)
def fake_llama() -> LoadedModel:
    return _build_fake("LlamaConfig", tie_word_embeddings=True)


@register_model("fake-mistral", family="llm", weights="random, generated (tests)",
                description="2-block Mistral with hidden 64", fake=True)
def fake_mistral() -> LoadedModel:
    return _build_fake("MistralConfig", sliding_window=None)


@register_model("fake-qwen2", family="llm", weights="random, generated (tests)",
                description="2-block Qwen2 (q/k/v biases) with hidden 64", fake=True)
def fake_qwen2() -> LoadedModel:
    return _build_fake("Qwen2Config", tie_word_embeddings=True)


@register_model("fake-gemma", family="llm", weights="random, generated (tests)",
                description="2-block Gemma (GeGLU, scaled embeddings) with hidden 64", fake=True)
def fake_gemma() -> LoadedModel:
    return _build_fake("GemmaConfig")
