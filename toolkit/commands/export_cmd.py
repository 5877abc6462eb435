"""`toolkit export TARGET`: write a model or artifact as an on-device file with its
compression carried in, verified on its runtime against PyTorch. The targets are the
exporters registered in `export/` (export.registry); this command parses the arguments,
loads the model once, calls export.export_model (or, with --bundle, export.bundle.write_bundle,
which adds the tokenizer, generation config and a manifest around the verified file, or
for a vision model the pre/postprocessing and a sample: export.vision_bundle), prints its
report and writes --json."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from export import ExportOptions, check_output, export_model, exporter_names
from export.bundle import check_bundle_dir, write_bundle
from export.llm.streamed import open_streamed
from export.onnx.weights import ACCURACY_LEVELS
from export.options import DEFAULT_PROMPT, EMBEDDING_BITS, PALETTE_MAP_BITS
from export.registry import get_exporter
from models import load_model
from toolkit.commands.common import positive_int, write_json
from toolkit.errors import UserError
from toolkit.output_paths import check_output_path
from toolkit.report import format_table
from toolkit.streaming.engine_choice import add_engine_options, choose_export_engine


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a model or artifact to an on-device format and verify it",
        description="LLMs: re-author the decoder with a fixed maximum context and an "
                    "explicit key/value cache and write it with the artifact's packed "
                    "weights carried into the file (ONNX MatMulNBits and palette lookups, "
                    "LiteRT weight-only DEQUANTIZE, Core ML constexpr ops), then compare "
                    "logits and greedy tokens with PyTorch. Vision models: fold the pixel "
                    "normalisation in, optionally write static int8 LiteRT or QDQ ONNX "
                    "(--int8) or float16 / palettized Core ML (--fp16, --palettize-bits), "
                    "and compare outputs on one of the family's images. The verdict names "
                    "any compression stage of the artifact the file does not carry.")
    p.add_argument("target", choices=exporter_names(), help="output format")
    p.add_argument("--model", required=True,
                   help="registered name, artifact / Hugging Face directory, or .gguf file")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, metavar="PATH",
                       help="file to write, e.g. model.onnx")
    where.add_argument("--bundle", type=Path, metavar="DIR",
                       help="write an app-ready folder instead: the model file(s) "
                            "(coreml: the .mlpackage(s)) and bundle.json (inputs, "
                            "outputs, quantization, sha256 of every file); LLMs add "
                            "tokenizer.json, generation config, chat template, cache "
                            "layout and max context; vision "
                            "models add pre/postprocessing, class labels, the V-MoE's "
                            "expert choice as an output and a sample input with its "
                            "outputs; read it back with `python -m export.bundle_read DIR`")
    _add_llm_options(p)
    _add_vision_options(p)
    add_engine_options(p, streaming="onnx and coreml: read one tensor at a time (coreml: "
                                    "converted chunk by chunk, see --chunks)")
    p.add_argument("--rtol", type=float, default=None,
                   help="largest allowed |output error| / max |PyTorch output| "
                        "(default: 1e-3; with --int8 0.05, on the mean |output error|)")
    p.add_argument("--require-carried", action="store_true",
                   help="fail (exit 2, nothing written) when the file would carry none of "
                        "a compression stage of the artifact, e.g. palettized weights "
                        "LiteRT must write as float32, or pruned zeros stored dense")
    p.add_argument("--no-verify", action="store_true", help="write the file, do not run it")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (or --bundle, once the new one is complete)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the final report")
    p.set_defaults(run=run)


def _add_llm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-context", type=positive_int, default=512, metavar="C",
                   help="tokens the key/value cache holds, prompt and output together "
                        "(default: %(default)s)")
    p.add_argument("--prefill-tokens", type=positive_int, default=64, metavar="P",
                   help="tflite: tokens of the fixed-length prefill signature; longer "
                        "prompts run in chunks (default: %(default)s, at most --max-context)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT,
                   help="verification prompt (default: %(default)r)")
    p.add_argument("--new-tokens", type=positive_int, default=16, metavar="N",
                   help="greedy tokens generated by both runtimes to verify "
                        "(default: %(default)s)")
    p.add_argument("--embedding-bits", type=int, choices=EMBEDDING_BITS, metavar="B",
                   help="onnx, coreml, tflite: quantize the embedding table and LM head at export "
                        "(round-to-nearest, B = 4 or 8 bits per row group; decode reads "
                        "the whole head every token); default: keep them float")
    p.add_argument("--accuracy-level", type=int, choices=ACCURACY_LEVELS, metavar="L",
                   help="onnx: MatMulNBits compute precision: 4 quantizes activations to "
                        "int8 (the fast CPU kernels), 0 keeps them float. Default: auto = "
                        "4 when the verified greedy tokens stay PyTorch's (checked at "
                        "--rtol 0.1 unless given), else 0; 0 with --no-verify. See "
                        "BENCHMARKS.md for the measured trade")
    p.add_argument("--onnx-attention", choices=("auto", "fused", "standard"), default="auto",
                   help="onnx LLMs: fused = onnxruntime's GroupQueryAttention with a "
                        "per-layer cache updated in place (fast; head width a multiple of "
                        "16); standard = standard ONNX ops, one stacked cache (any ONNX "
                        "runtime); auto = fused where it fits (default)")
    p.add_argument("--kv-cache", choices=("float32", "float16", "int8"), default="float32",
                   help="onnx LLMs with the fused attention: the key/value cache dtype "
                        "(float16 halves its memory and traffic; int8 quarters it, with one "
                        "static scale per cache channel measured on Wikipedia calibration "
                        "text; in-memory engine, not in bundles)")
    p.add_argument("--chunks", type=positive_int, metavar="N",
                   help="coreml and tflite LLMs: split the decoder into N files "
                        "OUT_chunk1..N run in sequence (first: table + layers, last: layers "
                        "+ norm + head; each with its layers' cache), converted one at a "
                        "time; default: one file, or for a model above --memory-budget as "
                        "many as keep each chunk under 1.5 GB of float32 weights")
    p.add_argument("--palette-map-bits", type=int, choices=PALETTE_MAP_BITS, metavar="B",
                   help="tflite LLMs: LiteRT has no lookup-table op, so palettized linears "
                        "are re-quantized to B-bit affine codes in groups of 32 and the "
                        "loss is reported: 4 keeps a 4-bit palette's size, 8 is near "
                        "lossless (default: 4 for palettes of up to 4 bits, else 8)")
    p.add_argument("--outlier-channels", type=_non_negative_int, metavar="K",
                   help="chunked tflite LLMs (--chunks, --engine streaming), whose int4 FCs "
                        "quantize their inputs to int8 with one scale per token: up to K "
                        "input channels per FC with massive activations (found on Wikipedia "
                        "calibration text) go through a small float FC instead, so they do "
                        "not set that scale (default: 8; 0: none)")
    p.add_argument("--int8-slice", type=_non_negative_int, metavar="N",
                   help="chunked tflite LLMs: write each int4 FC as one FC per slice of about "
                        "N inputs (whole quantization groups), so each slice's int8 input "
                        "gets its own scale per token (default: 128; 0: one FC per linear, "
                        "one scale per whole row)")
    p.add_argument("--embedding-group-size", type=positive_int, default=32, metavar="G",
                   help="inputs per scale for --embedding-bits, a power of two >= 16 "
                        "(default: %(default)s)")


def _add_vision_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--int8", action="store_true",
                   help="vision models, tflite or onnx: static int8 (weights per channel, "
                        "activations per tensor) calibrated on the model family's own "
                        "images; tflite fully int8, onnx as QuantizeLinear/DequantizeLinear")
    p.add_argument("--fp16", action="store_true",
                   help="vision models, coreml: float16 weights and compute (default "
                        "float32, like the other formats' float files)")
    p.add_argument("--palettize-bits", type=int, choices=(2, 3, 4, 6, 8), metavar="B",
                   help="vision models, coreml: k-means palettize each weight tensor to "
                        "2^B values (6 is usually near lossless on a CNN, 4 less so)")
    p.add_argument("--calibration-images", type=positive_int, default=64, metavar="N",
                   help="images for --int8 calibration (default: %(default)s)")


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    return ExportOptions(
        max_context=args.max_context, prefill_tokens=args.prefill_tokens, prompt=args.prompt,
        new_tokens=args.new_tokens, rtol=args.rtol, int8=args.int8, fp16=args.fp16,
        palettize_bits=args.palettize_bits, calibration_images=args.calibration_images,
        verify=not args.no_verify, overwrite=args.overwrite,
        require_carried=args.require_carried, quiet=args.quiet,
        embedding_bits=args.embedding_bits, embedding_group_size=args.embedding_group_size,
        embedding_quantizer=_table_quantizer(args), accuracy_level=args.accuracy_level,
        onnx_attention=args.onnx_attention, kv_cache_dtype=args.kv_cache,
        chunks=_chunks(args), palette_map_bits=_palette_map_bits(args),
        outlier_channels=_int8_input_option(args, "outlier_channels"),
        int8_slice=_int8_input_option(args, "int8_slice"), calibration=_calibration_windows)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _int8_input_option(args: argparse.Namespace, name: str) -> int | None:
    """--outlier-channels / --int8-slice, refused for a target without int8-input FCs."""
    value = getattr(args, name, None)
    if value is not None and args.target != "tflite":
        flag = "--" + name.replace("_", "-")
        raise UserError(f"{flag} is for the chunked tflite export, whose int4 FCs take int8 "
                        f"inputs; the {args.target} exporter has none: drop {flag}")
    return value


# Windows of the Wikipedia calibration pool (toolkit.data.streams) that the chunked tflite
# export runs in float to find its FCs' outlier input channels: 4 x 128 tokens, seed 0,
# like a small `toolkit compress` calibration; called with the artifact's tokenizer only
# when a chunked tflite file is written.
CALIBRATION_WINDOWS, CALIBRATION_TOKENS = 4, 128


def _calibration_windows(tokenizer) -> list[list[int]]:
    import torch

    from toolkit.data.calibration import sample_calibration
    from toolkit.data.streams import cached_streams

    with torch.random.fork_rng():  # sample_calibration seeds the global generator
        windows = sample_calibration(cached_streams(tokenizer).calib_pool,
                                     CALIBRATION_WINDOWS, CALIBRATION_TOKENS, 0)
    return windows.tolist()


def _palette_map_bits(args: argparse.Namespace) -> int | None:
    """--palette-map-bits, refused for a target that needs no palette mapping."""
    bits = getattr(args, "palette_map_bits", None)
    if bits is not None and not getattr(get_exporter(args.target), "maps_palettes", False):
        raise UserError(f"--palette-map-bits is for tflite, which maps palettes to affine "
                        f"codes; the {args.target} exporter carries palettes as they are: "
                        "drop --palette-map-bits")
    return bits


def _chunks(args: argparse.Namespace) -> int | None:
    """--chunks, refused for a target that writes one file."""
    if args.chunks is not None and not getattr(get_exporter(args.target), "writes_chunks",
                                               False):
        raise UserError(f"--chunks splits Core ML and LiteRT LLMs; the {args.target} exporter "
                        "writes one file: drop --chunks")
    return args.chunks


def _table_quantizer(args: argparse.Namespace):
    """compress' round-to-nearest for --embedding-bits (export may not import compress)."""
    if args.embedding_bits is None:
        return None
    from compress.quant.rtn import rtn_quantize

    return functools.partial(rtn_quantize, bits=args.embedding_bits,
                             group_size=args.embedding_group_size, symmetric=False)


