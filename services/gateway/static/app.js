// netdiag web UI: the form, live progress over SSE, the result (verdict, packet-path graph,
// hop details, findings, assumptions), history with permalinks (#/diagnoses/<id>), exports.
import { arrange, buildModel, drawGraph, focusNode, toSvg } from "./graph.js";
import { attachPicker, clusterEntries, recentEntries } from "./picker.js";
import { validateForm, validateIp } from "./validate.js";

const API = "/api/v1";
const HISTORY_PAGE = 20;
const KNOWN_KEY = "netdiag.known-addresses";
const DNS_KEY = "netdiag.dns-ip";
const CLUSTER_RETRY_MS = 2000;  // until the topology stage has published its first summary
const CLUSTER_STALE_MS = 30_000;  // opening a picker refreshes an older summary
const VERDICT_MARK = { REACHABLE: "✔", UNREACHABLE: "✖", AMBIGUOUS: "◐", UNDETERMINED: "?", FAILED: "✖" };
const SEVERITY_ORDER = { error: 0, warning: 1, info: 2 };
const STAGE_ORDER = ["topology", "collector", "cloud", "simulator", "gateway-store", "gateway"];
const PACKET_FIELDS = ["src", "sport", "dst", "dport", "protocol", "mark", "iif", "oif"];

const $ = (id) => document.getElementById(id);
const state = { diagnosis: null, model: null, cy: null, selected: null, follow: null, historyNext: null,
                cluster: null, clusterAt: 0, dnsShown: null, entries: { src: [], dst: [] }, pickers: [], codes: new Map() };

// ------------------------------------------------------------------ DOM helper

/** h("li", {class: "x", onclick: fn}, child, "text", ...) — text is always set as text, never HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
const badge = (text, cls = text) => h("span", { class: `badge b-${cls}` }, text);
const ms = (v) => (v === null || v === undefined ? "" : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Number(v).toFixed(1)} ms`);
const describe = (r) => `${r.protocol} ${r.src} → ${r.dst.includes(":") ? `[${r.dst}]` : r.dst}:${r.port}`;

async function api(path, init) {
  const resp = await fetch(API + path, init);
  let body = null;
  try { body = await resp.json(); } catch { /* non-JSON error page */ }
  return { status: resp.status, ok: resp.ok, body };
}

// ------------------------------------------------------------------ form

function showFieldErrors(errors) {
  for (const name of ["src", "dst", "port", "protocol", "collect-timeout"]) {
    const msg = errors[name] || "";
    $(`${name}-error`).textContent = msg;
    const input = $(name);
    if (msg) input.setAttribute("aria-invalid", "true"); else input.removeAttribute("aria-invalid");
  }
}

function formValues() {
  return { src: $("src").value.trim(), dst: $("dst").value.trim(), port: $("port").value.trim(),
           protocol: $("protocol").value, collect_timeout_s: $("collect-timeout").value.trim(), check_reply: $("check-reply").checked,
           live: $("live").checked };
}

const API_FIELD = { src: "src", dst: "dst", port: "port", protocol: "protocol", "options.collect_timeout_s": "collect-timeout" };

async function submitForm(event) {
  event.preventDefault();
  const values = formValues();
  const { errors, request } = validateForm(values);
  showFieldErrors(errors);
  $("form-error").hidden = true;
  const firstBad = Object.keys(errors)[0];
  if (firstBad) { $(firstBad).focus(); return; }
  $("submit").disabled = true;
  try {
    const res = await api("/diagnoses", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request) });
    if (res.status === 202) {
      location.hash = `#/diagnoses/${res.body.id}`;
      return;
    }
    if (res.status === 422 && res.body && res.body.fields) {
      // The API is the judge: show its per-field messages where the field is.
      const serverErrors = {};
      for (const f of res.body.fields) serverErrors[API_FIELD[f.field] || "form"] = f.message;
      showFieldErrors(serverErrors);
      if (serverErrors.form) formError(res.body.error);
      return;
    }
    formError((res.body && res.body.error) || `the gateway answered ${res.status}`);
  } catch (err) {
    formError(`cannot reach the gateway: ${err.message}`);
  } finally {
    $("submit").disabled = false;
  }
}

function formError(text) {
  $("form-error").textContent = text;
  $("form-error").hidden = false;
}

function fillForm(request) {
  $("src").value = request.src;
  $("dst").value = request.dst;
  $("port").value = request.port;
  $("protocol").value = request.protocol;
  if (request.options) {
    $("collect-timeout").value = request.options.collect_timeout_s;
    $("check-reply").checked = request.options.check_reply;
    $("live").checked = Boolean(request.options.live);
  }
  showFieldErrors({});
}

