// The operator's page: polls /v1/status and /v1/results, and calls mark / teach / switch with the
// operator's bearer token (kept in this tab's sessionStorage only). No framework, no build step.
"use strict";
const LATEST = 24, QUEUE = 48;
const state = { last: 0, results: new Map(), status: null, busy: false, proposal: null, opBundle: null };
const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem("patchcore-token") || "";
const reviewer = () => sessionStorage.getItem("patchcore-reviewer") || "";

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers.Authorization = "Bearer " + token();
  const res = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) throw new Error((body && body.error) || res.status + " " + res.statusText);
  return body;
}

function say(text, isError) {
  const m = $("message");
  m.hidden = !text;
  m.textContent = text || "";
  m.className = "note" + (isError ? " error" : "");
}

function fmt(v, digits = 3) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }

function card(r, withMark) {
  const div = document.createElement("div");
  div.className = "card " + (r.verdict || "") + (r.marked ? " marked" : "");
  div.dataset.id = r.id;
  if (r.thumb) {
    const img = document.createElement("img");
    img.src = r.thumb; img.alt = "overlay of " + (r.file || r.id); img.loading = "lazy";
    if (r.overlay) {  // the full-size overlay in a new tab
      const a = document.createElement("a");
      a.href = r.overlay; a.target = "_blank"; a.rel = "noopener"; a.title = "open the full-size overlay";
      a.appendChild(img); div.appendChild(a);
    } else div.appendChild(img);
  } else {
    const n = document.createElement("div"); n.className = "noimg"; n.textContent = "no image"; div.appendChild(n);
  }
  const meta = document.createElement("div"); meta.className = "meta";
  const v = document.createElement("span"); v.className = "verdict " + (r.verdict || "");
  v.textContent = r.verdict === "ng" ? "defective" : (r.verdict || "score");
  const s = document.createElement("span"); s.className = "mono score";
  s.textContent = fmt(r.normalised); s.title = "normalised score (0.5 = threshold); raw " + fmt(r.score, 4);
  const tag = document.createElement("span"); tag.className = "tag";
  tag.textContent = r.taught ? "taught" : r.marked ? "marked" : r.source;
  tag.title = r.source === "watch" ? "from the watched folder" : "posted to /v1/predict";
  meta.append(v, tag, s); div.appendChild(meta);
  const name = document.createElement("div"); name.className = "name";
  name.textContent = (r.file || r.id) + (r.error ? " — " + r.error : "");
  name.title = name.textContent;
  div.appendChild(name);
  if (r.review) {
    const rv = document.createElement("div"); rv.className = "reviewed";
    rv.textContent = `reviewed ${r.review === "ng" ? "NG (missed defect)" : r.review === "good" ? "good (false call)" : "confirmed"} by ${r.reviewer}`;
    div.appendChild(rv);
  }
  const canReview = state.status && state.status.actions && reviewer() && (r.verdict === "ok" || r.verdict === "ng");
  if (!withMark && canReview) {  // reviews both ways: confirm the call, or an OK call is a missed defect
    const ok = document.createElement("button"); ok.className = "review-confirm"; ok.textContent = "confirm";
    ok.title = "the call is right (" + r.verdict + ")"; ok.onclick = () => review(r, "confirm");
    div.appendChild(ok);
    if (r.verdict === "ok") {
      const ng = document.createElement("button"); ng.className = "review-ng"; ng.textContent = "NG: missed defect";
      ng.title = "this part is defective: kept as a known NG part, a teach must keep it NG"; ng.onclick = () => review(r, "ng");
      div.appendChild(ng);
    }
  }
  if (withMark) {
    const b = document.createElement("button");
    b.className = "mark";
    b.textContent = r.taught ? "taught" : r.marked ? "marked good ✓ (undo)" : "mark good";
    b.disabled = r.taught || !r.can_mark || !(state.status && state.status.actions);
    b.onclick = () => mark(r);
    div.appendChild(b);
  }
  return div;
}

async function mark(r) {
  try {
    const got = await api(`/v1/results/${encodeURIComponent(r.id)}/good`, { method: r.marked ? "DELETE" : "POST" });
    state.results.set(r.id, Object.assign(r, got));
    say("");
    render();
    refreshStatus();
  } catch (e) { say("mark: " + e.message, true); }
}

