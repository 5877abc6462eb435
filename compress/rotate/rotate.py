"""`rotate`: fold the RMSNorm scales into the linears and rotate the residual stream by an
orthogonal matrix, so weight outliers are spread over all input channels before a
quantization stage (rtn, gptq, awq, palettize) rounds them. QuaRot (Ashkboos et al., arXiv
2404.00456) and SpinQuant (Liu et al., arXiv 2405.16406), the fusable rotations only.

Row vectors, nn.Linear y = x W^T (W is [out, in]). A pre-norm block reads the residual
stream h through RMSNorm(h) = h / rms(h) * s and adds its writers' outputs back to h.

1. Fold (QuaRot section 3, "computational invariance"): every linear reading norm(h)
   takes the scale, W <- W diag(s), and s becomes 1 (input_layernorm -> q, k, v;
   post_attention_layernorm -> gate, up; the final norm -> lm_head).
2. R1, one orthogonal Q of the hidden size: with unit scales RMSNorm(h Q) = RMSNorm(h) Q
   (an orthogonal Q keeps rms), so the rotated stream h' = h Q is carried exactly by

       embeddings            E <- E Q
       readers (q, k, v, gate, up, lm_head)   W <- W Q
       writers (o_proj, down_proj)            W <- Q^T W,  b <- Q^T b

   A mixture-of-experts MLP (models.moe_lm) has more readers, its router and every
   expert's gate and up, and one writer per expert, its down; the expert weights are
   stacked [E, out, in] and take the same products broadcast over the experts. The router
   reads RMSNorm(h) Q with W_r Q, so its logits, and the routing, are unchanged.

3. R2 (SpinQuant's per-head rotation, fused; on by default): one orthogonal R of the head
   size per block rotates every value head, v_h' = v_h R. Attention mixes value rows
   linearly, so the attention output heads are rotated alike, and

       v_proj  W_h <- R^T W_h,  b_h <- R^T b_h   (each of the key/value heads)
       o_proj  W[:, head] <- W[:, head] R          (each of the query heads)

   GQA shares a value head between query heads; the same R serves them all.

Q and R are seeded randomized Hadamard matrices (H diag(+-1) / sqrt(n)) or, with
`kind: random`, QR of a seeded Gaussian (compress/rotate/hadamard.py). The network's
function is unchanged up to rounding; what changes is the weights' incoherence
mu(W) = max|W_ij| / rms(W) (QuaRot's motivation: a Hadamard spreads an outlier input
channel over all of them), which the stage report gives before and after.

4. With `learn_steps` > 0, SpinQuant's learned rotation (arXiv 2405.16406): one more
   orthogonal U of the hidden size and one V per block of the head size, trained on the
   calibration windows with round-to-nearest of the block linears in the loop so that the
   quantized model's next-token distributions stay near the float model's; carried into
   the weights like R1 and R2 (compress/rotate/learned.py). Kept only when it lowers the
   KL on held-out calibration windows.

Not done here, on purpose: QuaRot's online rotations (R3 on queries/keys after RoPE, R4 a
Hadamard before down_proj) need a Hadamard transform at run time; the artifact formats and
export files hold weights only, so they could not carry it.

When it helps (SmolLM2-135M, 4-bit groups of 64; the recovery sweep in BENCHMARKS.md,
`toolkit sweep sweeps/smollm2-recovery.yaml`): rotate + GPTQ gives Wikipedia perplexity
23.44 against round-to-nearest's 26.87 and GPTQ's own 25.15 (dense 21.04). Before
round-to-nearest it hurt in development checks (not a committed benchmark): SmolLM2's
norm scales vary a lot across channels, and once folded they are rounded with the
weights inside each group instead of staying in floating point; the rotation then mixes
every channel into every group. GPTQ's error feedback over the Hessian absorbs this; RTN
cannot. Use rotate before gptq (recipes/rotate-gptq4.yaml), not before rtn. The learned
rotation (`learn_steps: 100`, sweeps/smollm2-recovery-rotate-learned.yaml) lowered the
round-to-nearest model's held-out KL from 0.799 to 0.595 but, followed by GPTQ, gave
perplexity 23.72 against the seeded rotation's 23.44 (BENCHMARKS.md rotation-factoids).

Under the streaming engine (--engine streaming, a model that does not fit in memory) the
same products run one block at a time (compress/rotate/streaming_stage.py) and write the
same tensors.

A tied LM head (the embedding table) stops being tied: the final norm's scale is folded
into the head but not into the embeddings, so the head is untied (the model's
`tie_word_embeddings` is set to false) and the artifact holds one more [vocab, hidden]
matrix; the report says so.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import torch
from torch import nn

from compress.config import MethodConfig, register_handler
from compress.errors import CompressError
from compress.quant.grid import SUPPORTED_BITS
from compress.rotate.hadamard import KINDS, orthogonal
from compress.rotate.learned import LearnSettings, check_inputs, learn, residual_sites
from compress.sweep import Progress, dtype_name
from models.adapter import ResidualBlock, decoder_layout, residual_blocks
from models.errors import ModelError

# Half-width of the band a probed norm's behaviour must fall in (relative): the probe
# runs in the model's dtype (bf16 has ~3 significant digits) and through its epsilon.
_PROBE_TOLERANCE = 2e-2


@dataclasses.dataclass
class RotateConfig(MethodConfig):
    method: ClassVar[str] = "rotate"
    # The residual layout (norms, readers, writers) of every block, not just its linears.
    adapter: ClassVar[str | None] = "residual_stream"

    # "hadamard": randomized Hadamard (QuaRot; spreads any single outlier channel evenly);
    # "random": QR of a Gaussian (works at every size, a little less even).
    kind: str = "hadamard"
    # Seed of the random signs / Gaussian: the same seed gives the same artifact.
    seed: int = 0
    # SpinQuant's R2: rotate each value head (v_proj outputs, o_proj inputs) too.
    head_rotation: bool = True
    # SpinQuant's learned rotation (compress/rotate/learned.py): Adam steps on the
    # calibration windows, one window each; 0 keeps the seeded rotation. The grid in the
    # loop (learn_bits, learn_group_size) should be the next quantization stage's.
    learn_steps: int = 0
    learn_lr: float = 2e-3
    learn_bits: int = 4
    learn_group_size: int = 64
    # Calibration windows left out of training; the KL on them decides whether the
    # learned matrices are kept.
    learn_held_out: int = 2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CompressError(f"rotation kind {self.kind!r} is unknown: choose one of "
                                f"{', '.join(KINDS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) \
                or not 0 <= self.seed < 2**63:  # torch.Generator takes a signed 64-bit seed
            raise CompressError(f"seed {self.seed!r} must be an integer in [0, 2^63)")
        if not isinstance(self.head_rotation, bool):
            raise CompressError(f"head_rotation {self.head_rotation!r} must be true or false")
        for name, minimum in (("learn_steps", 0), ("learn_group_size", 1),
                              ("learn_held_out", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise CompressError(f"{name} {value!r} must be an integer >= {minimum}")
        if self.learn_bits not in SUPPORTED_BITS:
            raise CompressError(f"learn_bits {self.learn_bits!r} must be one of "
                                f"{', '.join(map(str, SUPPORTED_BITS))}")
        if isinstance(self.learn_lr, bool) or not isinstance(self.learn_lr, (int, float)) \
                or not 0 < self.learn_lr < float("inf"):
            raise CompressError(f"learn_lr {self.learn_lr!r} must be a positive number")


@dataclasses.dataclass
class RotateReport:
    kind: str
    seed: int
    hidden_size: int
    head_dim: int | None  # None when head_rotation is off (or blocks' head sizes differ)
    untied_head: bool
    head_bytes_added: int  # the untied head's size in the model's dtype, 0 when none
    linears: int  # linears rewritten (block linears + head)
    incoherence_before: dict[str, float]
    incoherence_after: dict[str, float]
    forward_dtype: str
    seconds: dict[str, float]
    learned: dict[str, Any] | None = None  # learned.learn's fields, with learn_steps > 0

    def manifest_section(self) -> dict[str, Any]:
        section = {"kind": "rotate", "rotation": self.kind, "seed": self.seed,
                   "hidden_size": self.hidden_size, "head_dim": self.head_dim,
                   "untied_head": self.untied_head,
                   "head_bytes_added": self.head_bytes_added, "linears": self.linears,
                   "incoherence": {"measure": "max|W| / rms(W) over the block linears and "
                                   "head", "before": self.incoherence_before,
                                   "after": self.incoherence_after}}
        if self.learned is not None:
            section["learned"] = self.learned
        return section


def incoherence(weight: torch.Tensor) -> float:
    """mu(W) = max|W_ij| / rms(W): 1 for a flat matrix, large when a few entries dominate."""
    w = weight.detach().double()
    rms = w.pow(2).mean().sqrt()
    return float(w.abs().max() / rms) if rms > 0 else 0.0


def incoherence_summary(weights: list[torch.Tensor]) -> dict[str, float]:
    values = [incoherence(w) for w in weights]
    return {"mean": sum(values) / len(values), "max": max(values)}


def norm_offset(norm: nn.Module) -> float:
    """0 when the norm computes x / rms(x) * w (Llama), 1 when x / rms(x) * (1 + w) (Gemma);
    CompressError when it is not an elementwise-scaled RMS norm (e.g. a LayerNorm, which
    subtracts the mean and does not commute with a rotation).

    Probed, not looked up by class: run with w = 0 and w = 1 on a non-centred input."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 \
            or set(dict(norm.named_parameters())) != {"weight"}:
        raise CompressError(f"{type(norm).__name__} is not an RMSNorm with one scale vector: "
                            "rotate needs RMSNorm blocks (Llama, Mistral, Qwen2, Gemma)")
    x = torch.linspace(-1.0, 3.0, weight.numel(), dtype=torch.float64)[None, :]
    unit = x / x.pow(2).mean().sqrt()
    saved = weight.detach().clone()
    outputs = []
    with torch.no_grad():
        for value in (0.0, 1.0):
            weight.fill_(value)
            outputs.append(norm(x.to(weight.dtype).to(weight.device)).double().cpu())
        weight.copy_(saved)
    slope = outputs[1] - outputs[0]  # d output / d w: must be x / rms(x)
    if not torch.allclose(slope, unit, rtol=_PROBE_TOLERANCE, atol=_PROBE_TOLERANCE):
        raise CompressError(f"{type(norm).__name__} is not an RMSNorm (its output is not "
                            "x / rms(x) times its weight): rotate needs RMSNorm blocks")
    for offset in (0.0, 1.0):
        if torch.allclose(outputs[0], offset * unit, rtol=_PROBE_TOLERANCE,
                          atol=_PROBE_TOLERANCE):
            return offset
    raise CompressError(f"{type(norm).__name__} scales by neither w nor 1 + w: rotate "
                        "cannot fold it")