function dnsPreset() {
  const ip = $("dns-ip").value.trim();
  const err = validateIp(ip);
  $("dns-ip-error").textContent = err ? `kube-dns ClusterIP: ${err}` : "";
  if (err) { $("dns-ip").setAttribute("aria-invalid", "true"); $("dns-ip").focus(); return; }
  $("dns-ip").removeAttribute("aria-invalid");
  localStorage.setItem(DNS_KEY, ip);
  $("dst").value = ip;
  $("port").value = "53";
  $("protocol").value = "udp";
  showFieldErrors({});
  $(validateIp($("src").value.trim()) ? "src" : "submit").focus();
}

// ------------------------------------------------------------------ pickers: cluster summary + past addresses

/** The topology stage's cluster summary; retried until one is published, refreshed when stale. */
async function loadCluster() {
  clearTimeout(state.clusterRetry);
  const res = await api("/cluster").catch((err) => ({ ok: false, status: 0, body: { error: err.message } }));
  if (res.ok) {
    state.cluster = res.body;
    state.clusterAt = Date.now();
    state.entries = { src: clusterEntries(res.body, "src"), dst: clusterEntries(res.body, "dst") };
    for (const picker of state.pickers) picker.refresh();
  } else if (!state.cluster) {
    state.clusterRetry = setTimeout(loadCluster, CLUSTER_RETRY_MS);
  }
  showCluster(res);
}

function showCluster(res) {
  const c = state.cluster;
  if (!c) {
    $("cluster-status").textContent = `No cluster model yet (${(res.body && res.body.error) || `the gateway answered ${res.status}`}): `
      + "the pickers offer addresses seen in past diagnoses; any IP can be typed.";
    $("dns-origin").textContent = "(Kubernetes default: no cluster model yet)";
    return;
  }
  const n = c.counts;
  const cut = c.truncated ? `; only the first ${Math.max(c.pods.length, c.services.length, c.nodes.length)} of each (by namespace/name) are offered` : "";
  $("cluster-status").textContent = `Pick from ${n.pods} pods, ${n.services} Services and ${n.nodes} nodes `
    + `(${c.source}, as of ${new Date(c.generated_at).toLocaleTimeString()})${cut}, or type any IP.`;
  if (c.dns.length) {
    if (c.dns[0] !== state.dnsShown) $("dns-ip").value = state.dnsShown = c.dns[0];  // an edit survives refreshes
    $("dns-origin").textContent = "(from the cluster model)";
  } else {
    $("dns-origin").textContent = "(the cluster model has no DNS Service)";
  }
}

function pickerEntries(role) {
  const offered = state.entries[role];
  return [...offered, ...recentEntries(knownAddresses(), offered)];
}

function clearFieldError(name) {
  $(`${name}-error`).textContent = "";
  $(name).removeAttribute("aria-invalid");
}

/** A chosen Service (or NodePort) also sets the port and protocol it was listed with. */
function chosen(role, entry) {
  clearFieldError(role);
  if (entry.port) {
    $("port").value = String(entry.port);
    $("protocol").value = entry.protocol;
    clearFieldError("port");
  }
}

function refreshStaleCluster() {
  if (state.cluster && Date.now() - state.clusterAt > CLUSTER_STALE_MS) loadCluster();
}

// ------------------------------------------------------------------ known addresses (past diagnoses)

// Per cluster (the summary's source): addresses of another cluster's diagnoses are no suggestion here.
const knownKey = (source) => `${KNOWN_KEY}:${source || ""}`;

function knownAddresses() {
  try { return JSON.parse(localStorage.getItem(knownKey(state.cluster && state.cluster.source))) || {}; } catch { return {}; }
}

/** Remember addresses seen in diagnoses (hops name them), offered as the inputs' datalist. */
function learnAddresses(source, entries) {
  let known;
  try { known = JSON.parse(localStorage.getItem(knownKey(source))) || {}; } catch { known = {}; }
  let changed = false;
  for (const [addr, label] of entries) {
    if (!addr || (addr in known && (known[addr] || !label))) continue;
    known[addr] = label || "";
    changed = true;
  }
  if (changed) localStorage.setItem(knownKey(source), JSON.stringify(known));
}

function learnFromDiagnosis(d) {
  const entries = [[d.request.src, ""], [d.request.dst, ""]];
  for (const p of (d.result && d.result.paths) || []) for (const hop of p.hops) if (hop.address) entries.push([hop.address, `${hop.kind} ${hop.name}`]);
  learnAddresses(d.source, entries);
}

// ------------------------------------------------------------------ progress

function resetProgress(text, { open = true } = {}) {
  $("progress").hidden = false;
  $("progress-box").open = open;  // a finished run's stages fold away under their one-line status
  $("stage-rows").replaceChildren();
  $("progress-status").textContent = text;
}

