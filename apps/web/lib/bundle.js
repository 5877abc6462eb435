// A bundle as `toolkit export TARGET --model M --bundle DIR` writes it: bundle.json (the
// manifest, format "edge-toolkit-bundle") beside the model and its companion files, each
// with its byte count and sha256. Every file is fetched through `bundle.file(name)`, which
// checks both before the bytes reach a runtime: a truncated download or a file from
// another export is named, never run.

export const BUNDLE_FORMAT = "edge-toolkit-bundle";
export const BUNDLE_VERSIONS = [1];

/** A problem a user can act on: the page shows `message` as it is. */
export class BundleError extends Error {}

/** Lower-case hex sha256 of an ArrayBuffer (WebCrypto: needs a secure context, which
 * localhost and the bench server's https are). */
export async function sha256Hex(buffer) {
  if (!globalThis.crypto?.subtle) {
    throw new BundleError("this page is not in a secure context, so it cannot check the " +
      "model's sha256: open it over https (toolkit bench --device phone --tls) or localhost");
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", buffer));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The bytes at `url`; `onProgress(loaded, total)` follows the download. */
export async function fetchBytes(url, onProgress) {
  let response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new BundleError(`${url} could not be fetched (${error.message}): check that the ` +
      "server is running and the page's address");
  }
  if (!response.ok) {
    throw new BundleError(`${url} answered HTTP ${response.status}: check the bundle path ` +
      "(the bench server serves only the files of the bundles named on its command line)");
  }
  const total = Number(response.headers.get("content-length")) || 0;
  if (!response.body || !onProgress) return response.arrayBuffer();
  const reader = response.body.getReader();
  const parts = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    loaded += value.length;
    onProgress(loaded, total);
  }
  const bytes = new Uint8Array(loaded);
  let offset = 0;
  for (const part of parts) {
    bytes.set(part, offset);
    offset += part.length;
  }
  return bytes.buffer;
}

/** Checks a file's bytes against its manifest entry {bytes, sha256}. */
export async function checkFile(name, buffer, entry) {
  if (!entry) {
    throw new BundleError(`${name} is not listed in bundle.json's files: export the bundle ` +
      "again with `toolkit export ... --bundle DIR`");
  }
  if (buffer.byteLength !== entry.bytes) {
    throw new BundleError(`${name} has ${buffer.byteLength} bytes, bundle.json says ` +
      `${entry.bytes}: the file is truncated or replaced; copy the bundle again or export ` +
      "it again");
  }
  const actual = await sha256Hex(buffer);
  if (actual !== entry.sha256) {
    throw new BundleError(`${name} does not match its sha256 in bundle.json (got ` +
      `${actual.slice(0, 12)}..., expected ${entry.sha256.slice(0, 12)}...): the file is ` +
      "corrupt or from another export; export the bundle again");
  }
}

export class Bundle {
  constructor(baseUrl, manifest) {
    this.base = baseUrl.endsWith("/") ? baseUrl : `${baseUrl}/`;
    this.manifest = manifest;
  }

  /** The manifest at BASE/bundle.json, checked for format and version. */
  static async open(baseUrl) {
    const base = baseUrl.endsWith("/") ? baseUrl : `${baseUrl}/`;
    const text = new TextDecoder().decode(await fetchBytes(`${base}bundle.json`));
    let manifest;
    try {
      manifest = JSON.parse(text);
    } catch {
      throw new BundleError(`${base}bundle.json is not JSON: export the bundle again`);
    }
    if (manifest.format !== BUNDLE_FORMAT) {
      throw new BundleError(`${base}bundle.json is not an Edge Toolkit bundle (format ` +
        `${JSON.stringify(manifest.format)}): point the page at a folder written by ` +
        "`toolkit export ... --bundle DIR`");
    }
    if (!BUNDLE_VERSIONS.includes(manifest.version)) {
      throw new BundleError(`${base}bundle.json is version ${manifest.version}; this page ` +
        `reads ${BUNDLE_VERSIONS.join(", ")}: update the app or export with a matching toolkit`);
    }
    return new Bundle(base, manifest);
  }

  /** "llm", "image-segmentation" or "image-classification". Bundles written before the
   * manifest named its kind are LLM bundles (they were the only kind). */
  get kind() {
    return this.manifest.kind ?? "llm";
  }

  /** Total bytes of the model file(s): what a page downloads for the model. */
  get modelBytes() {
    const files = this.manifest.model?.files ?? [this.manifest.model?.file];
    return files.reduce((sum, name) => sum + (this.manifest.files[name]?.bytes ?? 0), 0);
  }

  /** A file of the bundle, sha256-checked. */
  async file(name, onProgress) {
    const buffer = await fetchBytes(this.base + encodeURI(name), onProgress);
    await checkFile(name, buffer, this.manifest.files?.[name]);
    return buffer;
  }

  async json(name) {
    return JSON.parse(new TextDecoder().decode(await this.file(name)));
  }
}
