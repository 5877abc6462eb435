"""Block-wise recovery (block reconstruction, BRECQ arXiv 2102.05426): after compression,
each decoder block learns to reproduce the dense block's outputs, training only what the
stored form leaves free. Importing this package registers the `recover` method, and
`lora`: rank-r adapters on the frozen compressed (quantized or pruned) linears, trained
by distillation from the dense model (LoRA arXiv 2106.09685, as in arXiv 2407.21075;
lora.py, lora_train.py).

`recover_block` is the per-block function the in-memory stage and the streaming engine
share; `recover_stage` is the in-memory recipe stage (`{method: recover, ...}`)."""

from compress.recovery.block_recovery import block_loss, recover_block
from compress.recovery.config import RecoverConfig
from compress.recovery.lora import LoraConfig
from compress.recovery.lora_train import LoraReport, lora_stage
from compress.recovery.stage import RecoverReport, recover_stage

__all__ = ["LoraConfig", "LoraReport", "RecoverConfig", "RecoverReport", "block_loss",
           "lora_stage", "recover_block", "recover_stage"]