function stageRow(stage) {
  let row = document.querySelector(`#stage-rows tr[data-stage="${CSS.escape(stage)}"]`);
  if (!row) {
    row = h("tr", { "data-stage": stage }, h("th", { scope: "row" }, stage), h("td", { class: "state" }), h("td", { class: "time" }), h("td", { class: "detail" }, h("ul")));
    const rows = [...$("stage-rows").children, row];
    const rank = (r) => { const i = STAGE_ORDER.indexOf(r.dataset.stage); return i < 0 ? 99 : i; };
    $("stage-rows").replaceChildren(...rows.sort((a, b) => rank(a) - rank(b)));
  }
  return row;
}

function onProgress(ev) {
  const row = stageRow(ev.stage);
  if (ev.state !== "progress") row.querySelector(".state").replaceChildren(badge(ev.state));
  if (ev.elapsed_ms !== null && ev.elapsed_ms !== undefined) row.querySelector(".time").textContent = ms(ev.elapsed_ms);
  const d = ev.detail || {};
  const note = ev.message || (d.node ? `${d.node}${d.ms !== undefined ? ` in ${ms(d.ms)}` : ""}` : "");
  if (note) row.querySelector("ul").append(h("li", { class: d.ok === false ? "error-text" : null }, note));
  $("progress-status").textContent = ev.state === "result" ? "Completed." : `Running: ${ev.stage} ${ev.state}${ev.message ? ` — ${ev.message}` : ""}`;
}

function showTimings(d) {
  resetProgress(d.status === "failed" ? `Failed: ${d.error || "unknown error"}` : `Completed${d.completed_at ? ` in ${ms(new Date(d.completed_at) - new Date(d.created_at))}` : ""}.`,
                { open: false });
  for (const [stage, t] of Object.entries(d.timings_ms || {})) {
    const row = stageRow(stage);
    row.querySelector(".state").replaceChildren(badge("done"));
    row.querySelector(".time").textContent = ms(t);
  }
}

function stopFollowing() {
  if (state.follow) state.follow.close();
  state.follow = null;
}

/** Live progress over SSE until the result event; if the stream breaks, poll instead. */
function follow(id) {
  stopFollowing();
  resetProgress("Queued…");
  const es = new EventSource(`${API}/diagnoses/${encodeURIComponent(id)}/events`);
  state.follow = es;
  es.addEventListener("progress", (e) => onProgress(JSON.parse(e.data)));
  es.addEventListener("result", (e) => {
    stopFollowing();
    const d = JSON.parse(e.data);
    // The result is stored, so every stage has finished even if its "done" came after.
    for (const cell of document.querySelectorAll("#stage-rows .state")) if (cell.textContent === "started") cell.replaceChildren(badge("done"));
    $("progress-status").textContent = d.status === "failed" ? `Failed: ${d.error}` : "Completed.";
    $("progress-box").open = false;
    showResult(d);
    loadHistory(true);
  });
  es.onerror = () => {
    if (state.follow !== es) return;
    stopFollowing();
    $("progress-status").textContent = "Live progress interrupted; checking for the result…";
    poll(id);
  };
}

