"""Block-wise recovery (block reconstruction, BRECQ arXiv 2102.05426): after compression,
each decoder block learns to reproduce the dense block's outputs, training only what the
stored form leaves free. Importing this package registers the `recover` method.

`recover_block` is the per-block function the in-memory stage and the streaming engine
share; `recover_stage` is the in-memory recipe stage (`{method: recover, ...}`)."""

from compress.recovery.block_recovery import block_loss, recover_block
from compress.recovery.config import RecoverConfig
from compress.recovery.stage import RecoverReport, recover_stage

__all__ = ["RecoverConfig", "RecoverReport", "block_loss", "recover_block", "recover_stage"]
