// What the three demo pages (chat, portrait, V-MoE) share: the service worker that makes
// the app work offline, the bundle address from the page's URL, a byte progress bar over
// several files, and the "result" hand-off that tests (and curious users) read: the raw
// output of the last run as window.__lastOutput plus data-state on <body>, so a test can
// wait for "done" and compare the numbers with Python's runtime on the same input.

import { BundleError } from "./bundle.js";
import { catchUnhandled, showError } from "./ui.js";

/** Registers sw.js (the app's offline cache) where the browser has service workers; a
 * failure only costs offline use, so it is logged, never shown as the page's error. */
export function registerServiceWorker() {
  if (!("serviceWorker" in navigator) || new URLSearchParams(location.search).has("nosw")) return;
  navigator.serviceWorker.register(new URL("../sw.js", import.meta.url))
    .catch((error) => console.warn(`offline cache unavailable: ${error.message}`));
}

/** Common start of a demo page: errors never leave a blank page, the app is cached. */
export function startPage() {
  catchUnhandled();
  registerServiceWorker();
  const params = new URLSearchParams(location.search);
  return { params, flag: (name) => ["1", "true", "yes"].includes(params.get(name) ?? "") };
}

/** A bundle folder URL as given (relative to the page), always ending in "/". */
export function bundleUrl(value) {
  const text = String(value ?? "").trim();
  if (!text) throw new BundleError("no bundle given: type the folder that holds bundle.json, e.g. models/smollm2/");
  return text.endsWith("/") ? text : `${text}/`;
}

/** Follows several downloads in one <progress> and text line: onProgress(loaded, total)
 * of each file in turn (a drop in `loaded` means the next file has started). */
export function byteProgress(bar, label, totalBytes) {
  let finished = 0;
  let last = 0;
  bar.max = Math.max(1, totalBytes);
  bar.value = 0;
  bar.hidden = false;
  const show = () => {
    const mb = (finished + last) / 1e6;
    label.textContent = `${mb.toFixed(2)} / ${(totalBytes / 1e6).toFixed(2)} MB`;
  };
  show();
  return {
    onProgress(loaded) {
      if (loaded < last) finished += last;
      last = loaded;
      bar.value = finished + last;
      show();
    },
    done() {
      bar.value = bar.max;
      label.textContent = `${(totalBytes / 1e6).toFixed(2)} MB loaded and checked`;
    },
  };
}

/** Publishes a run's result for tests: window.__lastOutput and body[data-state]. */
export function publish(result) {
  window.__lastOutput = result;
  document.body.dataset.state = "done";
}

/** Shows `error` with lib/ui.js and marks the page failed (tests wait for either). */
export function fail(error) {
  const message = String(error?.message ?? error);
  showError(message);
  window.__lastError = message;
  const status = document.getElementById("status");
  if (status) status.textContent = "stopped: see the message above";
  document.body.dataset.state = "failed";
}

export function busy() {
  document.body.dataset.state = "running";
}

/** Typed array over little-endian raw bytes of `dtype` (the bundles' sample files). */
export function typedView(buffer, dtype, name = "data") {
  const types = { float32: Float32Array, int32: Int32Array, int8: Int8Array, uint8: Uint8Array,
    int64: BigInt64Array, float16: Uint16Array };
  const Typed = types[dtype];
  if (!Typed) throw new BundleError(`${name} has dtype ${dtype}, which this page cannot read: export the bundle again`);
  if (buffer.byteLength % Typed.BYTES_PER_ELEMENT) {
    throw new BundleError(`${name} has ${buffer.byteLength} bytes, not a whole number of ${dtype} values: export the bundle again`);
  }
  return new Typed(buffer);
}

/** The manifest value at `path` ("preprocessing.height"), or a BundleError naming it. */
export function need(manifest, path, what = "this page") {
  let value = manifest;
  for (const key of path.split(".")) {
    value = value?.[key];
    if (value === undefined || value === null) {
      throw new BundleError(`bundle.json has no "${path}", which ${what} needs: export the ` +
        "bundle again with this version of Edge Toolkit (`toolkit export ... --bundle DIR`)");
    }
  }
  return value;
}

export function element(id) {
  return document.getElementById(id);
}