async function poll(id) {
  for (let i = 0; i < 120 && location.hash === `#/diagnoses/${id}`; i++) {
    const res = await api(`/diagnoses/${encodeURIComponent(id)}`).catch(() => null);
    if (res && res.ok && res.body.status !== "queued") { $("progress-box").open = false; showResult(res.body); return; }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// ------------------------------------------------------------------ result

/** The finding-code catalogue (GET /api/v1/codes): which codes are ABORT-class. */
async function loadCodes() {
  const res = await api("/codes").catch(() => null);
  if (res && res.ok) state.codes = new Map(res.body.map((c) => [c.code, c]));
}

function showResult(d, { permalink = true } = {}) {
  state.diagnosis = d;
  $("result").hidden = false;
  const r = d.result;
  const verdict = d.status === "failed" || !r ? "FAILED" : r.verdict;
  $("verdict").className = `verdict card v-${verdict}`;
  $("verdict-word").textContent = `${VERDICT_MARK[verdict] || ""} ${verdict}`;
  $("verdict-request").textContent = describe(d.request);
  $("verdict-summary").textContent = r ? r.summary : `The diagnosis failed: ${d.error || "unknown error"}`;
  $("permalink").hidden = !permalink;
  $("permalink").href = `${location.origin}${location.pathname}#/diagnoses/${d.id}`;
  fillForm(d.request);
  showFailure(r);
  // a failed run has no paths, findings or assumptions: its reason (above) is the answer, not empty panels
  for (const grid of document.querySelectorAll("#result .result-grid")) grid.hidden = !r;
  const result = r || { verdict, summary: "", paths: [], findings: [], assumptions: [] };
  const errors = result.findings.filter((f) => f.severity === "error").length;
  const mattering = result.assumptions.filter((a) => a.could_change_outcome).length;
  $("verdict-counts").textContent = [
    result.counts ? result.counts.text : "no path simulated",  // counted once, by the simulator (as the CLI shows it)
    `${result.findings.length} finding(s)${errors ? `, ${errors} error(s)` : ""}`,
    `${result.assumptions.length} assumption(s)${mattering ? `, ${mattering} could change the outcome` : ""}`,
  ].join(" · ");
  $("verdict-counts").hidden = !r;  // a failed run counts nothing: its reason says it all
  learnFromDiagnosis(d);
  renderGraph(result);
  renderFindings(result);
  renderAssumptions(result);
  renderLive(result);
  markHistory(d.id);
  $("verdict-title").focus({ preventScroll: true });
  // verdict, first failing hop and fix at the top of the window, whatever the form above takes
  $("result").scrollIntoView({ block: "start" });
}

/** The first failing hop and its fix, as the CLI prints them (the result's first_failure). */
function showFailure(r) {
  const ff = r && r.first_failure;
  $("verdict-failure").hidden = !ff;
  if (!ff) return;
  $("failure-label").textContent = `${ff.label[0].toUpperCase()}${ff.label.slice(1)}:`;
  $("failure-hop").textContent = `${ff.hop_name} (${ff.hop_kind})`;
  $("failure-hop").onclick = () => {
    const id = state.model && state.model.order.find((n) => state.model.nodes.get(n).hopId === ff.hop);
    if (id) selectNode(id, { focusDetails: true });
  };
  $("failure-path").textContent = `on path ${ff.path}`;
  const because = ff.because && ff.because !== r.summary ? `Because: ${ff.because}` : "";
  $("failure-because").textContent = because;
  $("failure-because").hidden = !because;
  $("failure-fix-text").textContent = ff.fix || "";
  $("failure-fix").hidden = !ff.fix;
}

function renderGraph(result) {
  if (state.cy) state.cy.destroy();
  state.cy = null;
  state.selected = null;
  state.model = buildModel(result);
  const empty = state.model.nodes.size === 0;
  $("graph").hidden = empty;
  $("graph-empty").hidden = !empty;
  $("details").replaceChildren(h("p", { class: "hint" }, "Select a hop in the graph or the path list."));
  if (!empty) state.cy = drawGraph($("graph"), state.model, (node) => selectNode(node.id));
  renderPathList(result);
  // Open the first abnormal hop: the operator's first question is "where does it break?"
  const firstBad = state.model.order.find((id) => { const n = state.model.nodes.get(id); return !n.terminal && n.status === "error"; })
    || state.model.order.find((id) => { const n = state.model.nodes.get(id); return !n.terminal && n.status !== "ok"; });
  if (firstBad) selectNode(firstBad, { quiet: true });
}

function renderPathList(result) {
  const model = state.model;
  const groups = [];
  for (const path of result.paths) {
    const ids = model.pathNodes.get(path.id);
    groups.push(h("div", { class: "path" },
      h("h3", {}, `Path ${path.id} · ${path.direction} · `, badge(path.final), path.cause ? ` ${path.cause}` : "", path.description ? ` — ${path.description}` : ""),
      h("ol", { "aria-label": `hops of path ${path.id}` }, ids.map((id) => {
        const n = model.nodes.get(id);
        const text = n.terminal ? n.name : `${n.status === "ok" ? "" : { warning: "▲ ", error: "✖ ", unknown: "? " }[n.status]}${n.kind} ${n.name}`;
        return h("li", {}, h("button", { type: "button", class: `hop-btn s-${n.status}`, "data-node": id, "aria-pressed": "false",
                                          "aria-label": `${text}, status ${n.status}`, onclick: () => selectNode(id, { focusDetails: true }) }, text));
      }))));
  }
  $("path-list").replaceChildren(...groups);
}

function selectNode(id, { focusDetails = false, quiet = false } = {}) {
  const node = state.model.nodes.get(id);
  if (!node) return;
  state.selected = id;
  if (state.cy) focusNode(state.cy, id);
  for (const b of document.querySelectorAll(".hop-btn")) b.setAttribute("aria-pressed", String(b.dataset.node === id));
  $("details").replaceChildren(...(node.terminal ? terminalDetails(node) : hopDetails(node)));
  if (focusDetails) $("details-title").focus();
  else if (!quiet) $("details-title").scrollIntoView({ block: "nearest" });
}

function terminalDetails(node) {
  const p = node.path;
  return [h("div", { class: "hop-head" }, h("h3", {}, `End of path ${p.id} `, badge(p.final)),
    h("dl", { class: "kv" }, h("dt", {}, "direction"), h("dd", {}, p.direction), h("dt", {}, "description"), h("dd", {}, p.description || "—"),
      h("dt", {}, "hops"), h("dd", {}, String(p.hops.length)), h("dt", {}, "decided by"), h("dd", {}, p.cause || "—"))),
    ...findingLinks(state.diagnosis.result.findings.filter((f) => f.code === p.cause))];
}

function hopDetails(node) {
  const findings = ((state.diagnosis.result && state.diagnosis.result.findings) || []).filter((f) => f.hop === node.hopId);
  const head = h("div", { class: "hop-head" },
    h("h3", {}, `${node.kind} ${node.name} `, badge(node.status)),
    h("dl", { class: "kv" }, h("dt", {}, "hop id"), h("dd", {}, node.hopId),
      node.address ? [h("dt", {}, "address"), h("dd", {}, node.address)] : null,
      node.occurrences[0].hop.node ? [h("dt", {}, "node"), h("dd", {}, node.occurrences[0].hop.node)] : null));
  // Paths sharing this hop usually saw the same steps; show each distinct list once.
  const groups = new Map();
  for (const { path, hop } of node.occurrences) {
    const key = JSON.stringify(hop.steps);
    if (!groups.has(key)) groups.set(key, { paths: [], steps: hop.steps });
    groups.get(key).paths.push(path.id);
  }
  const occ = [...groups.values()].map((g) => h("div", { class: "occurrence" },
    h("h4", {}, `Steps on path ${g.paths.join(", ")}`),
    g.steps.length ? h("ol", { class: "steps" }, g.steps.map(stepItem)) : h("p", { class: "empty" }, "no steps recorded at this hop")));
  return [head, ...findingLinks(findings), ...occ];
}

function findingLinks(findings) {
  if (!findings.length) return [];
  return [h("h4", {}, "Findings at this hop"), h("ul", { class: "findings compact" }, findings.map((f) => h("li", { class: `sev-${f.severity}` },
    h("div", { class: "f-head" }, badge(f.severity), h("span", { class: "f-code" }, f.code)),
    h("p", { class: "f-msg" }, f.message), h("p", { class: "f-fix" }, h("strong", {}, "Fix: "), f.suggestion),
    h("button", { type: "button", class: "link", onclick: () => highlightFinding(f) }, "show in the findings list"))))];
}

function stepItem(step) {
  // an exported result from before typed steps (imported from a file) has an `evidence` dict instead
  const info = step.info || { kind: step.kind, legacy_evidence: step.evidence && Object.keys(step.evidence).length ? step.evidence : null };
  return h("li", { class: `a-${step.action}` },
    h("div", { class: "step-head" }, h("span", { class: "step-kind" }, step.kind.replace("_", " ")), badge(step.action),
      info.finding ? stepFinding(info.finding) : null),
    h("p", { class: "step-detail" }, step.detail),
    packetTable(step.packet_in, step.packet_out),
    evidenceList(stepFacts(info)),
    info.legacy_evidence ? h("details", { class: "evidence" }, h("summary", {}, "Stored evidence (older result)"), evidenceList(info.legacy_evidence)) : null);
}

// ------------------------------------------------------------------ typed step details (docs/steps.md)

const ruleText = (r) => `${r.table}/${r.chain} #${r.position}: ${r.rule}`;
const endpointText = (e) => (e.port === null || e.port === undefined ? e.address : e.address.includes(":") ? `[${e.address}]:${e.port}` : `${e.address}:${e.port}`);

/** How a kind's detail reads: [label, value] pairs for the fields it names (`covers`); any other
 * field of the detail is listed as it is, so a field added to the schema shows without a change here. */
const STEP_FACTS = {
  netfilter: { covers: ["decided_by", "rules"], facts: (i) => [
    ["decided by", i.decided_by && ruleText(i.decided_by)], ["rules matched", (i.rules || []).map(ruleText)]] },
  nat: { covers: ["type", "original", "translated", "reverse", "rule"], facts: (i) => [
    ["translation", i.type && `${i.type}${i.reverse ? " undone on the reply (conntrack)" : ""}`],
    ["rewrite", i.original && `${endpointText(i.original)} → ${i.translated ? endpointText(i.translated) : "(none)"}`],
    ["rule", i.rule && ruleText(i.rule)]] },
  policy: { covers: ["allowed_by", "denials", "enforced_by"], facts: (i) => [
    ["allowed by", i.allowed_by && `${i.allowed_by.policy} rule #${i.allowed_by.rule}`],
    ["denials", (i.denials || []).map((d) => `${d.policy}: ${d.reason}`)],
    ["enforced by", i.enforced_by && ruleText(i.enforced_by)]] },
  security_group: { covers: ["rule"], facts: (i) => [
    ["rule", i.rule && `${i.rule.id || "(no id)"}: ${i.rule.policy} priority ${i.rule.priority} ${i.rule.protocol} ${i.rule.port_range}`
      + (i.rule.source ? ` from ${i.rule.source}` : "") + (i.rule.destination ? ` to ${i.rule.destination}` : "")]] },
  vpc_route: { covers: ["entry"], facts: (i) => [
    ["entry", i.entry && `${i.entry.destination} → ${i.entry.next_hop_type || "?"} ${i.entry.next_hop || ""}`.trimEnd()]] },
  load_balancer: { covers: ["backends"], facts: (i) => [
    ["backends", (i.backends || []).map((b) => `${b.server_id} ${b.ip || "?"}:${b.port ?? "?"} ${b.health}${b.node ? ` (node ${b.node})` : ""}`)]] },
  delivery: { covers: ["socket"], facts: (i) => [
    ["socket", i.socket && `${i.socket.protocol} ${i.socket.address}:${i.socket.port} ${i.socket.state}`]] },
};
const SHOWN_ELSEWHERE = ["kind", "finding", "legacy_evidence"];

/** The step's typed detail as [label, value] pairs; empty values (null, [], false, "") are left out. */
function stepFacts(info) {
  const known = STEP_FACTS[info.kind] || { covers: [], facts: () => [] };
  const rest = Object.entries(info).filter(([k]) => !known.covers.includes(k) && !SHOWN_ELSEWHERE.includes(k))
    .map(([k, v]) => [k.replaceAll("_", " "), v && typeof v === "object" && "address" in v && "port" in v ? endpointText(v) : v]);
  return Object.fromEntries([...known.facts(info), ...rest].filter(([, v]) =>
    v !== null && v !== undefined && v !== false && v !== "" && !(Array.isArray(v) && !v.length)));
}

/** The finding a drop or abort step raised, linked to its entry in the findings list. */
function stepFinding(code) {
  const f = ((state.diagnosis && state.diagnosis.result && state.diagnosis.result.findings) || []).find((x) => x.code === code);
  return f ? h("button", { type: "button", class: "link step-finding", onclick: () => highlightFinding(f) }, code)
    : h("span", { class: "step-finding mono" }, code);
}

function packetTable(before, after) {
  if (!before && !after) return null;
  const both = before && after;
  const head = h("tr", {}, h("th", { scope: "col" }, "field"), both ? [h("th", { scope: "col" }, "before"), h("th", { scope: "col" }, "after")] : h("th", { scope: "col" }, "packet"));
  const rows = PACKET_FIELDS.filter((k) => (before && before[k] !== null && before[k] !== undefined && before[k] !== 0) || (after && after[k] !== null && after[k] !== undefined && after[k] !== 0))
    .map((k) => {
      const a = before ? before[k] : null, b = after ? after[k] : null;
      if (!both) return h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, String((before || after)[k] ?? "")));
      const changed = String(a ?? "") !== String(b ?? "");
      return h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, String(a ?? "")), h("td", { class: changed ? "changed" : null }, String(b ?? ""), changed ? h("span", { class: "sr-only" }, " (changed)") : null));
    });
  return h("table", { class: "packet" }, h("caption", { class: "sr-only" }, both ? "packet before and after this step" : "packet at this step"), h("thead", {}, head), h("tbody", {}, rows));
}

