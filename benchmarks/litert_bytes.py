"""The bytes a LiteRT decode step reads, for the decode benchmarks' bandwidth bound
(benchmarks/llm_decode.py, benchmarks/llm_decode_large.py).

A .tflite file's tensors are not parsed here: the whole file counts, less a quantized
embedding table that only the token lookup reads (a GATHER of its codes, one row per
token) when no head reads the same codes (a tied head's DEQUANTIZE of them; a head written
as its own int4 FCs holds its own copy), plus the whole key/value cache, which each LiteRT
step takes in and gives back (every max-context row, not only those up to the position).
"""

from __future__ import annotations

import re
from pathlib import Path

EMBEDDING_BITS = 4
EMBEDDING_GROUP = 32  # `--embedding-group-size`'s default


def gathered_table_bytes(vocab: int, hidden: int, bits: int = EMBEDDING_BITS,
                         group: int = EMBEDDING_GROUP) -> int:
    """The lookup's table: packed codes, then a float32 scale and a float32 zero point
    per group of each row (export.litert.gather)."""
    return vocab * hidden * bits // 8 + 2 * 4 * vocab * (hidden // group)


def gathered_only(carried: dict[str, int]) -> tuple[int, int] | None:
    """(bits, group) of a LiteRT file's quantized table when only its lookup reads it,
    from the export report's carried records; None when there is no such table or a head
    DEQUANTIZEs the same codes (the table quantized at export, read whole every step)."""
    gather = next((re.match(r"GATHER int(\d+) rows, block (\d+)", record)
                   for record in carried if record.startswith("GATHER ")), None)
    shares_head = any(record.startswith("DEQUANTIZE") and record.endswith("(quantized at export)")
                      for record in carried)
    return None if gather is None or shares_head else (int(gather[1]), int(gather[2]))


def litert_bytes_per_token(path: Path, carried: dict[str, int],
                           table_shape: tuple[int, int]) -> dict:
    """Bytes one decode step of the .tflite `path` reads (module docstring); `carried`:
    its export report's records, `table_shape`: (vocab, hidden) of the embedding table."""
    from export.litert.run_llm import signature_steps

    *_, cache_shape = signature_steps(str(path))
    layers, kv_heads, context, head_dim = cache_shape
    weights = path.stat().st_size
    gathered = gathered_only(carried)
    table = gathered_table_bytes(*table_shape, *gathered) if gathered else 0
    cache = 2 * layers * kv_heads * context * head_dim * 4
    return {"weights": weights - table, "gathered_table": table, "cache": cache,
            "total": weights - table + cache, "from_file_size": True}