async function review(r, kind) {
  try {
    const got = await api(`/v1/results/${encodeURIComponent(r.id)}/review`, { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ review: kind, reviewer: reviewer() }) });
    state.results.set(r.id, Object.assign(r, { review: got.review, reviewer: got.reviewer }));
    say(`reviewed ${r.file || r.id}: ${got.truth.toUpperCase()} (by ${got.reviewer}, ${got.time})`);
    render();
    refreshStatus();
  } catch (e) { say("review: " + e.message, true); }
}

function checkText(c) {
  if (!c) return "";
  const good = c.marked.filter((v) => v.verdict === "ok").length;
  const ng = c.known_ng.length - c.turned_ok.length;
  return `; marked parts ok with it: ${good} of ${c.marked.length}; parts reviewed NG still NG: ${ng} of ${c.known_ng.length}` +
    (c.turned_ok.length ? ` — REFUSED: it would call ${c.turned_ok.length} reviewed-NG part(s) good` : "");
}

function drawHistogram(scores, threshold, proposed = null) {
  const c = $("histogram"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  g.fillStyle = "#888"; g.font = "11px sans-serif";
  if (!scores.length) { g.fillText("no scores yet", 10, 60); return; }
  let lo = Math.min(...scores), hi = Math.max(...scores);
  if (threshold !== null) { lo = Math.min(lo, threshold); hi = Math.max(hi, threshold); }
  if (proposed !== null) { lo = Math.min(lo, proposed); hi = Math.max(hi, proposed); }
  const pad = (hi - lo) * 0.05 || 1e-3; lo -= pad; hi += pad;
  const bins = 24, counts = new Array(bins).fill(0);
  for (const s of scores) counts[Math.min(bins - 1, Math.floor((s - lo) / (hi - lo) * bins))]++;
  const top = Math.max(...counts), w = c.width / bins, h = c.height - 16;
  counts.forEach((n, i) => {
    const mid = lo + (i + 0.5) * (hi - lo) / bins;
    g.fillStyle = threshold !== null && mid >= threshold ? "#c62828" : "#1f8a4c";
    const bh = n ? Math.max(2, n / top * (h - 4)) : 0;
    g.fillRect(i * w + 1, h - bh, w - 2, bh);
  });
  g.fillStyle = "#666";
  g.fillText(lo.toPrecision(3), 2, c.height - 3);
  const hiText = hi.toPrecision(3);
  g.fillText(hiText, c.width - g.measureText(hiText).width - 2, c.height - 3);
  if (threshold !== null) {
    const x = (threshold - lo) / (hi - lo) * c.width;
    g.strokeStyle = "#c62828"; g.lineWidth = 2; g.setLineDash([4, 3]);
    g.beginPath(); g.moveTo(x, 0); g.lineTo(x, h); g.stroke(); g.setLineDash([]);
  }
  if (proposed !== null) {  // the previewed operating point, in blue
    const x = (proposed - lo) / (hi - lo) * c.width;
    g.strokeStyle = "#1565c0"; g.lineWidth = 2; g.setLineDash([2, 2]);
    g.beginPath(); g.moveTo(x, 0); g.lineTo(x, h); g.stroke(); g.setLineDash([]);
  }
}

function pct(v) { return v === null || v === undefined ? "?" : (100 * v).toPrecision(3) + "%"; }

function expectedText(e) {
  if (!e) return "";
  const fc = `false calls ${pct(e.false_calls)} (95% ${pct(e.false_calls_interval[0])}–${pct(e.false_calls_interval[1])}, ${e.n_good} good)`;
  const cr = e.catch_rate === null ? "catch rate unknown" :
    `catch rate ${pct(e.catch_rate)} (95% ${pct(e.catch_rate_interval[0])}–${pct(e.catch_rate_interval[1])}, ${e.n_defects} defects)`;
  return fc + ", " + cr;
}

async function refreshOperatingPoint() {
  try {
    const v = await api("/v1/threshold");
    $("op-now").textContent = `now: threshold ${fmt(v.threshold, 4)}` + (v.policy ? ` (${v.policy})` : " (no policy recorded)") +
      `, rule ${v.rule_text}; ` + (expectedText(v.expected) || (v.notes || []).join("; ")) +
      `; recent parts: ${v.recent.ng} of ${v.recent.parts} called defective`;
  } catch (e) { $("op-now").textContent = "operating point: " + e.message; }
}

async function previewPolicy(ev) {
  if (ev) ev.preventDefault();
  const policy = $("op-policy").value.trim();
  if (!policy) { state.proposal = null; $("op-preview").textContent = ""; $("op-apply").disabled = true; return; }
  try {
    const v = await api("/v1/threshold?policy=" + encodeURIComponent(policy));
    const p = v.proposed, r = p.recent;
    state.proposal = p;
    $("op-preview").textContent = `${p.policy}: threshold ${fmt(p.threshold, 4)}; expected ${expectedText(p.expected)}; ` +
      `the last ${r.parts} parts: ${v.recent.ng} defective now, ${r.ng} with it (${r.changed.length} would change)`;
    $("op-preview").className = "mono";
    $("op-apply").disabled = !(state.status && state.status.actions);
  } catch (e) {
    state.proposal = null;
    $("op-preview").textContent = e.message; $("op-preview").className = "mono error"; $("op-apply").disabled = true;
  }
  if (state.status) renderStatus(state.status);
}

async function applyPolicy() {
  if (!state.proposal) return;
  try {
    const got = await api("/v1/threshold", { method: "POST", headers: { "Content-Type": "application/json" },
                                             body: JSON.stringify({ policy: state.proposal.policy }) });
    say(`now serving ${got.bundle} at ${got.threshold.after.policy}: threshold ${fmt(got.threshold.before.value, 4)} → ${fmt(got.threshold.after.value, 4)} (was ${got.previous})`);
    state.proposal = null; $("op-preview").textContent = ""; $("op-apply").disabled = true;
    refreshStatus();
  } catch (e) { say("apply: " + e.message, true); }
}

function render() {
  const all = [...state.results.values()].sort((a, b) => b.seq - a.seq);
  const latest = $("latest"), queue = $("queue");
  latest.replaceChildren(...all.slice(0, LATEST).map((r) => card(r, false)));
  const review = all.filter((r) => r.verdict === "ng" && !r.taught).slice(0, QUEUE);  // taught parts leave
  queue.replaceChildren(...review.map((r) => card(r, true)));
  if (!review.length) { const p = document.createElement("p"); p.className = "empty"; p.textContent = "nothing to review"; queue.appendChild(p); }
  if (!all.length) { const p = document.createElement("p"); p.className = "empty"; p.textContent = "no results yet"; latest.appendChild(p); }
}

function syncFlags(s) {
  // marks and teaches change results already on the page: take their flags from the status
  const marked = new Set(s.marked_ids || []), taught = new Set(s.taught_ids || []);
  let changed = false;
  for (const r of state.results.values()) {
    const m = marked.has(r.id), t = taught.has(r.id);
    if (r.marked !== (m || t) || r.taught !== t) { r.marked = m || t; r.taught = t; changed = true; }
  }
  if (changed) render();
}

function renderStatus(s) {
  state.status = s;
  syncFlags(s);
  $("bundle").textContent = s.bundle_name + " · " + s.bundle;
  const h = $("health");
  h.textContent = s.health.ok ? "healthy" : "unhealthy: " + (s.health.reason || s.health.watch || "");
  h.className = "pill " + (s.health.ok ? "ok" : "bad");
  for (const k of ["ok", "ng", "error"]) $("n-" + k).textContent = s.counts[k];
  $("drift").textContent = s.drift_share === null ? "–" : (100 * s.drift_share).toFixed(0) + "%";
  const alarms = Object.entries(s.drift || {}).filter(([, d]) => d.alarm);
  $("drift-alarm").hidden = !alarms.length;
  $("drift-alarm").textContent = alarms.map(([p, d]) => `DRIFT${p ? " on product " + p : ""}: ${(100 * d.share).toFixed(0)}% of the last ${d.parts} parts score above the calibration's 95% quantile (alarm at ${(100 * d.level).toFixed(0)}%)`).join(" · ");
  $("products").textContent = (s.products || []).filter((p) => p.product !== null).map((p) =>
    p.product + (p.loaded ? "" : " (not loaded)") + (p.product === s.product ? " *" : "")).join(" · ");
  $("threshold").textContent = fmt(s.threshold, 4);
  const proposed = state.proposal ? state.proposal.threshold : null;
  drawHistogram(s.recent_scores, s.threshold, proposed);
  $("proposed-key").hidden = proposed === null;
  $("proposed").textContent = fmt(proposed, 4);
  const opKey = s.bundle + ":" + (s.counts.ok + s.counts.ng + s.counts.error);  // a new bundle or new parts
  if (state.opBundle !== opKey) { state.opBundle = opKey; refreshOperatingPoint(); }
  $("actions-off").hidden = s.actions;
  $("n-marked").textContent = s.marked;
  const t = s.teach, p = $("teach-progress");
  $("teach").disabled = !s.actions || !s.marked || t.state === "running";
  $("switch").disabled = !s.actions || t.state !== "done" || !!(t.check && t.check.turned_ok.length);
  $("rollback").disabled = !s.actions || !s.previous;
  $("rollback").textContent = s.previous ? "Roll back to " + s.previous : "Roll back";
  p.hidden = t.state !== "running";
  if (t.state === "running") { p.max = t.total || 1; p.value = t.done; }
  $("teach-state").textContent =
    t.state === "running" ? `teaching ${t.images} image(s): ${t.stage} ${t.done}/${t.total}` :
    t.state === "done" ? `taught ${t.images} image(s) in ${fmt(t.seconds, 1)} s → ${t.candidate}; threshold ${fmt(t.result.threshold.before, 4)} → ${fmt(t.result.threshold.after, 4)}${checkText(t.check)}` :
    t.state === "failed" ? "teach failed: " + t.error :
    t.state === "switched" ? "switched to " + (t.result && t.result.id) : "";
  const warn = t.result && t.result.warnings && t.result.warnings.length && t.state === "done";
  if (warn && !$("message").textContent) say("check before switching: " + t.result.warnings.join("; "), true);
  const lin = $("lineage");
  lin.replaceChildren(...(s.lineage.length ? s.lineage : ["(the original fit: no updates yet)"]).map((line) => {
    const li = document.createElement("li"); li.textContent = line; return li; }));
}

async function refreshStatus() {
  try { renderStatus(await api("/v1/status")); } catch (e) { $("health").textContent = "server unreachable"; $("health").className = "pill bad"; }
}

async function refreshResults() {
  try {
    const got = await api(`/v1/results?after=${state.last}`);
    for (const r of got.results) state.results.set(r.id, r);
    state.last = got.last;
    const keep = [...state.results.values()].sort((a, b) => b.seq - a.seq).slice(0, 200);
    state.results = new Map(keep.map((r) => [r.id, r]));
    if (got.results.length) render();
  } catch (e) { /* shown by the status poll */ }
}

async function teach() {
  try { renderStatus(Object.assign(state.status, { teach: await api("/v1/teach", { method: "POST" }) })); say(""); }
  catch (e) { say("teach: " + e.message, true); }
}

async function switchBundle() {
  try {
    const got = await api("/v1/switch", { method: "POST" });
    say(`now serving ${got.bundle} (was ${got.previous})`);
    refreshStatus();
  } catch (e) { say("switch: " + e.message, true); }
}

async function rollBack() {
  try {
    const got = await api("/v1/rollback", { method: "POST" });
    say(`rolled back: now serving ${got.bundle} (was ${got.previous})`);
    refreshStatus();
  } catch (e) { say("roll back: " + e.message, true); }
}

async function tick() {
  if (state.busy) return;
  state.busy = true;
  try { await Promise.all([refreshStatus(), refreshResults()]); } finally { state.busy = false; }
}

window.addEventListener("DOMContentLoaded", () => {
  $("token").value = token();
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault(); sessionStorage.setItem("patchcore-token", $("token").value.trim()); say("token set for this tab"); render();
  });
  $("reviewer").value = reviewer();
  $("reviewer").addEventListener("change", () => { sessionStorage.setItem("patchcore-reviewer", $("reviewer").value.trim()); render(); });
  $("teach").onclick = teach;
  $("switch").onclick = switchBundle;
  $("rollback").onclick = rollBack;
  $("op-form").addEventListener("submit", previewPolicy);
  $("op-apply").onclick = applyPolicy;
  render();
  tick();
  setInterval(tick, 1000);
});