function evidenceList(evidence) {
  const entries = Object.entries(evidence || {});
  if (!entries.length) return null;
  return h("dl", { class: "kv" }, entries.map(([k, v]) => [h("dt", {}, k.replaceAll("_", " ")),
    h("dd", {}, typeof v === "string" ? v
      : Array.isArray(v) && v.every((x) => typeof x === "string") ? v.join("\n")  // e.g. the matched rules, one per line
        : JSON.stringify(v, null, Array.isArray(v) && v.every((x) => typeof x !== "object") ? 0 : 2))]));
}

function renderFindings(result) {
  const sorted = [...result.findings].sort((a, b) => SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity]);
  if (!sorted.length) { $("findings").replaceChildren(h("li", { class: "empty" }, "No findings.")); return; }
  $("findings").replaceChildren(...sorted.map((f) => {
    const nodeId = f.hop ? state.model.order.find((id) => state.model.nodes.get(id).hopId === f.hop) : null;
    const where = !f.hop ? h("span", { class: "where" }, "cluster-level (no single hop)")
      : nodeId ? h("button", { type: "button", class: "link", onclick: () => selectNode(nodeId, { focusDetails: true }) }, `at hop ${f.hop}`)
        : h("span", { class: "where mono" }, `at ${f.hop} (not on a simulated path)`);
    const isAbort = Boolean(state.codes.get(f.code) && state.codes.get(f.code).abort);
    return h("li", { class: `sev-${f.severity}${isAbort ? " is-abort" : ""}`, "data-code": f.code, "data-hop": f.hop || "", tabindex: "-1" },
      h("div", { class: "f-head" }, badge(f.severity), isAbort ? badge("ABORT") : null, h("span", { class: "f-code" }, f.code), where),
      h("p", { class: "f-msg" }, f.message),
      h("p", { class: "f-fix" }, h("strong", {}, "Fix: "), f.suggestion),
      isAbort ? h("p", { class: "hint" }, "The analysis could not see this part of the path: the verdict cannot be confident.") : null,
      Object.keys(f.evidence || {}).length ? h("details", { class: "evidence" }, h("summary", {}, "Evidence"), evidenceList(f.evidence)) : null);
  }));
}

