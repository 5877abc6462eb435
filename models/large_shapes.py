"""The shapes of the 3B-7B decoders that bounded-memory (streaming) compression is built
for, so that their checkpoints can be made on any machine (models/synthetic_checkpoint.py)
and their sizes listed without downloading gigabytes of weights.

A shape is only the architecture: sizes, RoPE settings, tied or untied head. The weights
of a synthetic checkpoint are random; the tokenizer is always SmolLM2's (49152 tokens,
the default model's), so `bos`/`eos` ids in every config are SmolLM2-Instruct's.

Parameter count of a Llama/Mistral decoder (no biases; SwiGLU MLP, arXiv 2002.05202;
grouped-query attention, arXiv 2305.13245), with d = hidden, f = intermediate,
h_q / h_kv = query / key-value heads of width d_h, L = layers, V = vocab:

    per block  = d * d_h * (2 h_q + 2 h_kv)     q, k, v, o projections
               + 3 d f                          gate, up, down
               + 2 d                            the two RMSNorm scales
    total      = V d (embeddings) + L * per block + d (final norm) + [V d when untied]
"""

from __future__ import annotations

import dataclasses
from typing import Any

from models.errors import ModelError

# SmolLM2-135M-Instruct's tokenizer: `<|im_start|>` = 1 (BOS), `<|im_end|>` = 2 (EOS and
# padding), 49152 tokens. Every synthetic checkpoint ships this tokenizer.
SMOLLM2_VOCAB = 49152
SMOLLM2_BOS_ID = 1
SMOLLM2_EOS_ID = 2

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
_GB = 1e9


@dataclasses.dataclass(frozen=True)
class LargeShape:
    """One decoder architecture. `test=True` marks the tiny shapes tests build in
    milliseconds; they are listed apart from the real ones."""

    name: str
    architecture: str  # "llama" or "mistral" (the transformers model_type)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    rope_theta: float
    max_position: int
    source: str  # where every number comes from (shown by `toolkit models`)
    rope_scaling: dict[str, Any] | None = None
    head_dim: int | None = None  # None: hidden // heads
    rms_norm_eps: float = 1e-5
    test: bool = False

    def __post_init__(self) -> None:
        if self.architecture not in _ARCHITECTURES:
            raise ModelError(f"shape {self.name!r}: architecture {self.architecture!r} is not "
                             f"one of {', '.join(_ARCHITECTURES)}")
        sizes = ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab")
        for key in sizes:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelError(f"shape {self.name!r}: {key} = {value!r} must be a positive "
                                 "integer")
        if self.heads % self.kv_heads:
            raise ModelError(f"shape {self.name!r}: {self.heads} query heads are not a "
                             f"multiple of {self.kv_heads} key-value heads")
        if self.head_dim is None and self.hidden % self.heads:
            raise ModelError(f"shape {self.name!r}: hidden {self.hidden} is not divisible by "
                             f"{self.heads} heads; give head_dim")

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden // self.heads

    def with_layers(self, layers: int | None) -> LargeShape:
        """The same shape with `layers` blocks (benchmarks: a 3B shape with 4 blocks);
        itself for None."""
        if layers is None or layers == self.layers:
            return self
        if isinstance(layers, bool) or not isinstance(layers, int) or layers <= 0:
            raise ModelError(f"--layers {layers!r} must be a positive integer")
        return dataclasses.replace(self, layers=layers)

    # ---- parameter counts (see the module docstring) ----

    def block_param_count(self) -> int:
        d, d_h = self.hidden, self.attention_head_dim
        attention = d * d_h * (2 * self.heads + 2 * self.kv_heads)
        return attention + 3 * d * self.intermediate + 2 * d

    def embedding_param_count(self) -> int:
        """Input embeddings plus the untied head (0 extra when tied)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def non_embedding_param_count(self) -> int:
        return self.layers * self.block_param_count() + self.hidden

    def param_count(self) -> int:
        return self.embedding_param_count() + self.non_embedding_param_count()

    def size_gb(self, bytes_per_param: int) -> float:
        return self.param_count() * bytes_per_param / _GB

    # ---- the Hugging Face config ----

    def hf_config(self, *, torch_dtype: str = "bfloat16") -> dict[str, Any]:
        """config.json as transformers' LlamaConfig / MistralConfig reads it."""
        config: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[self.architecture]],
            "model_type": self.architecture,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.attention_head_dim,
            "hidden_act": "silu",
            "vocab_size": self.vocab,
            "tie_word_embeddings": self.tied,
            "max_position_embeddings": self.max_position,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "initializer_range": 0.02,
            "attention_dropout": 0.0,
            "use_cache": True,
            "bos_token_id": SMOLLM2_BOS_ID,
            "eos_token_id": SMOLLM2_EOS_ID,
            "pad_token_id": SMOLLM2_EOS_ID,
            "torch_dtype": torch_dtype,
        }
        if self.architecture == "llama":
            config.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
        else:
            config["sliding_window"] = None
        return config

    def table_row(self) -> list[object]:
        """One row of `toolkit models`' shape table (see SHAPE_COLUMNS)."""
        return [self.name + (" (test)" if self.test else ""), self.architecture, self.layers,
                self.hidden, self.intermediate, f"{self.heads}/{self.kv_heads}", self.vocab,
                "yes" if self.tied else "no", format_params(self.param_count()),
                f"{self.size_gb(4):.2f}", f"{self.size_gb(2):.2f}"]


