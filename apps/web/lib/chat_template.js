// The chat template of an LLM bundle, rendered without a Jinja engine: the page carries
// no Jinja interpreter (none is among the app's pinned npm packages), so it recognises
// the ChatML shape that SmolLM2, Qwen and others use,
//
//   <|im_start|>ROLE\nCONTENT<|im_end|>\n ... <|im_start|>assistant\n
//
// including a default system message written into the template (SmolLM2's "You are a
// helpful AI assistant named SmolLM ..." is added when the conversation has no system
// turn). Any other template is reported as not understood and the raw prompt is used.

const START = "<|im_start|>";
const END = "<|im_end|>";

/** "chatml" when `template` renders the ChatML shape, else null (also for no template). */
export function templateKind(template) {
  return typeof template === "string" && template.includes(START) && template.includes(END) ? "chatml" : null;
}

/** The default system message a ChatML template inserts, or null. It is the literal
 * text between "<|im_start|>system" + newline and "<|im_end|>" in the template source
 * (a newline written as a real one or as the escape \n); text built from variables
 * (quotes, braces) is not a literal and is ignored. */
export function defaultSystem(template) {
  for (const found of (template ?? "").matchAll(/<\|im_start\|>system(?:\n|\\n)([\s\S]*?)<\|im_end\|>/g)) {
    if (!/['"{}]/.test(found[1])) return found[1].replace(/\\n/g, "\n");
  }
  return null;
}

/** The conversation `messages` [{role, content}] as a ChatML prompt that ends with the
 * assistant's turn opened (add_generation_prompt). */
export function renderChatMl(messages, { system = null, addGenerationPrompt = true } = {}) {
  const turns = [...messages];
  if (system !== null && turns[0]?.role !== "system") turns.unshift({ role: "system", content: system });
  let text = turns.map((m) => `${START}${m.role}\n${m.content}${END}\n`).join("");
  if (addGenerationPrompt) text += `${START}assistant\n`;
  return text;
}

/** {text, templated, note}: the prompt for `messages` under `template` (or the last
 * user message as it is when the template is missing or not ChatML). */
export function renderPrompt(messages, template) {
  if (templateKind(template) === "chatml") {
    return { text: renderChatMl(messages, { system: defaultSystem(template) }), templated: true,
      note: "ChatML chat template" };
  }
  const last = messages.filter((m) => m.role === "user").at(-1)?.content ?? "";
  return { text: last, templated: false,
    note: template ? "the bundle's chat template is not ChatML, which is all this page renders: raw prompt" : "no chat template in the bundle: raw prompt" };
}