function highlightFinding(f) {
  for (const li of $("findings").children) {
    const hit = li.dataset.code === f.code && li.dataset.hop === (f.hop || "");
    li.classList.toggle("highlight", hit);
    if (hit) { li.scrollIntoView({ block: "center" }); li.focus(); }
  }
}

/** The kernel's answer beside the simulation: probe outcome, agreement, the drops it traced. */
function renderLive(result) {
  const w = result.live;
  $("live-card").hidden = !w;
  if (!w) return;
  const probe = w.probe && w.probe.outcome
    ? h("p", {}, `Probe from ${w.probe.src}:${w.probe.sport} on ${w.probe.node}: ${w.probe.outcome} (${w.probe.detail}, ${Math.round(w.probe.elapsed_ms)} ms)`)
    : null;
  const drops = (w.drops || []).map((d) => h("li", { class: "kernel-drop" },
    `${d.reason} at ${d.location}${d.device ? ` dev ${d.device}` : ""} in ${d.where || d.netns_inode} on ${d.node}` +
    (d.codes.length ? ` → ${d.codes.join(", ")}` : "")));
  $("live-witness").replaceChildren(
    h("p", { class: "f-head" }, badge(w.agreement, w.agreement === "diverges" ? "error" : "INFO"),
      ` simulated ${w.simulated}, kernel ${w.kernel || "not probed"}`),
    probe, drops.length ? h("ul", { class: "findings" }, ...drops) : h("p", { class: "hint" }, "No kernel drop of the flow was traced."),
    w.detail ? h("p", { class: "f-msg" }, w.detail) : null,
    ...(w.notes || []).map((n) => h("p", { class: "hint" }, n)));
}

