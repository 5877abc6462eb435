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
  try {
    return pageTokenizer(json, config, template);
  } catch (error) {
    throw new BundleError(`${file} could not be read by tokenizers.js (${error.message}): ` +
      "export the bundle again with a fast tokenizer");
  }
}

/** {template, encode(text) -> ids, decode(ids) -> text} as the toolkit's Python side
 * (transformers) does it: no special tokens added on encode (the template already
 * holds them), special tokens skipped on decode, and spaces before punctuation kept
 * unless tokenizer_config.json asks for clean-up (tokenizers.js would clean up by
 * default, transformers 5 does not: "Bonjour !" must stay as the model wrote it). */
export function pageTokenizer(json, config, template = null) {
  const tokenizer = new Tokenizer(json, config);
  const cleanUp = config.clean_up_tokenization_spaces ?? false;
  return {
    template,
    encode: (text) => tokenizer.encode(text, { add_special_tokens: false }).ids,
    decode: (ids) => tokenizer.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: cleanUp }),
  };
}