def format_params(count: int) -> str:
    """"2.730B" or "3.29M": a parameter count for tables and summaries."""
    return f"{count / 1e9:.3f}B" if count >= 1e9 else f"{count / 1e6:.2f}M"


SHAPE_COLUMNS = ["shape", "arch", "layers", "hidden", "intermediate", "heads/kv", "vocab",
                 "tied", "params", "fp32 GB", "bf16 GB"]

_SHAPES: dict[str, LargeShape] = {}


def register_shape(shape: LargeShape) -> LargeShape:
    """Add `shape` to the registry; a second shape of the same name is a programming error."""
    if shape.name in _SHAPES:
        raise ValueError(f"large shape {shape.name!r} is registered twice")
    _SHAPES[shape.name] = shape
    return shape


def large_shapes(*, include_test: bool = True) -> list[LargeShape]:
    """Registered shapes, real ones first, in registration order."""
    shapes = list(_SHAPES.values())
    return [s for s in shapes if not s.test] + ([s for s in shapes if s.test]
                                                 if include_test else [])


def shape_named(name: str) -> LargeShape:
    shape = _SHAPES.get(name)
    if shape is None:
        raise ModelError(f"unknown shape {name!r}: pick one of "
                         f"{', '.join(s.name for s in large_shapes())} (see `toolkit models`)")
    return shape


# ---------------------------------------------------------------------------------------
# AFM-on-device, arXiv 2407.21075 (Apple Intelligence Foundation Language Models, 2024),
# table "AFM-on-device dimensions": model dimension 3072, head dimension 128, 24 query
# heads, 8 key/value heads, 26 layers, 2.58B non-embedding and 0.15B embedding
# parameters; vocabulary 49K, shared input/output embedding, SwiGLU, RMSNorm pre-norm,
# RoPE with base frequency 500k, context lengthened to 32k in the last pre-training stage.
# The table has no FFN width, so it is derived from the 2.58B: each block holds
# 2 * 3072^2 + 2 * 3072 * 1024 = 25,165,824 attention weights (q, o; k, v are 3072 x 1024)
# plus 2 * 3072 norm weights, so 2.58e9 / 26 - 25,171,968 = 74,058,801 = 3 * 3072 * f
# gives f = 8035.9; the nearest multiple of 32 is 8032, which makes 2,579,069,952
# non-embedding parameters (2.58B), and the only one that rounds to 2.58B (8000 gives
# 2.571B, 8064 2.587B; no multiple of 64 fits). Embeddings: 49152 * 3072 = 150,994,944
# (0.15B): the paper's "49K" is taken as SmolLM2's 49152, whose tokenizer these
# checkpoints ship. AFM also normalises queries and keys (QK-norm, 2 * 128 weights per
# block); transformers' Llama has no QK-norm, so the shape leaves those 6,656 weights out.
register_shape(LargeShape(
    name="afm-3b", architecture="llama", layers=26, hidden=3072, intermediate=8032,
    heads=24, kv_heads=8, vocab=SMOLLM2_VOCAB, tied=True, rope_theta=500000.0,
    max_position=32768,
    source="arXiv 2407.21075 (AFM-on-device); FFN width 8032 derived from its 2.58B "
           "non-embedding parameters; no QK-norm",
))

