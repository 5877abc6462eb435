// The app's service worker: after one visit online the pages, their code and the
// runtimes work offline, and every model file fetched once is kept.
//
//   app shell (pages, lib/, css, manifest)  network first, the cached copy offline; the
//                                            cache is refreshed on every successful fetch
//   npm runtime files (node_modules/)       cache first: their versions are pinned in
//                                            package-lock.json, so a URL never changes
//                                            content; the wasm builds the pages load are
//                                            precached at install
//   models/<bundle>/bundle.json             network first (a re-exported bundle is seen),
//                                            cached for offline
//   models/<bundle>/<file>                  cache first under a key holding the file's
//                                            sha256 from that bundle.json; a download is
//                                            stored only when its sha256 matches
//   bench/ (the bench server's job/results) never cached
//
// Who checks what: this worker keeps a corrupt or foreign download out of the cache (it
// hashes a copy of the stream, so the page's progress bar still moves), and the page
// checks every file again (lib/bundle.js Bundle.file) before a runtime sees it, so a
// file is verified even where no service worker runs (first visit, private windows).
// Model files of bundles outside models/ pass through uncached.

const VERSION = "v1";
const SHELL_CACHE = `edge-toolkit-shell-${VERSION}`;
const MODEL_CACHE = "edge-toolkit-models";

// Relative to this file. tests/web checks that every page, script and stylesheet of the
// app is listed and that every listed file exists.
const SHELL = [
  "./", "index.html", "chat.html", "chat.js", "portrait.html", "portrait.js", "vmoe.html",
  "vmoe.js", "bench.html", "bench.js", "app.css", "demo.css", "manifest.webmanifest",
  "icon.svg",
  "lib/bench_models.js", "lib/bundle.js", "lib/chat_template.js", "lib/chat_tokenizer.js",
  "lib/demo_pages.js", "lib/demo_vision.js", "lib/litert_runtime.js", "lib/llm.js",
  "lib/onnx_runtime.js", "lib/portrait_compose.js", "lib/portrait_selfie.js",
  "lib/protocol.js", "lib/stats.js", "lib/ui.js", "lib/vmoe_cards.js", "lib/vmoe_draw.js",
];
const RUNTIME = [
  "node_modules/onnxruntime-web/dist/ort.wasm.min.mjs",
  "node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
  "node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
  "node_modules/@litertjs/core/dist/index.js",
  "node_modules/@litertjs/wasm-utils/dist/bundle.js",
  // relaxed-SIMD browsers load the first pair, the others (Safari today) the compat one
  "node_modules/@litertjs/core/wasm/litert_wasm_internal.js",
  "node_modules/@litertjs/core/wasm/litert_wasm_internal.wasm",
  "node_modules/@litertjs/core/wasm/litert_wasm_compat_internal.js",
  "node_modules/@litertjs/core/wasm/litert_wasm_compat_internal.wasm",
  "node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs",
  "node_modules/@mediapipe/selfie_segmentation/selfie_segmentation.tflite",
];

const scope = new URL("./", self.location.href);

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(SHELL_CACHE);
    await cache.addAll([...SHELL, ...RUNTIME].map((path) => new URL(path, scope).href));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith("edge-toolkit-shell-") && name !== SHELL_CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const { request } = event;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== scope.origin || !url.pathname.startsWith(scope.pathname)) return;
  const path = url.pathname.slice(scope.pathname.length);
  if (path.startsWith("bench/")) return;
  if (path.startsWith("models/")) {
    event.respondWith(path.endsWith("/bundle.json") ? networkFirst(request, MODEL_CACHE) : modelFile(event, url));
  } else if (path.startsWith("node_modules/")) {
    event.respondWith(cacheFirst(request));
  } else {
    event.respondWith(networkFirst(request, SHELL_CACHE));
  }
});

/** Fetched when the network answers (and cached under the URL without its query, so
 * chat.html?bundle=a and ?bundle=b are one entry); else the cached copy. */
async function networkFirst(request, cacheName) {
  const cache = await caches.open(cacheName);
  const key = new URL(request.url);
  key.search = "";
  try {
    const response = await fetch(request);
    if (response.ok) await cache.put(key.href, response.clone());
    return response;
  } catch (error) {
    const cached = await cache.match(key.href);
    if (cached) return cached;
    throw error;
  }
}

async function cacheFirst(request) {
  const cached = await caches.match(request, { ignoreSearch: true });
  if (cached) return cached;
  const response = await fetch(request);
  if (response.ok) {
    const cache = await caches.open(SHELL_CACHE);
    await cache.put(request, response.clone());
  }
  return response;
}

/** bundle.json of the folder holding `url` (cached copy first: the page has just fetched
 * it through networkFirst), or null. */
async function manifestFor(url) {
  const manifestUrl = new URL("bundle.json", url).href;
  const cache = await caches.open(MODEL_CACHE);
  let response = await cache.match(manifestUrl);
  if (!response) {
    try {
      response = await fetch(manifestUrl);
    } catch {
      return null;
    }
  }
  try {
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}

async function sha256Hex(buffer) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", buffer));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function modelFile(event, url) {
  const name = decodeURIComponent(url.pathname.slice(url.pathname.lastIndexOf("/") + 1));
  const entry = (await manifestFor(url))?.files?.[name];
  if (!entry?.sha256) return fetch(event.request);
  const key = new URL(url.href);
  key.searchParams.set("sha256", entry.sha256);
  const cache = await caches.open(MODEL_CACHE);
  const cached = await cache.match(key.href);
  if (cached) return cached;
  const response = await fetch(event.request);
  if (!response.ok || !response.body) return response;
  const [toPage, toCheck] = response.body.tee();
  const init = { status: response.status, statusText: response.statusText, headers: response.headers };
  event.waitUntil((async () => {
    const buffer = await new Response(toCheck).arrayBuffer();
    if (buffer.byteLength !== entry.bytes || (await sha256Hex(buffer)) !== entry.sha256) return;
    for (const old of await cache.keys()) {
      const oldUrl = new URL(old.url);
      oldUrl.searchParams.delete("sha256");
      if (oldUrl.href === url.href) await cache.delete(old);
    }
    await cache.put(key.href, new Response(buffer, init));
  })());
  return new Response(toPage, init);
}