def _check_bundle(args: argparse.Namespace, options: ExportOptions) -> Path:
    """--bundle checked like every output path (name, writable folder), then as a bundle
    (target, existing folder), and kept apart from --json."""
    check_output_path("--bundle", args.bundle.expanduser(), directory_ok=True, overwrite=None)
    bundle = check_bundle_dir(args.target, args.bundle, options)
    if args.json is not None:
        report = Path(os.path.abspath(args.json.expanduser()))
        if report == bundle or bundle in report.parents:
            raise UserError(f"--json {args.json} lies in --bundle {args.bundle}, whose files "
                            "its manifest lists: write the report elsewhere")
    return bundle


def artifact_table_bits(model: str) -> int | None:
    """The table width a mixed-bit palettization chose for this artifact (its manifest's
    allocation, compress/quant/table_bits.py), None when it chose none."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return None
    from models.manifest import read_manifest

    try:
        manifest = read_manifest(path) or {}
    except Exception:  # an unreadable manifest is refused in one line by the loader
        return None
    for stage in manifest.get("stages", []):
        bits = ((stage.get("report") or {}).get("allocation") or {}).get("table_bits")
        if bits is not None:
            return int(bits)
    return None


def run(args: argparse.Namespace) -> int:
    if args.embedding_bits is None and get_exporter(args.target).quantizes_tables:
        # the allocation's own choice: the values are on that grid already
        args.embedding_bits = artifact_table_bits(args.model)
        if args.embedding_bits is not None and not args.quiet:
            print(f"--embedding-bits {args.embedding_bits}: the width the artifact's mixed-bit "
                  "allocation chose for its table and head")
    options = options_from_args(args)
    if args.bundle is not None:  # both checked before loading anything
        out = _check_bundle(args, options)
    else:
        out = check_output(args.target, args.out, options)
    engine = choose_export_engine(args.model, args, args.target,
                                  get_exporter(args.target).streams)
    loaded = open_streamed(args.model) if engine == "streaming" else load_model(args.model)
    if not args.quiet:
        shape = (f"input {list(loaded.vision.shape)}" if loaded.vision
                 else f"max context {args.max_context}")
        how = ", read one weight at a time" if engine == "streaming" else ""
        print(f"exporting {loaded.source} to {args.target} ({shape}{how})")
    if args.bundle is not None:
        report = write_bundle(args.target, loaded, out, options)
    else:
        report = export_model(args.target, loaded, out, options)
    print(format_table(["", f"{args.target} export"], report.rows()))
    write_json(args.json, report.to_dict())
    if not report.passed:
        print(f"toolkit export: error: the {args.target} file failed verification (see "
              "above), so nothing was written: check the dropped layers or raise --rtol",
              file=sys.stderr)
        return 2
    return 0
