// One result card per bundle on the V-MoE page: the class, the top probabilities as
// bars, the expert(s) the per-image router chose (the manifest's "experts" output) or
// "not exported" for a dense model or a bundle without it, and ms per image.

import { softmax } from "./demo_vision.js";
import { fmt } from "./ui.js";

const TOP = 5;

/** The labels of the bundle's classes (postprocessing.labels), else "class i". */
export function labelsOf(manifest, classes) {
  const labels = manifest.postprocessing?.labels;
  return Array.isArray(labels) && labels.length === classes ? labels : Array.from({ length: classes }, (_, i) => `class ${i}`);
}

export function emptyCard(container, title, backend) {
  const card = document.createElement("div");
  card.className = "card";
  const heading = document.createElement("h3");
  heading.textContent = title;
  const small = document.createElement("small");
  small.textContent = ` ${backend}`;
  heading.append(small);
  const body = document.createElement("div");
  card.append(heading, body);
  container.append(card);
  return body;
}

/** Fills `body` with a run's result; {label, probabilities, experts} for the page. */
export function showResult(body, manifest, { logits, experts, ms, check }) {
  const probabilities = softmax(Array.from(logits, Number));
  const labels = labelsOf(manifest, probabilities.length);
  const order = probabilities.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]);
  const best = order[0][1];
  body.innerHTML = "";
  const title = document.createElement("p");
  title.innerHTML = "<b></b>";
  title.firstChild.textContent = labels[best];
  title.append(` ${fmt(100 * probabilities[best], 1)}%`);
  const table = document.createElement("table");
  table.className = "probs";
  for (const [p, i] of order.slice(0, TOP)) {
    const row = table.insertRow();
    row.insertCell().textContent = labels[i];
    row.insertCell().textContent = fmt(100 * p, 1);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    row.insertCell().append(bar);
  }
  const routing = document.createElement("p");
  routing.className = "expert";
  const total = manifest.experts?.num_experts;
  routing.textContent = experts
    ? `router chose expert ${Array.from(experts, Number).join(", ")}${total ? ` of ${total}` : ""}`
    : "expert choice: not exported";
  const metrics = document.createElement("div");
  metrics.className = "metrics";
  metrics.innerHTML = "<span><b></b> ms/image</span>";
  metrics.querySelector("b").textContent = fmt(ms, 2);
  body.append(title, table, routing, metrics);
  if (check) {
    const line = document.createElement("p");
    line.className = check.matches ? "ok" : "bad";
    line.textContent = check.text;
    body.append(line);
  }
  return { label: labels[best], probabilities };
}