function renderAssumptions(result) {
  if (!result.assumptions.length) { $("assumptions").replaceChildren(h("li", { class: "empty" }, "No assumptions were needed.")); return; }
  const sorted = [...result.assumptions].sort((a, b) => Number(b.could_change_outcome) - Number(a.could_change_outcome));
  $("assumptions").replaceChildren(...sorted.map((a) => h("li", { class: a.could_change_outcome ? "matters" : null },
    h("div", { class: "f-head" }, badge(a.stage, "INFO"), a.could_change_outcome ? badge("could change the outcome", "warning") : null),
    h("p", { class: "f-msg" }, a.text))));
}

// ------------------------------------------------------------------ graph keyboard

function graphKey(event) {
  if (!state.model || !state.model.order.length) return;
  const order = state.model.order;
  const i = order.indexOf(state.selected);
  const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[event.key];
  if (step) {
    event.preventDefault();
    selectNode(order[i < 0 ? 0 : (i + step + order.length) % order.length], { quiet: true });
  } else if (event.key === "Enter" && state.selected) {
    event.preventDefault();
    $("details-title").focus();
  }
}

// ------------------------------------------------------------------ exports

function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

const exportName = (ext) => `netdiag-${state.diagnosis.id}.${ext}`;
const graphTitle = () => `${describe(state.diagnosis.request)} — ${state.diagnosis.result ? state.diagnosis.result.verdict : "FAILED"}`;

function exportJson() {
  download(exportName("json"), new Blob([JSON.stringify(state.diagnosis, null, 2)], { type: "application/json" }));
}

function exportPng() {
  if (!state.cy) return;
  download(exportName("png"), state.cy.png({ output: "blob", full: true, scale: 2, bg: "#ffffff" }));
}

function exportSvg() {
  if (!state.cy) return;
  download(exportName("svg"), new Blob([toSvg(state.cy, state.model, graphTitle())], { type: "image/svg+xml" }));
}

async function importFile(event) {
  const file = event.target.files[0];
  if (!file) return;
  try {
    const d = JSON.parse(await file.text());
    if (!d || !d.id || !d.request || !("result" in d)) throw new Error("not a netdiag diagnosis export (needs id, request, result)");
    stopFollowing();
    history.replaceState(null, "", "#/file");
    showTimings(d);
    showResult(d, { permalink: false });
  } catch (err) {
    $("history-error").textContent = `Cannot open ${file.name}: ${err.message}`;
    $("history-error").hidden = false;
  } finally {
    event.target.value = "";
  }
}

// ------------------------------------------------------------------ history

async function loadHistory(reset) {
  const query = `?limit=${HISTORY_PAGE}${!reset && state.historyNext ? `&after=${encodeURIComponent(state.historyNext)}` : ""}`;
  const res = await api(`/diagnoses${query}`).catch((err) => ({ ok: false, body: { error: err.message } }));
  if (!res.ok) {
    $("history-error").textContent = `History unavailable: ${(res.body && res.body.error) || res.status}`;
    $("history-error").hidden = false;
    return;
  }
  $("history-error").hidden = true;
  const items = res.body.items.map(historyItem);
  if (reset) $("history-list").replaceChildren(...items); else $("history-list").append(...items);
  state.historyNext = res.body.next;
  $("history-more").hidden = !res.body.next;
  for (const d of res.body.items) learnAddresses(d.source, [[d.request.src, ""], [d.request.dst, ""]]);
  if (state.diagnosis) markHistory(state.diagnosis.id);
}

