"""Block-by-block perplexity (toolkit/eval/perplexity_streaming.py) against the in-memory
`perplexity` on the same weights: bit-identical `mean_nll`, `window_nll` and `ppl` on tiny
random models of each supported family (tied and untied heads, uneven last batches), on a
packed sharded artifact, and (slow) on SmolLM2-135M; the chunked-vocabulary head agrees
to float32 rounding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

import models
from models.lazy.packed_source import open_weights_source
from models.lazy.skeleton import StreamingDecoder
from tests.models.test_packed_source import rtn_artifact, sharded_copy
from toolkit.data import TokenStreams
from toolkit.errors import UserError
from toolkit.eval import perplexity_streaming as ps
from toolkit.eval.perplexity import perplexity
from toolkit.eval.protocol import EvalProtocol, evaluate_perplexities

FAMILIES = ("fake-llama", "fake-mistral", "fake-qwen2", "fake-gemma")


def _saved(name: str, directory: Path) -> Path:
    loaded = models.create_model(name)
    loaded.module.save_pretrained(directory, safe_serialization=True)
    loaded.tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, Path]:
    return {name: _saved(name, tmp_path_factory.mktemp(name)) for name in FAMILIES}


def _decoder(directory: Path) -> StreamingDecoder:
    config = AutoConfig.from_pretrained(directory)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return StreamingDecoder(open_weights_source(directory), config)


def _windows(vocab: int, count: int = 5, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (count, length), generator=torch.Generator().manual_seed(seed))


def _assert_identical(got, expected) -> None:
    assert got.mean_nll == expected.mean_nll
    assert got.window_nll == expected.window_nll
    assert got.ppl == expected.ppl
    assert (got.tokens, got.windows, got.seq_len) == (expected.tokens, expected.windows,
                                                      expected.seq_len)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("batch_size", [1, 2])
def test_bit_identical_to_in_memory(saved_models, name, batch_size):
    directory = saved_models[name]
    module = models.load_model(str(directory)).module
    windows = _windows(module.config.vocab_size)
    expected = perplexity(module, windows, batch_size=batch_size)
    ticks = []
    decoder = _decoder(directory)
    got = ps.streaming_perplexity(decoder, windows, batch_size=batch_size,
                                  progress=lambda done, total: ticks.append((done, total)))
    _assert_identical(got, expected)
    steps = decoder.n_blocks + 2  # embeddings, each block, norm + head
    assert ticks == [(i, steps) for i in range(1, steps + 1)]
    # Every part went back to the meta device: nothing of the model stays in memory.
    assert all(p.device.type == "meta" for p in decoder.model.parameters())


def test_chunked_head_agrees_to_rounding(saved_models, monkeypatch):
    """Vocabulary 259 read 7 rows at a time (37 chunks, the last one short): the running
    logsumexp gives the exact head's numbers up to float32 summation order."""
    directory = saved_models["fake-llama"]
    decoder = _decoder(directory)
    windows = _windows(decoder.config.vocab_size)
    exact = ps.streaming_perplexity(decoder, windows, batch_size=2, head="exact")
    monkeypatch.setattr(ps, "HEAD_CHUNK_BYTES", 7 * 4 * decoder.config.hidden_size)
    chunked = ps.streaming_perplexity(decoder, windows, batch_size=2, head="chunked")
    assert chunked.mean_nll == pytest.approx(exact.mean_nll, rel=1e-6)
    assert chunked.window_nll == pytest.approx(exact.window_nll, rel=1e-6)
    # "auto" picks the chunked head once the float32 head exceeds EXACT_HEAD_BYTES.
    monkeypatch.setattr(ps, "EXACT_HEAD_BYTES", 0)
    auto = ps.streaming_perplexity(decoder, windows, batch_size=2)
    assert auto.window_nll == chunked.window_nll


def test_chunked_log_softmax_against_direct_formula(saved_models, monkeypatch):
    """Independent check of the chunked path: NLL = logsumexp(z) - z_target from logits
    computed by the in-memory model, in float64."""
    directory = saved_models["fake-mistral"]  # untied head
    module = models.load_model(str(directory)).module
    windows = _windows(module.config.vocab_size, count=3)
    with torch.no_grad():
        logits = module(input_ids=windows).logits[:, :-1].double()
    nll = torch.logsumexp(logits, -1) - logits.gather(-1, windows[:, 1:, None]).squeeze(-1)
    monkeypatch.setattr(ps, "HEAD_CHUNK_BYTES", 50 * 4 * module.config.hidden_size)
    got = ps.streaming_perplexity(_decoder(directory), windows, head="chunked")
    assert got.window_nll == pytest.approx(nll.mean(-1).tolist(), rel=1e-6)


