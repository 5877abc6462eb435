"""`toolkit compress` / `toolkit run` on a model read block by block (compress/streaming.py):
peak memory is one decoder block plus the calibration activations, whatever the model's
size, and a killed run resumes from its last finished block (toolkit/streaming/resume.py).

    open the checkpoint lazily (headers and config only)
    calibration windows, the memory check, perplexity before (block by block)
    for each block: every stage of the recipe, then its output shard and a checkpoint
    the shard of the tensors outside the blocks (copied byte for byte), the index,
    config.json, tokenizer, recipe.yaml; perplexity after; toolkit.json; rename into place

Output: a sharded Hugging Face directory. Float tensors keep the dtype they are stored in
(a bf16 checkpoint stays bf16; the in-memory engine writes fp32); quantized linears are
packed as models/lazy/shard_writer.py says.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from compress.block_stages import BlockStage, stage_for
from compress.errors import CompressError
from compress.streaming import StreamPlan, iter_block_params, stream_compress
from models import LoadedModel
from models.lazy.crash_points import crash_point
from models.lazy.open import LazyCheckpoint, open_lazy
from models.lazy.safetensors_source import tensor_bytes_sha256
from models.lazy.safetensors_write import write_safetensors
from models.lazy.shard_writer import ShardedWriter, shard_name
from models.lazy.skeleton import StreamingDecoder
from models.manifest import MANIFEST_FILE, check_manifest, new_manifest_fields
from models.qformat.lora import attach_saved_adapters
from toolkit.artifacts import RECIPE_FILE, check_output_dir, files_section, move_into_place
from toolkit.commands.common import write_json
from toolkit.errors import UserError
from toolkit.hardware import resolve_device, resolve_forward_dtype
from toolkit.limits import check_lengths
from toolkit.manifest import library_versions, timestamp
from toolkit.progress import make_progress
from toolkit.recipe import Recipe
from toolkit.streaming.memory import available_memory, gib, streaming_estimate
from toolkit.streaming.resume import BlockEntry, Journal, fingerprint, partial_dir
from toolkit.workflows import workflow_for

ENGINE_VERSION = "edge-toolkit-stream/1"
BATCH_SIZE = 4  # calibration windows per forward micro-batch, as the in-memory engine


@dataclasses.dataclass
class StreamJob:
    recipe: Recipe
    lazy: LazyCheckpoint
    decoder: StreamingDecoder
    loaded: LoadedModel  # a view for the workflow: the skeleton module + the tokenizer
    forward_dtype: torch.dtype
    device: str
    evaluate: bool
    writer: ShardedWriter | None = None  # set once the blocks are streamed
    stages: list = dataclasses.field(default_factory=list)  # the recipe's BlockStages
    # What the engine read and wrote, and each block's wall time (for benchmarks).
    io: dict[str, Any] = dataclasses.field(default_factory=dict)


def run_streaming_recipe(recipe: Recipe, model_spec: str, args: argparse.Namespace) -> int:
    """The streaming counterpart of toolkit/commands/job.py's run_recipe."""
    from toolkit.commands.job import recipe_as_saved

    out: Path = args.out.expanduser()
    check_output_dir(out, args.overwrite)
    start = time.perf_counter()
    device = resolve_device(args.device)
    lazy = open_lazy(model_spec)
    if lazy.quantized:
        raise UserError(f"{model_spec} is already quantized: start from the float model "
                        "(its toolkit.json names it under source_model)")
    decoder = StreamingDecoder(lazy.source, lazy.config, device=device)
    loaded = LoadedModel(module=decoder.model, tokenizer=lazy.tokenizer(),
                         source=str(lazy.path), name=lazy.name, family="llm")
    check_lengths(loaded, recipe)
    recipe = recipe_as_saved(recipe, loaded, model_spec)
    job = StreamJob(recipe, lazy, decoder, loaded,
                    resolve_forward_dtype(args.forward_dtype, device), device,
                    not args.no_eval)
    progress = make_progress(args.quiet)
    try:
        manifest = _compress(job, out, args.overwrite, progress, start)
    finally:
        if progress is not None:
            progress.close()
    print(workflow_for(loaded).summary(manifest, out))
    write_json(args.json, {**manifest, "output": str(out)})
    return 0


