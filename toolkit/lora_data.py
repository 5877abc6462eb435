"""The token windows a LoRA recovery stage (compress/recovery/lora_train.py) trains and is
measured on: more of the calibration text than the calibration windows themselves.

    pool      the Wikipedia calibration pool (or, with --calib-data, the calibration
              windows laid end to end)
    held-out  the last eval_samples x seq_len tokens of the pool, cut into windows
    train     `samples` windows at random offsets (seeded) of the rest

so training never sees a held-out token, and the calibration windows (drawn from the same
pool) are part of what training may draw."""

from __future__ import annotations

import torch

from compress.recovery.lora import LoraConfig
from toolkit.errors import UserError
from toolkit.workflows import CalibrationData


def lora_windows(data: CalibrationData, config: LoraConfig,
                 from_file: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(train [samples, seq_len], held_out [eval_samples, seq_len]) token ids."""
    pool = getattr(data.held_out, "calib_pool", None)
    if from_file or pool is None:
        pool = data.inputs.reshape(-1)
    pool = pool.to(torch.int64)
    length = config.seq_len
    held_tokens = config.eval_samples * length
    if pool.numel() < held_tokens + length + 1:
        raise UserError(f"lora: the calibration text has {pool.numel()} tokens, fewer than "
                        f"the {held_tokens + length + 1} that {config.eval_samples} held-out "
                        f"windows and one training window of {length} need: lower lora "
                        "seq_len / eval_samples, or give more --calib-samples")
    held = pool[-held_tokens:].reshape(config.eval_samples, length)
    rest = pool[:-held_tokens]
    count = config.samples or data.inputs.shape[0]
    generator = torch.Generator().manual_seed(config.seed)
    offsets = torch.randint(0, rest.numel() - length, (count,), generator=generator)
    train = rest[offsets[:, None] + torch.arange(length)[None, :]]
    return train, held
