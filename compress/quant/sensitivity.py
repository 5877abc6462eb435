"""Per-layer sensitivities for mixed bit-width allocation (`compress.quant.mixed_bits`).

For a linear l with weight W, its quantization W_hat_b at b bits, dW = W - W_hat_b and
H = sum_t x_t x_t^T over its n calibration inputs:

    absolute  s_l(b) = tr(dW H dW^T) / n                  the output error it adds (GPTQ's
                                                          layer objective, arXiv 2210.17323)
    relative  s_l(b) = tr(dW H dW^T) / tr(W H W^T)        that error over the layer's own
                                                          output energy (noise-to-signal)
    measured  s_l(b) = 1/T sum_t KL(p_t || q_t^(l,b))     the model's next-token
                                                          distributions, dense p against q
                                                          with only layer l at b bits

`measured` is the end-to-end criterion HAWQ approximates with the Hessian of the loss
(arXiv 1905.03696): it sees what a layer's error does after the rest of the network,
which the layer-local errors cannot (a small error in a layer whose outputs the network
amplifies is large at the logits). Summing per-layer KLs assumes their effects add, as
every per-layer allocation does. The largest choice is not measured (s = 0): only
differences between a layer's choices steer the allocator, and at the largest width the
layer is closest to dense.

Cost of `measured`, on top of the pre-pass: one dense forward of W windows x T tokens to
keep every block's inputs (blocks x W x T x hidden floats) and the dense log-probabilities
(W x T x vocab floats), then for every quantized linear and every choice but the largest
one forward from that linear's block to the logits: about (choices - 1) x linears / 2
full forwards of W x T tokens. Measured (benchmarks/mixed_bits_sensitivity.py): SmolLM2-135M,
210 linears, choices [2, 4], 4 x 256 tokens: 210 partial forwards in 658 s on one thread of
a shared 2-core CPU (about 1.3 s each when the core is free), against 543 s for the
palettes themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.block_io import BlockInputs, _autocast, capture_block0_inputs, run_block
from compress.errors import CompressError
from models.adapter import DecoderLayout

SENSITIVITIES = ("absolute", "relative", "measured")
# The dense logits rebuilt from the blocks must match the model's own within this
# relative error, or the measured KLs would carry the mismatch of every choice. Under a
# 16-bit forward the two paths round differently (bf16 has 8 significant bits: 1.8e-3 was
# measured on SmolLM2-135M with the same blocks), so the bound there is looser; a layout
# that misses a part of the model (a scaled embedding, a soft-capped head) is off by far
# more than either.
_REBUILD_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-3}
_REBUILD_TOLERANCE_16_BIT = 3e-2


def output_energy(weight: torch.Tensor, hessian: torch.Tensor, n_tokens: int) -> float:
    """tr(W H W^T) / n_tokens: the layer's squared output per calibration token."""
    weight = weight.float()
    return float(((weight @ hessian.float()) * weight).sum()) / max(n_tokens, 1)


def relative_error(absolute: float, energy: float) -> float:
    """tr(dW H dW^T) / tr(W H W^T) from the two per-token quantities (n cancels)."""
    if energy <= 0.0:
        return 0.0 if absolute <= 0.0 else float("inf")
    return absolute / energy


def check_sensitivity(name: object) -> None:
    if name not in SENSITIVITIES:
        raise CompressError(f"sensitivity {name!r} is unknown: use one of "
                            f"{', '.join(SENSITIVITIES)}")


def next_token_kl(reference_logprobs: torch.Tensor, logits: torch.Tensor) -> float:
    """1/T sum_t sum_v p_t(v) (log p_t(v) - log q_t(v)), p from `reference_logprobs`
    [..., V] (log-softmax), q = softmax(`logits`) [..., V]; T = all leading positions."""
    logq = torch.log_softmax(logits.float(), dim=-1)
    logp = reference_logprobs.float()
    tokens = logp.numel() // logp.shape[-1]
    return float((logp.exp() * (logp - logq)).sum()) / max(tokens, 1)


