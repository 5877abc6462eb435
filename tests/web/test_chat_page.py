"""The chat page in headless Chromium under iPhone and Pixel emulation with the fake
Llama ONNX bundle: verify mode reproduces the manifest's greedy tokens; a typed prompt
is tokenized as the Python tokenizers library does, decoded greedily to the tokens
onnxruntime gives in Python (export.llm.greedy over the same file), streamed with live
metrics; the ChatML renderer agrees with Jinja on a SmolLM2-shaped template; a corrupt
model shows the sha256 message."""

from __future__ import annotations

import json

import pytest

from tests.web.conftest import DEVICES
from tests.web.reference import manifest

# The ChatML template in SmolLM2's shape (a default system turn written into the
# template, one <|im_start|>role ... <|im_end|> block per message, the assistant's turn
# opened at the end), written here to check the page's renderer against Jinja itself.
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SMOLLM_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA2 = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"


@pytest.mark.parametrize("device", DEVICES)
def test_verify_mode_gives_the_manifests_greedy_tokens(open_page, web_bundles, screenshots,
                                                       device):
    page = open_page("chat.html?bundle=models/llm/&verify=1", device)
    assert page.settle() == "done", page.text("#error")
    out = page.output()
    verification = manifest(web_bundles["llm"])["verification"]
    assert out["mode"] == "verify" and out["matches"] is True
    assert out["tokens"] == verification["tokens"]
    assert out["tokenizer_ids"] == verification["prompt_ids"] and out["tokenizer_matches"]
    assert page.text("#verdict").startswith("verified: the 8 greedy tokens equal the export's")
    page.screenshot(screenshots, f"chat-verify-{device.replace(' ', '-')}")


def test_a_prompt_streams_the_tokens_onnxruntime_gives_in_python(open_page, web_bundles,
                                                                  screenshots):
    from tokenizers import Tokenizer

    from export.llm.greedy import greedy_tokens
    from export.onnx.llm_session import onnx_step

    bundle = web_bundles["llm"]
    described = manifest(bundle)
    page = open_page("chat.html?bundle=models/llm/", "Pixel 7")
    assert page.settle(states=("ready", "failed")) == "ready", page.text("#error")
    prompt = "Once upon a time, a small robot"
    page.page.fill("#max-new", "6")
    page.page.fill("#prompt", prompt)
    page.page.click("#send")
    assert page.settle() == "done", page.text("#error")
    out = page.output()
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    assert out["prompt"] == prompt and not out["templated"]  # the fake has no template
    assert out["prompt_ids"] == ids
    expected, _ = greedy_tokens(onnx_step(bundle / "model.onnx"), ids, 6,
                                described["cache"]["shape"], described["max_context"])
    eos = described["special_tokens"]["eos_ids"]
    cut = next((i + 1 for i, t in enumerate(expected) if t in eos), len(expected))
    assert out["tokens"] == expected[:cut]
    assert out["stopped_by"] == ("eos" if cut < len(expected) or expected[-1] in eos else "length")
    assert out["text"] == tokenizer.decode(out["tokens"], skip_special_tokens=True)
    assert page.page.locator(".reply").last.text_content() == out["text"]
    assert float(page.text("#ttft")) > 0 and page.text("#count") == str(len(out["tokens"]))
    assert page.text("#template") == "no chat template in the bundle: raw prompt"
    page.screenshot(screenshots, "chat-prompt")


def test_stop_ends_decoding_after_the_token_on_screen(open_page):
    """Stop pressed while the second token is shown (a MutationObserver on the token
    count clicks it): decoding ends there, said so, and the page can send again."""
    page = open_page("chat.html?bundle=models/llm/", "iPhone 15")
    assert page.settle(states=("ready", "failed")) == "ready", page.text("#error")
    page.page.evaluate("""() => {
      const count = document.getElementById("count");
      new MutationObserver(() => {
        if (count.textContent === "2") document.getElementById("stop").click();
      }).observe(count, {childList: true, characterData: true, subtree: true});
    }""")
    page.page.fill("#max-new", "30")
    page.page.fill("#prompt", "Hi")
    page.page.click("#send")
    assert page.settle() == "done", page.text("#error")
    out = page.output()
    assert out["stopped_by"] == "stop" and len(out["tokens"]) == 2
    assert page.text("#status") == "done (stopped)"
    assert page.page.is_enabled("#send") and not page.page.is_enabled("#stop")