def _compress(job: StreamJob, out: Path, overwrite: bool, progress, start: float) -> dict:
    workflow = workflow_for(job.loaded)
    data = workflow.calibration(job.loaded, job.recipe.calibration)
    recipe = dataclasses.replace(job.recipe, calibration=dataclasses.replace(
        job.recipe.calibration, samples=data.samples))
    seconds: dict[str, float] = {}
    stages = _stages(recipe, job, data.inputs, seconds)
    job.stages = stages
    _check_memory(job, stages, data.inputs)
    metrics: dict[str, Any] = {"held_out": data.held_out_description} \
        if data.held_out_description else {}
    if job.evaluate:
        metrics["before"] = _perplexities(job.decoder, data.held_out, recipe, progress)
    staging = partial_dir(out)
    staging.parent.mkdir(parents=True, exist_ok=True)
    run_fingerprint = fingerprint(_fingerprint_parts(job, recipe, data))
    journal = Journal(staging, run_fingerprint)
    t0 = time.perf_counter()
    _stream(job, stages, data.inputs, journal, seconds, progress)
    compress_seconds = time.perf_counter() - t0
    _write_rest(job, staging, recipe)
    if job.evaluate:
        after = open_lazy(str(staging))
        decoder = StreamingDecoder(after.source, after.config, device=job.device)
        attach_saved_adapters(staging, decoder.model)  # block-wise LoRA's, when written
        metrics["after"] = _perplexities(decoder, data.held_out, recipe, progress)
    manifest = _manifest(job, recipe, stages, data, metrics, seconds, compress_seconds)
    manifest["files"] = files_section(staging)
    check_manifest(manifest, str(out / MANIFEST_FILE))
    journal.close()
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n",
                                         encoding="utf-8")
    manifest["timing_seconds"]["wall_total"] = time.perf_counter() - start
    check_output_dir(out, overwrite)
    move_into_place(staging, out)
    return manifest


def _stages(recipe: Recipe, job: StreamJob, calib, seconds) -> list[BlockStage]:
    stages: list[BlockStage] = []
    try:
        for config in recipe.stages:
            stages.append(stage_for(config, n_blocks=job.decoder.n_blocks,
                                    calib_tokens=int(calib.numel()),
                                    forward_dtype=job.forward_dtype, seconds=seconds,
                                    previous=stages))
    except CompressError as exc:
        raise UserError(str(exc)) from None
    return stages


def _check_memory(job: StreamJob, stages: list[BlockStage], calib) -> None:
    needs = set().union(*(s.needs for s in stages))
    estimate = streaming_estimate(job.decoder, needs, StreamPlan(stages).n_streams,
                                  int(calib.numel()), BATCH_SIZE * int(calib.shape[1]))
    available = available_memory()
    if estimate.peak > available:
        raise UserError(f"compressing one block of {job.lazy.path} needs about "
                        f"{gib(estimate.peak)} ({estimate.describe()}) but only "
                        f"{gib(available)} is available: lower --calib-samples or --seq-len, "
                        "or free memory")


def _fingerprint_parts(job: StreamJob, recipe: Recipe, data) -> dict[str, Any]:
    """Everything that decides the output bytes (toolkit/streaming/resume.py)."""
    infos = job.lazy.source.infos()
    inside = {n for i in range(job.decoder.n_blocks) for n in _block_names(job.decoder, i)}
    outside = sorted(n for n in infos if n not in inside)
    return {"engine": ENGINE_VERSION,
            # the blocks' contents are hashed per block as they are done (resume.py)
            "outside_blocks_sha256": tensor_bytes_sha256(job.lazy.source, outside),
            "stages": [c.to_dict() for c in recipe.stages],
            "calibration": data.description, "forward_dtype": str(job.forward_dtype),
            "device": job.device, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "batch_size": BATCH_SIZE,
            "tensors": sorted((n, list(i.shape), str(i.dtype)) for n, i in infos.items()),
            "files": [(f.name, f.stat().st_size) for f in job.lazy.files()]}


def _block_names(decoder: StreamingDecoder, index: int) -> list[str]:
    return decoder.parameter_names(decoder.layout.blocks[index])


