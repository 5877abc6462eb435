"""Keep the terminal to the toolkit's own output (the CLI and its worker processes)."""

from __future__ import annotations

import logging

# transformers imports torchao when it is installed (NNCF needs it); torchao then reports
# CUDA-only kernels it cannot load and torch deprecation notes; torch.onnx lists the
# torchvision ops it skips when torchvision is absent. None of it concerns a user.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "torch.onnx._internal.exporter._registration")


def quiet_libraries() -> None:
    """transformers draws its own bars (loading, writing shards) and warnings; the toolkit
    reports its own progress."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
