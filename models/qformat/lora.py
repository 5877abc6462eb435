"""Low-rank accuracy-recovery adapters on compressed linears (LoRA, arXiv 2106.09685), as
Apple ships them on 2/4-bit palettized weights (arXiv 2407.21075, section 5):

    y = W_q x + s * B (A x),    A [r, in], B [out, r], s = alpha / r

W_q stays exactly what the packed form means (or, on a linear that was only pruned, its
masked float weight, zeros included); only A and B are extra. An adapter is
attached to its `nn.Linear` as a forward hook (`attach_adapter`), so the module's state
dict, its weight names and everything that reads them (writers, exporters' weight
readers, `decoder_layout`) are unchanged, and `copy.deepcopy` of the model copies the
adapters with it (the hook object is an `nn.Module`, copied, not shared).

On disk: `LORA_FILE` beside the packed weights, fp16 tensors `NAME.lora_A` [r, in] and
`NAME.lora_B` [out, r], metadata `edge_toolkit.lora` = JSON {"format", "rank", "scale"}.
`read_adapters` checks every name, shape and dtype against the model before attaching,
so a corrupt or misshapen file is refused in one line instead of half-attached.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from models.errors import ModelError

LORA_FILE = "lora_adapters.safetensors"
LORA_METADATA_KEY = "edge_toolkit.lora"
LORA_FORMAT = "edge-lora/1"
SUFFIX_A, SUFFIX_B = ".lora_A", ".lora_B"
_FIX = "re-create the artifact with `toolkit compress ... --recover lora`, or delete the file"


class LoraAdapter(nn.Module):
    """A = `lora_A` [r, in], B = `lora_B` [out, r], scale s; called as a forward hook it
    adds s * B (A x) to the linear's output. The delta runs in the input's dtype and on
    its device (moving the model does not move its hooks)."""

    def __init__(self, lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> None:
        super().__init__()
        if lora_A.ndim != 2 or lora_B.ndim != 2 or lora_A.shape[0] != lora_B.shape[1]:
            raise ValueError(f"lora_A {tuple(lora_A.shape)} and lora_B {tuple(lora_B.shape)} "
                             "are not [r, in] and [out, r]")
        self.lora_A = nn.Parameter(lora_A.detach().float().clone())
        self.lora_B = nn.Parameter(lora_B.detach().float().clone())
        self.scale = float(scale)

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        a = self.lora_A.to(device=x.device, dtype=x.dtype)
        b = self.lora_B.to(device=x.device, dtype=x.dtype)
        return (x @ a.t()) @ b.t() * self.scale

    def forward(self, _linear: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + self.delta(args[0])


def attach_adapter(linear: nn.Linear, adapter: LoraAdapter) -> None:
    """Hook `adapter` onto `linear` (one adapter per linear)."""
    if any(isinstance(h, LoraAdapter) for h in linear._forward_hooks.values()):
        raise ValueError("this linear already has a LoRA adapter")
    if tuple(adapter.lora_A.shape[1:]) != (linear.in_features,) or \
            adapter.lora_B.shape[0] != linear.out_features:
        raise ValueError(f"adapter [{adapter.lora_B.shape[0]} x {adapter.lora_A.shape[1]}] "
                         f"does not fit a linear [{linear.out_features} x "
                         f"{linear.in_features}]")
    linear.register_forward_hook(adapter)


def adapters_of(module: nn.Module) -> dict[str, LoraAdapter]:
    """Linear name -> its attached adapter, in module order."""
    return {name: hook for name, sub in module.named_modules()
            for hook in sub._forward_hooks.values() if isinstance(hook, LoraAdapter)}


def detach_adapters(module: nn.Module) -> None:
    """Remove every LoRA hook (the linears go back to W_q x)."""
    for sub in module.modules():
        for key in [k for k, h in sub._forward_hooks.items() if isinstance(h, LoraAdapter)]:
            del sub._forward_hooks[key]


def round_to_storage(adapters: dict[str, LoraAdapter]) -> None:
    """Round A and B to fp16 in place: the model in memory then means what the file holds."""
    with torch.no_grad():
        for adapter in adapters.values():
            for param in (adapter.lora_A, adapter.lora_B):
                param.copy_(param.half().float())


def adapter_summary(adapters: dict[str, LoraAdapter]) -> dict:
    """{"rank", "scale", "parameters", "bytes"} of a set of adapters sharing rank and scale."""
    ranks = sorted({a.rank for a in adapters.values()})
    scales = sorted({a.scale for a in adapters.values()})
    params = sum(a.lora_A.numel() + a.lora_B.numel() for a in adapters.values())
    return {"rank": ranks[0] if len(ranks) == 1 else ranks,
            "scale": scales[0] if len(scales) == 1 else scales,
            "parameters": params, "bytes": 2 * params, "linears": len(adapters)}


def adapter_bits_per_weight(adapters: dict[str, LoraAdapter], weights: int) -> float:
    """fp16 adapter bits spread over `weights` (the compressed linears' weight count),
    reported apart from the base bits: 16 (r (in + out)) / (in out) summed."""
    params = sum(a.lora_A.numel() + a.lora_B.numel() for a in adapters.values())
    return 16.0 * params / weights if weights else 0.0


def save_adapters(path: Path, adapters: dict[str, LoraAdapter]) -> None:
    """The fp16 adapter file (see the module docstring)."""
    if not adapters:
        raise ValueError("no adapters to save")
    summary = adapter_summary(adapters)
    if isinstance(summary["rank"], list) or isinstance(summary["scale"], list):
        raise ValueError("adapters of one model share one rank and one scale")
    tensors = {}
    for name, adapter in adapters.items():
        tensors[name + SUFFIX_A] = adapter.lora_A.detach().cpu().half().contiguous()
        tensors[name + SUFFIX_B] = adapter.lora_B.detach().cpu().half().contiguous()
    meta = {"format": LORA_FORMAT, "rank": summary["rank"], "scale": summary["scale"]}
    # the toolkit's own writer: atomic, and its header is the same bytes in every process
    # (safetensors' own ordering of the metadata is not), so a resumed streaming run
    # writes the file an uninterrupted one does
    from models.lazy.safetensors_write import write_safetensors

    write_safetensors(Path(path), tensors,
                      metadata={"format": "pt", LORA_METADATA_KEY: json.dumps(meta)})


def read_adapters(path: Path, module: nn.Module) -> dict[str, LoraAdapter]:
    """The adapters in file `path`, checked against `module`'s linears (not attached)."""
    from models.safetensors_check import check_safetensors_file

    entries = check_safetensors_file(path)
    with safe_open(str(path), framework="pt") as handle:
        text = (handle.metadata() or {}).get(LORA_METADATA_KEY)
        meta = _read_meta(path, text)
        linears = {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}
        names = sorted({k[:-len(SUFFIX_A)] for k in entries if k.endswith(SUFFIX_A)})
        expected = {n + s for n in names for s in (SUFFIX_A, SUFFIX_B)}
        stray = sorted(set(entries) ^ expected)
        if not names or stray:
            what = stray[0] if stray else "no tensors"
            raise ModelError(f"{path}: not a LoRA adapter file ({what!r} breaks the "
                             f"NAME.lora_A / NAME.lora_B pairs): {_FIX}")
        adapters = {}
        for name in names:
            linear = linears.get(name)
            if linear is None:
                raise ModelError(f"{path}: adapter {name!r} names no linear of the model: {_FIX}")
            a, b = handle.get_tensor(name + SUFFIX_A), handle.get_tensor(name + SUFFIX_B)
            shapes = ((meta["rank"], linear.in_features), (linear.out_features, meta["rank"]))
            if (tuple(a.shape), tuple(b.shape)) != shapes or a.dtype != torch.float16 \
                    or b.dtype != torch.float16:
                raise ModelError(f"{path}: adapter {name!r} is {a.dtype} {tuple(a.shape)} / "
                                 f"{b.dtype} {tuple(b.shape)}, expected float16 {shapes[0]} "
                                 f"/ {shapes[1]}: {_FIX}")
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                raise ModelError(f"{path}: adapter {name!r} holds NaN or inf: {_FIX}")
            adapters[name] = LoraAdapter(a, b, meta["scale"])
    return adapters


def _read_meta(path: Path, text: str | None) -> dict:
    try:
        meta = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        meta = None
    ok = (isinstance(meta, dict) and meta.get("format") == LORA_FORMAT
          and isinstance(meta.get("rank"), int) and not isinstance(meta.get("rank"), bool)
          and meta["rank"] >= 1 and isinstance(meta.get("scale"), int | float)
          and not isinstance(meta.get("scale"), bool))
    if not ok:
        raise ModelError(f"{path}: no valid {LORA_METADATA_KEY} metadata ({LORA_FORMAT} with "
                         f"an integer rank and a numeric scale): {_FIX}")
    return meta


def attach_saved_adapters(directory: Path, module: nn.Module) -> dict[str, LoraAdapter]:
    """Attach the adapters of `directory`'s `LORA_FILE` to `module`, if the file exists."""
    path = directory / LORA_FILE
    if not path.is_file():
        return {}
    adapters = read_adapters(path, module)
    linears = dict(module.named_modules())
    for name, adapter in adapters.items():
        attach_adapter(linears[name], adapter)
    return adapters