def test_the_chatml_renderer_agrees_with_jinja(open_page):
    import jinja2

    conversations = [
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye\nnow"}],
    ]
    page = open_page("index.html", "iPhone 15")
    rendered = page.page.evaluate(
        """async ([template, other, conversations]) => {
             const m = await import("./lib/chat_template.js");
             return {chatml: conversations.map((c) => m.renderPrompt(c, template)),
                     other: m.renderPrompt(conversations[0], other),
                     none: m.renderPrompt(conversations[0], null)};
           }""", [CHATML, LLAMA2, conversations])
    environment = jinja2.Environment()
    for conversation, got in zip(conversations, rendered["chatml"], strict=True):
        expected = environment.from_string(CHATML).render(messages=conversation,
                                                          add_generation_prompt=True)
        assert got == {"text": expected, "templated": True, "note": "ChatML chat template"}
    assert rendered["other"]["text"] == "What is 2+2?" and not rendered["other"]["templated"]
    assert "not ChatML" in rendered["other"]["note"]
    assert rendered["none"]["note"] == "no chat template in the bundle: raw prompt"


def test_a_corrupt_model_shows_the_sha256_message(open_page):
    page = open_page("chat.html?bundle=models/llm-corrupt/", "Pixel 7")
    assert page.settle() == "failed"
    assert "model.onnx does not match its sha256 in bundle.json" in page.text("#error")


def test_a_bundle_template_file_is_rendered(open_page, web_bundles, tmp_path):
    """A copy of the fake bundle with a ChatML chat_template.jinja (as `toolkit export
    --bundle` writes it for SmolLM2): the page renders the conversation with it. The
    fake's byte-level vocabulary has no <|im_start|> token, so the rendered prompt is
    longer than its 48-token context: the page refuses it in one line, naming the count."""
    import hashlib
    import shutil

    from tokenizers import Tokenizer

    from tests.web.conftest import served_files
    from toolkit.bench.device.run import web_app_root
    from toolkit.bench.device.server import BenchServer

    folder = tmp_path / "templated"
    shutil.copytree(web_bundles["llm"], folder)
    data = CHATML.replace(SMOLLM_SYSTEM, "Be kind.").encode("utf-8")
    (folder / "chat_template.jinja").write_bytes(data)
    described = manifest(folder)
    described["tokenizer"]["chat_template"] = "chat_template.jinja"
    described["tokenizer"]["files"].append("chat_template.jinja")
    described["files"]["chat_template.jinja"] = {"bytes": len(data),
                                                 "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "bundle.json").write_text(json.dumps(described), encoding="utf-8")
    with BenchServer(web_app_root(), served_files({"t": folder}), {}, lambda _d: False) as server:
        page = open_page(server.url("127.0.0.1", "chat.html?bundle=models/t/"), "iPhone 15")
        assert page.settle(states=("ready", "failed")) == "ready", page.text("#error")
        assert page.text("#template") == "ChatML chat template"
        page.page.fill("#prompt", "Hi")
        page.page.click("#send")
        assert page.settle() == "failed"
        prompt = page.page.evaluate("window.__lastPrompt")
    expected = ("<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert prompt["templated"] and prompt["text"] == expected
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(
        expected, add_special_tokens=False).ids
    assert prompt["ids"] == ids
    assert f"the prompt is {len(ids)} tokens, the model's context 48" in page.text("#error")


@pytest.mark.slow
def test_smollm2s_tokenizer_and_template_in_the_page_equal_transformers(
        open_page, smollm2_tokenizer, tmp_path):
    """The real SmolLM2 tokenizer (49152 tokens, ChatML special tokens) in tokenizers.js
    and its real chat template through the page's renderer give the ids and text
    transformers gives with Jinja."""
    smollm2_tokenizer.save_pretrained(tmp_path)
    files = {name: json.loads((tmp_path / name).read_text(encoding="utf-8"))
             for name in ("tokenizer.json", "tokenizer_config.json")}
    template = smollm2_tokenizer.chat_template
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "Answer in French."},
         {"role": "user", "content": "Hello, café ☕ — ünïcode?"},
         {"role": "assistant", "content": "Bonjour !"},
         {"role": "user", "content": "Et maintenant\n  avec des espaces"}],
    ]
    page = open_page("chat.html?bundle=models/llm/", "iPhone 15")
    got = page.page.evaluate(
        """async ([tokenizerJson, config, template, conversations]) => {
             const { pageTokenizer } = await import("./lib/chat_tokenizer.js");
             const { renderPrompt } = await import("./lib/chat_template.js");
             const tokenizer = pageTokenizer(tokenizerJson, config, template);
             return conversations.map((c) => {
               const { text } = renderPrompt(c, tokenizer.template);
               const ids = tokenizer.encode(text);
               return { text, ids, decoded: tokenizer.decode(ids) };
             });
           }""", [files["tokenizer.json"], files["tokenizer_config.json"], template,
                  conversations])
    for conversation, result in zip(conversations, got, strict=True):
        text = smollm2_tokenizer.apply_chat_template(conversation, tokenize=False,
                                                     add_generation_prompt=True)
        ids = smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert result["text"] == text
        assert result["ids"] == ids
        assert result["decoded"] == smollm2_tokenizer.decode(ids, skip_special_tokens=True)