def fold_norm(norm: nn.Module, readers: list[nn.Linear]) -> None:
    """W <- W diag(s) for every reader, then the norm's scale s = 1."""
    offset = norm_offset(norm)
    scale = offset + norm.weight.detach().double()
    for linear in readers:
        _set(linear.weight, linear.weight.detach().double() * scale.to(linear.weight.device))
    with torch.no_grad():
        norm.weight.fill_(1.0 - offset)


def rotate_input(linear: nn.Linear, q: torch.Tensor) -> None:
    """A reader of the rotated stream: W <- W Q."""
    _set(linear.weight, linear.weight.detach().double() @ q.to(linear.weight.device))


def rotate_output(linear: nn.Linear, q: torch.Tensor) -> None:
    """A writer into the rotated stream: W <- Q^T W, b <- Q^T b."""
    q = q.to(linear.weight.device)
    _set(linear.weight, q.T @ linear.weight.detach().double())
    if linear.bias is not None:
        _set(linear.bias, q.T @ linear.bias.detach().double())


def rotate_heads(block: ResidualBlock, r: torch.Tensor) -> None:
    """SpinQuant R2: v_proj W_h <- R^T W_h (b_h <- R^T b_h), o_proj W[:, head] <- W[:, head] R."""
    value, out, d = block.value, block.attention.writer, block.head_dim
    r = r.to(value.weight.device)
    w = value.weight.detach().double()
    _set(value.weight, (r.T @ w.reshape(-1, d, w.shape[1])).reshape(w.shape))
    if value.bias is not None:
        b = value.bias.detach().double()
        _set(value.bias, (b.reshape(-1, d) @ r).reshape(b.shape))  # (R^T b_h)^T = b_h^T R
    w = out.weight.detach().double()
    _set(out.weight, (w.reshape(w.shape[0], -1, d) @ r).reshape(w.shape))


