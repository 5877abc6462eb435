"""Edge Toolkit's on-disk formats for quantized linear weights (packed integers with scales,
or palette indices with lookup tables), readable without the `compress` package so that
loaders and exporters can use them."""

from models.qformat.affine import AFFINE, AffineQuantized
from models.qformat.layout import (
    QUANT_METADATA_KEY,
    QuantizedWeight,
    bits_per_weight,
    decode_layout,
    encode_layout,
    packed_state_dict,
    quantized_from_state,
)
from models.qformat.packing import pack_bits, packed_nbytes, unpack_bits
from models.qformat.palette import PALETTE, PaletteQuantized

__all__ = [
    "AFFINE", "PALETTE", "QUANT_METADATA_KEY", "AffineQuantized", "PaletteQuantized",
    "QuantizedWeight", "bits_per_weight", "decode_layout", "encode_layout", "pack_bits",
    "packed_nbytes", "packed_state_dict", "quantized_from_state", "unpack_bits",
]