class OutputKL:
    """Dense next-token distributions of `model` on `tokens` [W, T], and the KL divergence
    from them of the model with one linear's weight replaced (`kl_with`).

    Keeps the dense inputs of every block, so replacing a linear of block i re-runs only
    blocks i.. and the head."""

    def __init__(self, model: nn.Module, layout: DecoderLayout, tokens: torch.Tensor,
                 device: torch.device, forward_dtype: torch.dtype, batch_size: int) -> None:
        if layout.head is None:
            raise CompressError("measured sensitivity needs the model's LM head to compare "
                                "next-token distributions: use sensitivity relative")
        self.layout, self.forward_dtype = layout, forward_dtype
        self.tokens = tokens
        self.model, self.device, self.batch_size = model, device, batch_size
        with torch.no_grad():
            inputs = capture_block0_inputs(model, layout.blocks[0], tokens, batch_size, device)
            self.block_inputs: list[BlockInputs] = []
            for block in layout.blocks:
                self.block_inputs.append(inputs)
                inputs = run_block(block, inputs, forward_dtype, keep_outputs=True)
            self.reference = [torch.log_softmax(self._logits(h), dim=-1)
                              for h in inputs.hidden]
            with _autocast(forward_dtype, device):  # as the blocks ran
                self._check_rebuild(model, batch_size, device)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.layout.norm is not None:
            hidden = self.layout.norm(hidden)
        return self.layout.head(hidden).float()

    def _check_rebuild(self, model: nn.Module, batch_size: int, device: torch.device) -> None:
        for batch, reference in zip(self.tokens.split(batch_size), self.reference, strict=True):
            logits = model(input_ids=batch.to(device), use_cache=False).logits.float()
            rebuilt = torch.log_softmax(logits, dim=-1)
            error = float((rebuilt - reference).norm() / reference.norm().clamp_min(1e-12))
            bound = _REBUILD_TOLERANCE.get(self.forward_dtype, _REBUILD_TOLERANCE_16_BIT)
            if not error <= bound:
                raise CompressError(
                    f"measured sensitivity: the logits rebuilt from the model's blocks, final "
                    f"norm and head differ from its own by {error:.1e} (relative), so this "
                    "model does something outside its blocks that the layout does not name: "
                    "use sensitivity relative")

    def kl_with(self, block_index: int, linear: nn.Linear, weight: torch.Tensor) -> float:
        """Mean next-token KL(dense || model with `linear.weight` = `weight`), where
        `linear` lives in block `block_index`. The dense weight is restored afterwards."""
        dense = linear.weight.data.clone()
        linear.weight.data.copy_(weight.to(dense.dtype))
        try:
            with torch.no_grad():
                inputs = self.block_inputs[block_index]
                for block in self.layout.blocks[block_index:]:
                    inputs = run_block(block, inputs, self.forward_dtype, keep_outputs=True)
                total = sum(next_token_kl(ref, self._logits(h)) * h.shape[0] * h.shape[1]
                            for ref, h in zip(self.reference, inputs.hidden, strict=True))
        finally:
            linear.weight.data.copy_(dense)
        return total / sum(h.shape[0] * h.shape[1] for h in inputs.hidden)


    def kl_with_tensors(self, replacements: dict[int, tuple[torch.Tensor, torch.Tensor]]
                        ) -> float:
        """As kl_with, for parameters outside the blocks (the embedding table, the head):
        `replacements` maps id(param) -> (param, new value); block 0's inputs are
        captured again from the changed table and every block re-runs."""
        saved = {key: (param, param.data.clone()) for key, (param, _) in replacements.items()}
        try:
            for param, value in replacements.values():
                param.data.copy_(value.to(param.dtype))
            with torch.no_grad():
                inputs = capture_block0_inputs(self.model, self.layout.blocks[0], self.tokens,
                                               self.batch_size, self.device)
                for block in self.layout.blocks:
                    inputs = run_block(block, inputs, self.forward_dtype, keep_outputs=True)
                total = sum(next_token_kl(ref, self._logits(h)) * h.shape[0] * h.shape[1]
                            for ref, h in zip(self.reference, inputs.hidden, strict=True))
        finally:
            for param, dense in saved.values():
                param.data.copy_(dense)
        return total / sum(h.shape[0] * h.shape[1] for h in inputs.hidden)


def kl_windows(calib: torch.Tensor, windows: int, tokens: int) -> torch.Tensor:
    """The first `windows` calibration rows, cut to their first `tokens` tokens."""
    return calib[:windows, :tokens]
