// The chat demo: an ONNX LLM bundle (lib/llm.js) with its tokenizer (tokenizers.js) and
// chat template (lib/chat_template.js), greedy decoding streamed token by token, live
// time to first token and decode tok/s, a Stop button, and stops at the bundle's
// special_tokens.eos_ids.
//
// "Verify" (or ?verify=1) runs the bundle's own check: its verification.prompt_ids for
// len(verification.tokens) greedy steps (not stopping at an end token, as the export's
// check does not), and says whether the page's tokens equal the ones onnxruntime gave at
// export time; it also encodes verification.prompt with the page's tokenizer and compares
// the ids.
//
// URL parameters: bundle (default models/smollm2/), backend (wasm | webgpu), threads,
// verify=1.

import { Bundle, BundleError } from "./lib/bundle.js";
import { loadTokenizer } from "./lib/chat_tokenizer.js";
import { renderPrompt } from "./lib/chat_template.js";
import { busy, bundleUrl, byteProgress, element, fail, publish, startPage } from "./lib/demo_pages.js";
import { LlmSession } from "./lib/llm.js";
import { clearError, fmt } from "./lib/ui.js";

const { params, flag } = startPage();
const status = element("status");
const say = (text) => { status.textContent = text; };
const state = { bundle: null, llm: null, tokenizer: null, messages: [], stop: false, generating: false };

function setBusy(generating) {
  state.generating = generating;
  element("send").disabled = generating;
  element("verify").disabled = generating;
  element("new").disabled = generating;
  element("stop").disabled = !generating;
}

/** Greedy decoding with live metrics; {tokens, ttftMs, tokPerS, stoppedBy}. */
async function decode(promptIds, maxNew, { eosIds, onText }) {
  const { llm } = state;
  const room = llm.contract.maxContext - promptIds.length;
  if (room < 1) {
    throw new BundleError(`the prompt is ${promptIds.length} tokens, the model's context ` +
      `${llm.contract.maxContext}: press "New chat" or export with a larger --max-context`);
  }
  llm.reset();
  state.stop = false;
  let ttftMs = null;
  let tokPerS = null;
  const tokens = await llm.generate(promptIds, Math.min(maxNew, room), {
    eosIds,
    shouldStop: () => state.stop,
    onToken: (token, { ttftMs: first, decodeMs, count }) => {
      ttftMs = first;
      if (count > 1 && decodeMs > 0) tokPerS = (count - 1) / (decodeMs / 1000);
      element("ttft").textContent = fmt(first, 1);
      element("tps").textContent = fmt(tokPerS, 1);
      element("count").textContent = String(count);
      onText?.(token);
    },
  });
  const stoppedBy = state.stop ? "stop" : eosIds.includes(tokens.at(-1)) ? "eos" : "length";
  return { tokens, ttftMs, tokPerS, stoppedBy };
}

function line(role, text = "") {
  const div = document.createElement("div");
  div.className = role;
  div.textContent = text;
  element("log").append(div);
  return div;
}

async function send(text) {
  busy();
  clearError();
  setBusy(true);
  const before = state.messages.length;
  try {
    state.messages.push({ role: "user", content: text });
    line("prompt", `you: ${text}`);
    const prompt = renderPrompt(state.messages, state.tokenizer.template);
    element("template").textContent = prompt.note;
    const promptIds = state.tokenizer.encode(prompt.text);
    window.__lastPrompt = { text: prompt.text, ids: promptIds, templated: prompt.templated };
    const reply = line("reply", "");
    const generated = [];
    say(`prefilling ${promptIds.length} tokens`);
    const eosIds = state.bundle.manifest.special_tokens?.eos_ids ?? [];
    const result = await decode(promptIds, Number(element("max-new").value) || 128, {
      eosIds,
      onText: (token) => {
        generated.push(token);
        reply.textContent = state.tokenizer.decode(generated);
        say("decoding");
      },
    });
    const answer = state.tokenizer.decode(result.tokens);
    reply.textContent = answer;
    if (prompt.templated) state.messages.push({ role: "assistant", content: answer });
    else state.messages = [];
    say(`done (${result.stoppedBy === "eos" ? "end token" : result.stoppedBy === "stop" ? "stopped" : "length"})`);
    publish({ mode: "chat", prompt: prompt.text, templated: prompt.templated, prompt_ids: promptIds,
      tokens: result.tokens, text: answer, stopped_by: result.stoppedBy,
      ttft_ms: result.ttftMs, decode_tok_s: result.tokPerS });
  } catch (error) {
    state.messages.length = before; // a turn that failed is not part of the conversation
    throw error;
  } finally {
    setBusy(false);
  }
}