/** The request with each address:port unbreakable, so a narrow column wraps between them only. */
function requestLine(r) {
  const [, ...rest] = describe(r).split(" ");  // protocol src → dst:port
  return h("span", { class: "req" }, `${r.protocol} `, h("span", { class: "ep" }, rest[0]), " → ",
           h("span", { class: "ep" }, rest[2]));
}

function historyItem(d) {
  const verdict = d.status === "queued" ? "queued" : d.status === "failed" ? "FAILED" : d.result ? d.result.verdict : d.status;
  const created = new Date(d.created_at);
  return h("li", {}, h("a", { href: `#/diagnoses/${d.id}`, "data-id": d.id },
    badge(verdict, verdict === "FAILED" ? "failed" : verdict), " ", requestLine(d.request),
    h("time", { datetime: d.created_at }, created.toLocaleString())));
}

function markHistory(id) {
  for (const a of $("history-list").querySelectorAll("a")) {
    if (a.dataset.id === id) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
}

/** Completions from anyone (CLI, other browsers) refresh the history list. */
function watchCompletions() {
  let pending = null;
  const es = new EventSource(`${API}/events`);
  es.addEventListener("result", () => {
    clearTimeout(pending);
    pending = setTimeout(() => loadHistory(true), 300);
  });
}

// ------------------------------------------------------------------ routing

async function route() {
  const m = location.hash.match(/^#\/diagnoses\/([\w-]+)$/);
  if (!m) {
    if (location.hash === "#/file") return;
    stopFollowing();
    $("progress").hidden = true;
    $("result").hidden = true;
    state.diagnosis = null;
    markHistory(null);
    return;
  }
  const id = m[1];
  if (state.diagnosis && state.diagnosis.id === id) return;
  $("result").hidden = true;
  const res = await api(`/diagnoses/${encodeURIComponent(id)}`).catch((err) => ({ ok: false, status: 0, body: { error: err.message } }));
  if (!res.ok) {
    resetProgress(`Cannot open diagnosis ${id}: ${(res.body && res.body.error) || res.status}`);
    return;
  }
  if (res.body.status === "queued") {
    follow(id);
  } else {
    stopFollowing();
    showTimings(res.body);
    showResult(res.body);
  }
}

// ------------------------------------------------------------------ start

function start() {
  $("dns-ip").value = localStorage.getItem(DNS_KEY) || $("dns-ip").value;
  $("diagnose-form").addEventListener("submit", submitForm);
  $("preset-dns").addEventListener("click", dnsPreset);
  $("swap").addEventListener("click", () => { [$("src").value, $("dst").value] = [$("dst").value, $("src").value]; });
  for (const id of ["src", "dst", "port", "collect-timeout"]) {
    // Inline validation once the user leaves a field (not on every keystroke); a field merely tabbed
    // through stays quiet, one the user emptied says it is required
    let edited = false;
    $(id).addEventListener("input", () => { edited = true; });
    $(id).addEventListener("blur", () => {
      if (!$(id).value.trim() && !edited && !$(id).hasAttribute("aria-invalid")) return;
      const { errors } = validateForm(formValues());
      const current = {};
      for (const name of ["src", "dst", "port", "protocol", "collect-timeout"]) current[name] = $(`${name}-error`).textContent;
      current[id] = errors[id] || "";
      showFieldErrors(current);
    });
  }
  $("rerun").addEventListener("click", () => $("diagnose-form").requestSubmit());
  $("export-json").addEventListener("click", exportJson);
  $("export-png").addEventListener("click", exportPng);
  $("export-svg").addEventListener("click", exportSvg);
  $("fit").addEventListener("click", () => state.cy && arrange(state.cy, $("graph")));
  $("graph").addEventListener("keydown", graphKey);
  $("history-refresh").addEventListener("click", () => loadHistory(true));
  $("history-more").addEventListener("click", () => loadHistory(false));
  $("import-file").addEventListener("change", importFile);
  window.addEventListener("hashchange", route);
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => state.cy && arrange(state.cy, $("graph")), 200);
  });
  state.pickers = [["src", "known sources"], ["dst", "known destinations"]].map(([role, label]) =>
    attachPicker($(role), { label, entries: () => pickerEntries(role), onChoose: (e) => chosen(role, e), onOpen: refreshStaleCluster }));
  loadCluster();
  loadHistory(true);
  watchCompletions();
  loadCodes().finally(route);  // ABORT badges need the catalogue
}

// Read-only handle for the end-to-end tests and the browser console (the graph lives in a canvas).
window.netdiag = state;
if (window.cytoscape && window.cytoscapeDagre) window.cytoscape.use(window.cytoscapeDagre);
start();