# Llama 3.2 3B: config.json of meta-llama/Llama-3.2-3B (hidden 3072, 28 layers, 24/8 heads,
# intermediate 8192, vocab 128256, tied, rope_theta 500000 with the "llama3" RoPE scaling
# of factor 32, low/high frequency factors 1/4 and an original 8192 context, 131072
# positions); Meta's model card gives 3.21B parameters.
register_shape(LargeShape(
    name="llama-3.2-3b", architecture="llama", layers=28, hidden=3072, intermediate=8192,
    heads=24, kv_heads=8, vocab=128256, tied=True, rope_theta=500000.0,
    max_position=131072,
    rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    source="meta-llama/Llama-3.2-3B config.json; 3.21B parameters (model card)",
))

# Llama 2 7B, arXiv 2307.09288 and meta-llama/Llama-2-7b-hf config.json: hidden 4096,
# 32 layers, 32 heads (multi-head attention), intermediate 11008, vocab 32000, untied head,
# rope_theta 10000, 4096 positions, rms_norm_eps 1e-5; 6.74B parameters.
register_shape(LargeShape(
    name="llama-2-7b", architecture="llama", layers=32, hidden=4096, intermediate=11008,
    heads=32, kv_heads=32, vocab=32000, tied=False, rope_theta=10000.0,
    max_position=4096,
    source="arXiv 2307.09288; meta-llama/Llama-2-7b-hf config.json; 6.74B parameters",
))

# Mistral 7B, arXiv 2310.06825: hidden 4096, 32 layers, 32 query / 8 KV heads,
# intermediate 14336, vocab 32000, untied head. The numbers here are v0.2's
# (mistralai/Mistral-7B-v0.2: rope_theta 1e6, 32k context, no sliding window); v0.1 has
# the same weights' shapes but rope_theta 10000 and a 4096-token sliding window, and v0.3
# extends the vocabulary to 32768. 7.24B parameters (all three differ only in RoPE/window
# and, for v0.3, 768 more embedding rows).
register_shape(LargeShape(
    name="mistral-7b", architecture="mistral", layers=32, hidden=4096, intermediate=14336,
    heads=32, kv_heads=8, vocab=32000, tied=False, rope_theta=1000000.0,
    max_position=32768,
    source="arXiv 2310.06825; Mistral-7B v0.2 (rope_theta 1e6, no sliding window, vocab "
           "32000); 7.24B parameters",
))

# Tiny shapes for tests of the streaming engine: the real tokenizer's vocabulary (so text
# tokenizes to valid ids), everything else small enough to build in milliseconds.
register_shape(LargeShape(
    name="tiny-llama-test", architecture="llama", layers=4, hidden=64, intermediate=128,
    heads=4, kv_heads=2, vocab=SMOLLM2_VOCAB, tied=True, rope_theta=10000.0,
    max_position=2048, source="test shape (GQA 4/2, tied)", test=True,
))
register_shape(LargeShape(
    name="tiny-mistral-test", architecture="mistral", layers=4, hidden=64, intermediate=128,
    heads=4, kv_heads=2, vocab=SMOLLM2_VOCAB, tied=False, rope_theta=1000000.0,
    max_position=2048, source="test shape (GQA 4/2, untied head)", test=True,
))