def test_evaluate_perplexities_mirrors_in_memory(saved_models):
    """Both streams in one pass over the blocks; each stream's result is its own run's."""
    directory = saved_models["fake-qwen2"]
    module = models.load_model(str(directory)).module
    vocab = module.config.vocab_size
    streams = TokenStreams(calib_pool=_windows(vocab, 1, 64).reshape(-1),
                           wiki_eval=_windows(vocab, 1, 100, seed=1).reshape(-1),
                           news_eval=_windows(vocab, 1, 70, seed=2).reshape(-1))
    protocol = EvalProtocol(seq_len=16, windows=5)
    expected = evaluate_perplexities(module, streams, protocol, batch_size=2)
    seen = []
    got = ps.streaming_evaluate_perplexities(_decoder(directory), streams, protocol,
                                             batch_size=2,
                                             progress=lambda *a: seen.append(a[0]))
    assert list(got) == list(expected) == ["wikipedia", "news"]
    assert got["news"].windows == 4  # 70 tokens hold four windows of 16
    for name in expected:
        _assert_identical(got[name], expected[name])
    assert set(seen) == {"eval (streaming)"}


def test_packed_sharded_artifact_directory(toolkit_cli, fake_model_dir, tmp_path, monkeypatch):
    """`evaluate_directory_streaming` on an RTN-4bit artifact re-written one shard per
    block: the numbers of the in-memory model loaded from the same directory."""
    artifact = rtn_artifact(toolkit_cli, fake_model_dir, tmp_path / "rtn4", 4)
    directory = sharded_copy(artifact, tmp_path / "sharded")
    module = models.load_model(str(directory)).module
    vocab = module.config.vocab_size
    streams = TokenStreams(calib_pool=_windows(vocab, 1, 64).reshape(-1),
                           wiki_eval=_windows(vocab, 1, 64, seed=3).reshape(-1),
                           news_eval=_windows(vocab, 1, 64, seed=4).reshape(-1))
    monkeypatch.setattr("toolkit.data.cached_streams", lambda tokenizer: streams)
    protocol = EvalProtocol(seq_len=16, windows=3)
    expected = evaluate_perplexities(module, streams, protocol)
    got = ps.evaluate_directory_streaming(directory, protocol)
    for name in expected:
        _assert_identical(got[name], expected[name])


def test_bad_windows_are_refused(saved_models):
    decoder = _decoder(saved_models["fake-llama"])
    with pytest.raises(UserError, match="L >= 2"):
        ps.streaming_perplexity(decoder, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(UserError, match="batch size"):
        ps.streaming_perplexity(decoder, torch.zeros(3, 4, dtype=torch.long), batch_size=0)


@pytest.mark.slow
def test_smollm2_bit_identical():
    """The default model, from its fp32 safetensors cache, three windows of 64 tokens in
    batches of two (the last one short)."""
    from models.smollm2 import smollm2_cache_dir

    module = models.load_model("smollm2-135m").module
    directory = smollm2_cache_dir()
    windows = _windows(module.config.vocab_size, count=3, length=64)
    expected = perplexity(module, windows, batch_size=2)
    del module
    got = ps.streaming_perplexity(_decoder(directory), windows, batch_size=2)
    _assert_identical(got, expected)


class _NoRows:
    """A TensorSource that cannot read chosen rows: the embedding table is materialised."""

    def __init__(self, source) -> None:
        self._source = source

    def infos(self):
        return self._source.infos()

    def read(self, name):
        return self._source.read(name)

    def raw(self, name):
        return self._source.raw(name)

    def close(self) -> None:
        self._source.close()


@pytest.mark.parametrize("name", ["fake-gemma", "fake-mistral"])
def test_materialised_embeddings_give_the_same_numbers(saved_models, name):
    directory = saved_models[name]
    config = AutoConfig.from_pretrained(directory)
    decoder = StreamingDecoder(_NoRows(open_weights_source(directory)), config)
    windows = _windows(config.vocab_size)
    got = ps.streaming_perplexity(decoder, windows, batch_size=2)
    _assert_identical(got, ps.streaming_perplexity(_decoder(directory), windows, batch_size=2))


def test_gguf_file_streams_like_its_in_memory_load(fake_gguf_file, monkeypatch):
    """A GGUF source (no row reads: the embedding table is materialised) through
    `evaluate_directory_streaming`, against `models.load_model` of the same file."""
    module = models.load_model(str(fake_gguf_file)).module
    vocab = module.config.vocab_size
    streams = TokenStreams(calib_pool=_windows(vocab, 1, 64).reshape(-1),
                           wiki_eval=_windows(vocab, 1, 64, seed=5).reshape(-1),
                           news_eval=_windows(vocab, 1, 64, seed=6).reshape(-1))
    monkeypatch.setattr("toolkit.data.cached_streams", lambda tokenizer: streams)
    protocol = EvalProtocol(seq_len=16, windows=3)
    expected = evaluate_perplexities(module, streams, protocol, batch_size=2)
    got = ps.evaluate_directory_streaming(fake_gguf_file, protocol, batch_size=2)
    for name in expected:
        _assert_identical(got[name], expected[name])
