// An LLM bundle's tokenizer in the page: @huggingface/tokenizers (tokenizers.js) built
// from the bundle's tokenizer.json and tokenizer_config.json, both sha256-checked like
// every bundle file, plus the chat template text when the bundle has one (its own file,
// as `toolkit export --bundle` writes it, or the older tokenizer_config.json key).

import { Tokenizer } from "@huggingface/tokenizers";
import { BundleError } from "./bundle.js";
import { need } from "./demo_pages.js";

export async function loadTokenizer(bundle) {
  const section = need(bundle.manifest, "tokenizer", "the chat page");
  const file = section.file ?? "tokenizer.json";
  const json = await bundle.json(file);
  const listed = section.files ?? [file];
  const config = listed.includes("tokenizer_config.json") ? await bundle.json("tokenizer_config.json") : {};
  let template = null;
  if (typeof section.chat_template === "string" && section.chat_template) {
    template = new TextDecoder().decode(await bundle.file(section.chat_template));
  } else if (typeof config.chat_template === "string") {
    template = config.chat_template;
  }
  let tokenizer;
  try {
    tokenizer = new Tokenizer(json, config);
  } catch (error) {
    throw new BundleError(`${file} could not be read by tokenizers.js (${error.message}): ` +
      "export the bundle again with a fast tokenizer");
  }
  return {
    template,
    encode: (text) => tokenizer.encode(text, { add_special_tokens: false }).ids,
    decode: (ids) => tokenizer.decode(ids, { skip_special_tokens: true }),
  };
}