def _stream(job: StreamJob, stages: list[BlockStage], calib, journal: Journal,
            seconds: dict[str, float], progress) -> None:
    decoder, source = job.decoder, job.lazy.source
    infos = source.infos()
    n_shards = decoder.n_blocks + 1
    writer = ShardedWriter(journal.staging, n_shards)

    def source_sha(index: int) -> str:
        return tensor_bytes_sha256(source, _block_names(decoder, index))

    resumed = journal.resume(source_sha)
    for entry in resumed.blocks:
        for stage, record in zip(stages, entry.stages, strict=True):
            stage.restore_block(entry.index, record)
        writer.restore(entry.writer["state"])
        writer.add(entry.index + 1, entry.writer["record"])

    def store_dtype(name: str) -> torch.dtype:
        return infos[decoder.stored_name(name)].dtype

    def finished(index, block, packed, streams) -> None:
        prefix = decoder.block_prefix(index)
        tensors = {name: t.to(store_dtype(name)) for name, t in iter_block_params(block, prefix)}
        state, metadata, record = writer.prepare(tensors, packed)
        name = writer.add(index + 1, record)
        shard_sha = _write_shard(journal.staging / name, state, metadata, index + 1, n_shards)
        crash_point("after-shard")
        entry = BlockEntry(index, name, shard_sha, source_sha(index),
                           [s.block_record(index) for s in stages],
                           {"record": record, "state": writer.state()})
        last = index + 1 == decoder.n_blocks
        try:
            journal.commit(entry, None if last else streams)
        except OSError as exc:  # the previous journal still stands: resumable from it
            raise UserError(f"could not save the checkpoint after block {index + 1} of "
                            f"{decoder.n_blocks}: {exc.strerror or exc}; the finished "
                            f"blocks are kept in {journal.staging}: free space and run the "
                            "same command again to resume") from None
        io["written_bytes"] += (journal.staging / name).stat().st_size + journal.last_commit_bytes
        now = time.perf_counter()
        io["block_seconds"].append(now - marks[-1])  # from the previous block's end
        marks.append(now)

    io = job.io
    io.update(written_bytes=0, block_seconds=[])
    marks = [time.perf_counter()]
    if resumed.start < decoder.n_blocks:
        stream_compress(decoder, stages, calib, finished, forward_dtype=job.forward_dtype,
                        batch_size=BATCH_SIZE, store_dtype=store_dtype,
                        start=resumed.start, resume_streams=resumed.streams,
                        seconds=seconds, progress=progress)
    _write_outside_blocks(job, writer, n_shards)
    io["written_bytes"] += writer.finish().stat().st_size + (
        writer.directory / shard_name(writer.stem, n_shards, n_shards)).stat().st_size
    io["read_bytes"] = decoder.bytes_read
    job.writer = writer


def _write_shard(path: Path, state, metadata, number: int, total: int) -> str:
    try:
        return write_safetensors(path, state, metadata)
    except OSError as exc:
        raise UserError(f"could not write shard {number} of {total} ({path.name}): "
                        f"{exc.strerror or exc}; the finished blocks are kept in "
                        f"{path.parent}: free space and run the same command again to "
                        "resume") from None


def _write_outside_blocks(job: StreamJob, writer: ShardedWriter, n_shards: int) -> None:
    """Embeddings, final norm and an untied head: copied byte for byte, unless a stage
    rotated the residual stream (then as it rewrites them)."""
    decoder, source = job.decoder, job.lazy.source
    block_names = {n for i in range(decoder.n_blocks) for n in _block_names(decoder, i)}
    tensors = {}
    for name, info in source.infos().items():
        if name in block_names:
            continue
        raw = bytearray(source.raw(name))
        tensors[name] = torch.frombuffer(raw, dtype=info.dtype).reshape(info.shape) \
            if raw else torch.empty(info.shape, dtype=info.dtype)
    for stage in job.stages:
        if stage.changes_stream:  # rotate: the table, final norm and head rotated too
            tensors = stage.rewrite_outside(tensors)
    state, metadata, record = writer.prepare(tensors, {})
    name = writer.add(n_shards, record)
    _write_shard(writer.directory / name, state, metadata, n_shards, n_shards)