def _set(param: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(value.to(param.dtype))


def untie_head(model: nn.Module, embeddings: nn.Module, head: nn.Linear) -> bool:
    """Give the head its own copy of a shared embedding table; True when it was shared."""
    if head.weight is not embeddings.weight:
        return False
    head.weight = nn.Parameter(embeddings.weight.detach().clone(),
                               requires_grad=embeddings.weight.requires_grad)
    config = getattr(model, "config", None)
    if config is not None:
        # A saved config that still says "tied" would make loaders re-tie the head to the
        # embeddings and silently drop the folded final norm.
        config.tie_word_embeddings = False
        text_config = getattr(config, "get_text_config", None)
        if callable(text_config) and text_config() is not config:
            text_config().tie_word_embeddings = False
    return True


@dataclasses.dataclass
class Rotation:
    """R1 (`q`, the hidden size) and, with head_rotation, one R2 per block (`heads`), all
    float64 and drawn in that order from one generator seeded with `config.seed`, so a
    model rotated whole or block by block (compress/rotate/streaming_stage.py) gets the
    same matrices."""

    q: torch.Tensor
    heads: list[torch.Tensor]

    @classmethod
    def draw(cls, config: RotateConfig, hidden: int, head_dims: list[int]) -> Rotation:
        generator = torch.Generator().manual_seed(config.seed)
        q = orthogonal(hidden, config.kind, generator)
        heads = [orthogonal(d, config.kind, generator) for d in head_dims] \
            if config.head_rotation else []
        return cls(q, heads)

    def head(self, index: int) -> torch.Tensor | None:
        return self.heads[index] if self.heads else None


def block_linears(block: ResidualBlock) -> list:
    """Every reader and writer of the residual stream in `block`, in a fixed order."""
    return [lin for site in (block.attention, block.mlp) for lin in (*site.readers, site.writer)]


def rotate_block(block: ResidualBlock, q: torch.Tensor, r: torch.Tensor | None) -> None:
    """Fold the block's two norms into their readers, carry the readers and writers into
    the rotated stream (R1 = q) and, with `r`, rotate its value heads (R2)."""
    for site in (block.attention, block.mlp):
        fold_norm(site.norm, site.readers)
    for site in (block.attention, block.mlp):
        for reader in site.readers:
            rotate_input(reader, q)
        rotate_output(site.writer, q)
    if r is not None:
        rotate_heads(block, r)


def rotate_ends(embeddings: nn.Embedding, final_norm: nn.Module, head: nn.Linear,
                q: torch.Tensor) -> None:
    """E <- E Q; the final norm folded into the head, which then reads the rotated stream
    (an untied head: see untie_head)."""
    fold_norm(final_norm, [head])
    _set(embeddings.weight, embeddings.weight.detach().double() @ q.to(embeddings.weight.device))
    rotate_input(head, q)


def check_ends(model: nn.Module, embeddings, head, final_norm) -> int:
    """The hidden size; CompressError when the model lacks what a rotation rewrites."""
    if not isinstance(embeddings, nn.Embedding) or not isinstance(head, nn.Linear) \
            or final_norm is None:
        raise CompressError("rotate needs token embeddings, a final norm and a linear LM head "
                            f"in {type(model).__name__}")
    return embeddings.weight.shape[1]


def rotate_model(model: nn.Module, config: RotateConfig,
                 calib: torch.Tensor | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Fold and rotate `model` in place (see the module docstring); returns the report's
    fields. CompressError, before any weight changes, when the model has no known residual
    layout or a size has no Hadamard construction. `calib` (token ids [N, L]) is read only
    with learn_steps > 0."""
    try:
        layout = decoder_layout(model)
        blocks = residual_blocks(layout)
    except ModelError as exc:
        raise CompressError(f"rotate: {exc}") from None
    embeddings, head, final_norm = layout.embeddings, layout.head, layout.norm
    hidden = check_ends(model, embeddings, head, final_norm)
    for norm in [final_norm] + [site.norm for b in blocks for site in (b.attention, b.mlp)]:
        norm_offset(norm)  # refuse a non-RMS norm before anything is changed
    rotation = Rotation.draw(config, hidden, [b.head_dim for b in blocks])
    head_dims = {b.head_dim for b in blocks}
    settings = None
    if config.learn_steps:
        if any(not isinstance(lin, nn.Linear) for b in blocks for lin in block_linears(b)):
            raise CompressError("a learned rotation (learn_steps) needs blocks of nn.Linear "
                                "layers; a mixture-of-experts model takes the seeded "
                                "rotation (learn_steps: 0)")
        settings = LearnSettings(config.learn_steps, float(config.learn_lr), config.learn_bits,
                                 config.learn_group_size, config.learn_held_out, config.seed)
        check_inputs(calib, settings, [lin.in_features for b in blocks
                                       for lin in block_linears(b)])

    linears = [lin for b in blocks for lin in block_linears(b)] + [head]
    before = incoherence_summary([lin.weight for lin in linears])
    untied = untie_head(model, embeddings, head)
    for index, block in enumerate(blocks):
        rotate_block(block, rotation.q, rotation.head(index))
    rotate_ends(embeddings, final_norm, head, rotation.q)
    learned = None
    if settings is not None:
        sites = residual_sites(model, blocks, embeddings, head, config.head_rotation)
        u, heads, learned = learn(model, sites, hidden,
                                  [b.head_dim for b in blocks] if config.head_rotation else [],
                                  calib, settings, progress)
        apply_learned(blocks, embeddings, head, u, heads)
    return {"learned": learned, "kind": config.kind, "seed": config.seed, "hidden_size": hidden,
            "head_dim": (head_dims.pop() if len(head_dims) == 1 else None)
            if config.head_rotation else None,
            "untied_head": untied,
            "head_bytes_added": head.weight.numel() * head.weight.element_size() if untied
            else 0,
            "linears": len(linears), "incoherence_before": before,
            "incoherence_after": incoherence_summary([lin.weight for lin in linears])}


def apply_learned(blocks: list[ResidualBlock], embeddings: nn.Embedding, head: nn.Linear,
                  u: torch.Tensor, heads: list[torch.Tensor]) -> None:
    """Carry the learned U (hidden size) and V_b (head size, one per block; none without
    head rotation) into the weights, in float64, like R1 and R2 (norms already folded)."""
    for index, block in enumerate(blocks):
        for site in (block.attention, block.mlp):
            for reader in site.readers:
                rotate_input(reader, u)
            rotate_output(site.writer, u)
        if heads:
            rotate_heads(block, heads[index])
    _set(embeddings.weight, embeddings.weight.detach().double() @ u.to(embeddings.weight.device))
    rotate_input(head, u)


@register_handler(RotateConfig)
def rotate_stage(model: nn.Module, config: RotateConfig, calib: torch.Tensor | None, *,
                 forward_dtype: torch.dtype = torch.float32, progress: Progress | None = None,
                 **_options: Any) -> RotateReport:
    """Data-free unless learn_steps > 0, which trains on the calibration tokens."""
    start = time.perf_counter()
    fields = rotate_model(model, config, calib, progress)
    return RotateReport(**fields, forward_dtype=dtype_name(forward_dtype),
                        seconds={"method": time.perf_counter() - start})