async function verify() {
  busy();
  clearError();
  const check = state.bundle.manifest.verification;
  if (!check?.prompt_ids || !Array.isArray(check.tokens) || !check.tokens.length) {
    throw new BundleError("bundle.json has no verification.prompt_ids and tokens (exported with " +
      "--no-verify?): export the bundle again to have a check to run");
  }
  setBusy(true);
  try {
    say(`verifying: ${check.tokens.length} greedy tokens after ${check.prompt_ids.length} prompt tokens`);
    const result = await decode(check.prompt_ids, check.tokens.length, { eosIds: [] });
    const matches = result.tokens.length === check.tokens.length && result.tokens.every((t, i) => t === check.tokens[i]);
    const idsFromText = typeof check.prompt === "string" ? state.tokenizer.encode(check.prompt) : null;
    const tokenizerMatches = idsFromText ? idsFromText.join() === check.prompt_ids.join() : null;
    const verdict = element("verdict");
    verdict.className = matches ? "ok" : "bad";
    verdict.textContent = matches
      ? `verified: the ${result.tokens.length} greedy tokens equal the export's (${check.runtime ?? "onnxruntime"})`
      : `differs: page ${result.tokens.join(" ")} vs export ${check.tokens.join(" ")}`;
    if (tokenizerMatches === false) verdict.textContent += "; the page's tokenizer encodes the prompt differently";
    say("verification done");
    publish({ mode: "verify", tokens: result.tokens, expected: check.tokens, matches,
      prompt_ids: check.prompt_ids, tokenizer_ids: idsFromText, tokenizer_matches: tokenizerMatches,
      text: state.tokenizer.decode(result.tokens), ttft_ms: result.ttftMs, decode_tok_s: result.tokPerS });
  } finally {
    setBusy(false);
  }
}

async function load() {
  const base = bundleUrl(params.get("bundle") ?? "models/smollm2/");
  const backend = params.get("backend") ?? "wasm";
  element("bundle").value = base;
  element("backend").value = backend;
  say(`opening ${base}`);
  const bundle = await Bundle.open(base);
  if (bundle.kind !== "llm") {
    throw new BundleError(`this bundle holds an ${bundle.kind} model; the chat page runs LLM bundles: open portrait.html or vmoe.html for it`);
  }
  state.bundle = bundle;
  say("loading the tokenizer");
  state.tokenizer = await loadTokenizer(bundle);
  const progress = byteProgress(element("progress"), element("progress-text"), bundle.modelBytes);
  say(`loading ${bundle.manifest.model?.file}`);
  const threads = Number(params.get("threads") ?? Math.min(4, navigator.hardwareConcurrency || 1));
  state.llm = await LlmSession.create(bundle, { backend, threads, onProgress: progress.onProgress });
  progress.done();
  element("template").textContent = state.tokenizer.template
    ? (renderPrompt([], state.tokenizer.template).templated ? "ChatML chat template" : "chat template not ChatML: raw prompts")
    : "no chat template: raw prompts";
  for (const id of ["prompt", "send", "new", "verify"]) element(id).disabled = false;
  say(`ready: ${bundle.manifest.source ?? base}, context ${state.llm.contract.maxContext} tokens, ${backend}`);
  document.body.dataset.state = "ready";
}

element("pick").addEventListener("submit", (event) => {
  event.preventDefault();
  const next = new URLSearchParams(params);
  next.set("bundle", element("bundle").value);
  next.set("backend", element("backend").value);
  next.delete("verify");
  location.search = next.toString();
});
element("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = element("prompt").value.trim();
  if (!text || state.generating) return;
  element("prompt").value = "";
  send(text).catch(fail);
});
element("stop").addEventListener("click", () => { state.stop = true; });
element("new").addEventListener("click", () => {
  state.messages = [];
  element("log").textContent = "";
  element("verdict").textContent = "";
});
element("verify").addEventListener("click", () => verify().catch(fail));

load().then(() => (flag("verify") ? verify() : null)).catch(fail);