def _write_rest(job: StreamJob, staging: Path, recipe: Recipe) -> None:
    """config.json (with the merged quantization config), generation config, tokenizer,
    recipe.yaml, and the note for files transformers cannot open."""
    from models.families.llm_weights import NOTE_FILE, _edge_only_note

    writer = job.writer
    assert writer is not None
    config = job.lazy.config
    for stage in job.stages:
        if stage.changes_stream:
            for key, value in stage.config_changes().items():
                setattr(config, key, value)
    dtypes = {i.dtype for i in job.lazy.source.infos().values() if i.dtype.is_floating_point}
    # transformers' config key for the weights' dtype ("dtype"; "torch_dtype" before v5)
    config.dtype = max(dtypes, key=lambda d: torch.finfo(d).bits) if dtypes else torch.float32
    config.save_pretrained(staging)
    quantization = writer.quantization_config()
    config_file = staging / "config.json"
    body = json.loads(config_file.read_text(encoding="utf-8"))
    body.pop("quantization_config", None)
    if quantization is not None:
        body["quantization_config"] = quantization
    config_file.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    generation = job.lazy.path / "generation_config.json"
    if not job.lazy.is_gguf and generation.is_file():
        shutil.copyfile(generation, staging / generation.name)
    job.loaded.tokenizer.save_pretrained(staging)
    if writer.blocker is not None:
        (staging / NOTE_FILE).write_text(_edge_only_note(writer.blocker), encoding="utf-8")
    for stage in job.stages:  # block-wise LoRA's adapter file
        write_files = getattr(stage, "write_files", None)
        if write_files is not None:
            write_files(staging)
    (staging / RECIPE_FILE).write_text(recipe.to_yaml(), encoding="utf-8")


def _perplexities(decoder: StreamingDecoder, streams, recipe: Recipe, progress) -> dict:
    from toolkit.eval.perplexity_streaming import streaming_evaluate_perplexities

    results = streaming_evaluate_perplexities(decoder, streams, recipe.protocol,
                                              progress=progress)
    return {name: result.to_dict() for name, result in results.items()}


def _manifest(job: StreamJob, recipe: Recipe, stages: list[BlockStage], data, metrics,
              seconds, compress_seconds) -> dict[str, Any]:
    sections = []
    for config, stage in zip(recipe.stages, stages, strict=True):
        report = stage.report()
        section = report.manifest_section()
        sections.append({"method": config.method, "kind": section["kind"],
                         "seconds": dict(seconds), "forward_dtype": report.forward_dtype,
                         "report": section})
    last = recipe.stages[-1].to_dict()
    writer = job.writer
    assert writer is not None
    manifest: dict[str, Any] = {
        "created": timestamp(), "source_model": job.loaded.source,
        "model_name": job.loaded.name, "recipe": recipe.to_dict(),
        "method": {**last, "method": recipe.name} if len(stages) > 1 else last,
        "stages": sections, "calibration": data.description,
        "engine": {"name": "streaming", "device": job.device,
                   "forward_dtype": str(job.forward_dtype).replace("torch.", ""),
                   "threads": torch.get_num_threads(), "blocks": job.decoder.n_blocks},
        "seed": recipe.calibration.seed, "versions": library_versions(),
        "timing_seconds": {"compress_total": compress_seconds, **seconds},
        "metrics": metrics,
        "sparsity": _sparsity(stages), "quantization": _quantization(stages),
        "eval_protocol": recipe.protocol.to_dict(),
        # what the streaming engine read and wrote (blocks; outside-block tensors copied
        # once), and each block's wall time from its read to its checkpoint
        "io": job.io,
    }
    if writer.quantized_any:
        manifest["interop"] = ({"transformers": True,
                                "format": "compressed-tensors pack-quantized"}
                               if writer.blocker is None
                               else {"transformers": False, "reason": writer.blocker})
    fields = new_manifest_fields("llm", manifest)
    return {**fields, **{k: v for k, v in manifest.items() if k not in fields}}


def _sparsity(stages: list[BlockStage]) -> dict[str, Any]:
    prune = [s.report() for s in stages if s.kind == "prune"]
    if not prune:
        return {"overall": 0.0, "per_layer": {}}
    report = prune[-1]
    section = report.manifest_section()
    return {"overall": section["overall"], "per_layer": section["per_layer"],
            "block_targets": section["block_targets"],
            "outlier_ratios": section["outlier_ratios"], "ignored": section["ignored"]}


def _quantization(stages: list[BlockStage]) -> dict[str, Any] | None:
    quant = [s.report() for s in stages if s.kind == "quantize"]
    return quant[-1].manifest_section() if quant else None
