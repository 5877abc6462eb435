// The device bench page: fetches the job the bench server prepared (bench/job.json),
// runs it (lib/protocol.js), shows the summary and posts the raw results back. Any
// failure is shown and posted as {error}, so the CLI ends with that message instead of
// waiting.

import { fetchBytes } from "./lib/bundle.js";
import { runJob } from "./lib/protocol.js";
import { summarize } from "./lib/stats.js";
import { fmt, showError } from "./lib/ui.js";

const status = document.getElementById("status");
const say = (text) => { status.textContent = text; };

async function post(body) {
  const response = await fetch("bench/results", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (!response.ok) throw new Error(`the bench server refused the results: HTTP ${response.status} ${await response.text()}`);
}

function show(results) {
  const table = document.getElementById("results");
  const body = table.querySelector("tbody");
  for (const m of results.models) {
    const s = summarize(m.samples_ms);
    const row = document.createElement("tr");
    const cells = [m.name, m.backend, fmt(m.load_seconds * 1000, 0), fmt(m.first_inference_ms, 1),
      fmt(s.p50_ms, 2), fmt(s.p90_ms, 2), fmt(s.p99_ms, 2), m.llm ? fmt(1000 / s.p50_ms, 1) : "-"];
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      row.append(td);
    }
    body.append(row);
  }
  table.hidden = false;
}

async function main() {
  let job;
  try {
    job = JSON.parse(new TextDecoder().decode(await fetchBytes("bench/job.json")));
  } catch (error) {
    showError(`no bench job here (${error.message}): start one with \`toolkit bench --device browser|phone FILE\``);
    return;
  }
  try {
    const results = await runJob(job, say);
    say("sending the results");
    await post(results);
    show(results);
    say("done: the results are in the terminal that started the bench");
    document.body.dataset.state = "done";
  } catch (error) {
    const message = String(error?.message ?? error);
    showError(message);
    say("failed");
    document.body.dataset.state = "failed";
    await post({ schema: "edge-toolkit-browser-bench", version: 1, job: job.id, error: message }).catch(() => {});
  }
}

main();
