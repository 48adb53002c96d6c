// The packet-path graph: every path is a chain of hops; paths that start with the same hops
// share those graph nodes, so branches (Service endpoints, ECMP) fan out as parallel lanes.
// Each path ends in a small terminal node saying how it ends (DELIVER, DROP · CODE, ...).

const RANK = { ok: 0, unknown: 1, warning: 2, error: 3 };
const MARK = { ok: "", warning: "▲ ", error: "✖ ", unknown: "? " };
const SHAPE = {
  pod: "round-rectangle", node: "rectangle", service: "hexagon", load_balancer: "diamond",
  vpc: "round-octagon", nat_gateway: "octagon", internet: "ellipse", external: "ellipse",
};
const COLORS = {
  ok: { fill: "#ffffff", line: "#5b6b7f", text: "#1b2430" },
  warning: { fill: "#fff1d6", line: "#c77700", text: "#5c3200" },
  error: { fill: "#fde5e3", line: "#b3261e", text: "#7a1a14" },
  unknown: { fill: "#eceff3", line: "#5b6b7f", text: "#1b2430" },
};
const FINAL_STATUS = { DELIVER: "ok", FORWARD: "ok", DROP: "error", ABORT: "unknown" };

export function worst(a, b) {
  return RANK[b] > RANK[a] ? b : a;
}

/** Hop status as drawn: the hop's own status, raised to warning when a non-info finding
 * names it (a finding is never invisible on the graph). */
export function hopStatus(hop, findings) {
  const status = hop.status || "ok";
  const named = findings.some((f) => f.hop === hop.id && f.severity !== "info");
  return status === "ok" && named ? "warning" : status;
}

/** Graph model: {nodes: Map(id → node), edges, order: node ids in reading order,
 * pathNodes: Map(path id → its node ids, terminal last)}. */
export function buildModel(result) {
  const findings = result.findings || [];
  const nodes = new Map();
  const edges = [];
  const order = [];
  const pathNodes = new Map();
  const keyToId = new Map();
  let counter = 0;
  // where the kernel dropped the live probe's packets: drawn apart from the simulated drop
  const kernelHops = new Set(((result.live && result.live.drops) || []).filter((d) => d.codes.length && d.hop).map((d) => d.hop));
  for (const path of result.paths || []) {
    let prefix = path.direction;
    let parent = null;
    const ids = [];
    for (const hop of path.hops) {
      prefix += ">" + hop.id;
      let id = keyToId.get(prefix);
      if (!id) {
        id = `n${counter++}`;
        keyToId.set(prefix, id);
        nodes.set(id, { id, kind: hop.kind, name: hop.name, address: hop.address, hopId: hop.id,
                        direction: path.direction, status: "ok", occurrences: [], codes: new Set(), rewrites: new Set(),
                        kernelDrop: kernelHops.has(hop.id) });
        order.push(id);
        if (parent) edges.push({ id: `e${parent}-${id}`, source: parent, target: id, direction: path.direction });
      }
      const node = nodes.get(id);
      node.occurrences.push({ path, hop });
      node.status = worst(node.status, hopStatus(hop, findings));
      for (const f of findings) if (f.hop === hop.id && f.severity !== "info") node.codes.add(f.code);
      for (const step of hop.steps || []) {
        const text = rewriteText(step);
        if (text) node.rewrites.add(text);
      }
      parent = id;
      ids.push(id);
    }
    const end = `end-${path.id}`;
    const final = path.final || "ABORT";
    nodes.set(end, { id: end, terminal: true, path, direction: path.direction, status: FINAL_STATUS[final] || "unknown",
                     name: final + (path.cause ? ` · ${path.cause}` : ""), occurrences: [], codes: new Set(), rewrites: new Set() });
    order.push(end);
    pathNodes.set(path.id, [...ids, end]);
    if (parent) edges.push({ id: `e${parent}-${end}`, source: parent, target: end, direction: path.direction });
  }
  return { nodes, edges, order, pathNodes };
}

const FONT = "12px system-ui, DejaVu Sans, sans-serif";
const LINE_H = 15;
const PAD = 9;
const WRAP_AT = 30;

/** Long names (namespace/pod-hash) break after '/' or '-' so nodes stay compact. */
function wrap(line) {
  const out = [];
  while (line.length > WRAP_AT) {
    const cut = Math.max(line.lastIndexOf("/", WRAP_AT), line.lastIndexOf("-", WRAP_AT), line.lastIndexOf(" ", WRAP_AT));
    const at = cut > 8 ? cut + 1 : WRAP_AT;
    out.push(line.slice(0, at).trimEnd());
    line = line.slice(at).trimStart();
  }
  return [...out, line];
}

/** A NAT step's translation as the graph shows it (from its typed detail, docs/steps.md), e.g.
 * "DNAT → 10.244.1.3:8080"; null for any other step, and for conntrack undoing one on a reply. */
export function rewriteText(step) {
  const i = step.info || {};
  if (step.kind !== "nat" || step.action !== "REWRITE" || i.reverse || !i.type || !i.translated) return null;
  const t = i.translated;
  const at = t.port === null || t.port === undefined ? t.address : t.address.includes(":") ? `[${t.address}]:${t.port}` : `${t.address}:${t.port}`;
  return `${i.type} → ${at}`;
}

export function labelLines(node) {
  if (node.terminal) return [(node.path.direction === "reply" ? "↩ " : "") + node.name];
  // the kind line says what it is: a name repeating it ("internet 8.8.8.8") or an address repeating
  // the name says nothing more
  const name = node.name.startsWith(`${node.kind} `) ? node.name.slice(node.kind.length + 1) : node.name;
  const lines = [`${MARK[node.status]}${node.direction === "reply" ? "↩ " : ""}${node.kind}`, ...wrap(name)];
  if (node.address && !name.includes(node.address)) lines.push(node.address);
  // where the packet is rewritten; a hop shared by several paths (one per endpoint) says how many
  const types = new Set([...node.rewrites].map((r) => r.split(" ")[0]));
  if (node.rewrites.size === 1) lines.push(...node.rewrites);
  else if (node.rewrites.size > 1) lines.push(types.size === 1 ? `${[...types][0]} → ${node.rewrites.size} addresses` : `${node.rewrites.size} translations`);
  for (const code of node.codes) lines.push(code);
  return lines;
}

let measurer = null;
// How much larger than the text box a shape must be for the text to stay inside it (an ellipse's
// inscribed rectangle is 1/√2 of it; hexagons and octagons cut their corners).
const SHAPE_ROOM = { ellipse: [1.45, 1.45], hexagon: [1.3, 1.1], diamond: [1.9, 1.9], "round-octagon": [1.2, 1.2],
                     octagon: [1.25, 1.25] };

/** Node box size from its label and shape (Cytoscape's own `width: label` is deprecated). */
function boxSize(lines, shape) {
  measurer = measurer || document.createElement("canvas").getContext("2d");
  measurer.font = FONT;
  const w = Math.max(...lines.map((l) => measurer.measureText(l).width)) + 2 * PAD + 6;
  const h = lines.length * LINE_H + 2 * PAD;
  const [sw, sh] = SHAPE_ROOM[shape] || [1, 1];
  return { w: Math.ceil(w * sw), h: Math.ceil(h * sh) };
}

function elements(model) {
  const out = [];
  for (const n of model.nodes.values()) {
    const lines = labelLines(n);
    const shape = n.terminal ? "round-rectangle" : (SHAPE[n.kind] || "round-rectangle");
    const { w, h } = boxSize(lines, shape);
    out.push({ group: "nodes", data: { id: n.id, label: lines.join("\n"), w, h, shape },
               classes: [n.status, n.direction, n.terminal ? "terminal" : "hop", n.kernelDrop ? "kernel-drop" : ""].join(" ").trim() });
  }
  for (const e of model.edges) out.push({ group: "edges", data: e, classes: e.direction });
  return out;
}

const STYLE = [
  { selector: "node", style: {
    shape: "data(shape)", label: "data(label)", "text-wrap": "wrap", "text-max-width": 400, "font-size": 12,
    "font-family": "system-ui, DejaVu Sans, sans-serif", "text-valign": "center", "text-halign": "center",
    "line-height": LINE_H / 12, width: "data(w)", height: "data(h)", "border-width": 2,
    "background-color": COLORS.ok.fill, "border-color": COLORS.ok.line, color: COLORS.ok.text } },
  ...["warning", "error", "unknown"].map((s) => ({ selector: `node.${s}`, style: {
    "background-color": COLORS[s].fill, "border-color": COLORS[s].line, color: COLORS[s].text,
    "border-width": s === "unknown" ? 2 : 4, "border-style": s === "unknown" ? "dashed" : "solid",
    "font-weight": s === "unknown" ? "normal" : "bold" } })),
  { selector: "node.terminal.ok", style: { "background-color": "#e3f4e8", "border-color": "#1b6e3a", color: "#1b6e3a", "font-weight": "bold" } },
  // reply lanes: dotted and blue, never mistaken for "unknown" (dashed grey); their status colours stay
  { selector: "node.reply", style: { "border-style": "dotted", "border-width": 3 } },
  { selector: "node.reply.ok", style: { "border-color": "#2f6db5", "background-color": "#eef4fb" } },
  // the live probe's kernel drop point: a double violet border, distinct from the simulated (red) drop
  { selector: "node.kernel-drop", style: { "border-style": "double", "border-width": 7, "border-color": "#6a1b9a" } },
  { selector: "node:selected", style: { "overlay-color": "#0b5cad", "overlay-opacity": 0.18, "overlay-padding": 6,
                                          "underlay-color": "#0b5cad", "underlay-opacity": 0.25, "underlay-padding": 5 } },
  { selector: "edge", style: { width: 2, "line-color": "#7d8898", "target-arrow-color": "#7d8898",
                               "target-arrow-shape": "triangle", "curve-style": "bezier" } },
  { selector: "edge.reply", style: { "line-style": "dotted", "line-color": "#2f6db5", "target-arrow-color": "#2f6db5" } },
];

/** Draw the model in `container`; `onSelect(node)` is called when a node is chosen. */
export function drawGraph(container, model, onSelect) {
  const cy = window.cytoscape({
    container, elements: elements(model), style: STYLE, minZoom: 0.2, maxZoom: 2.5,
    boxSelectionEnabled: false, autoungrabify: true,
  });
  arrange(cy, container);
  cy.on("tap", "node", (evt) => onSelect(model.nodes.get(evt.target.id())));
  return cy;
}

const MIN_ZOOM_LR = 0.8;

/** Left-to-right when the whole path fits the width readably, else top-to-bottom; then the
 * container grows to the drawing's height so nothing is shrunk to illegibility. */
export function arrange(cy, container) {
  const run = (rankDir) => cy.layout({ name: "dagre", rankDir, nodeSep: 22, rankSep: rankDir === "LR" ? 45 : 30, fit: false }).run();
  const width = container.clientWidth - 40;
  run("LR");
  let bb = cy.elements().boundingBox();
  if (width / bb.w < MIN_ZOOM_LR) {
    run("TB");
    bb = cy.elements().boundingBox();
  }
  const zoom = Math.min(1, width / bb.w);
  container.style.height = `${Math.round(Math.min(Math.max(bb.h * zoom + 40, 200), 1100))}px`;
  cy.resize();
  cy.fit(undefined, 20);
  if (cy.zoom() > 1) {
    cy.zoom(1);
    cy.center();
  }
}

/** Select (highlight and centre) a node without re-firing onSelect. */
export function focusNode(cy, id) {
  cy.$(":selected").unselect();
  const el = cy.getElementById(id);
  if (el.nonempty()) {
    el.select();
    if (!fits(cy, el)) cy.animate({ center: { eles: el }, duration: 150 });
  }
}

function fits(cy, el) {
  const e = cy.extent(), b = el.boundingBox();
  return b.x1 >= e.x1 && b.x2 <= e.x2 && b.y1 >= e.y1 && b.y2 <= e.y2;
}

const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

/** A standalone SVG of the laid-out graph (positions from Cytoscape; shapes simplified to
 * rectangles and ellipses), for reports and tickets. */
export function toSvg(cy, model, title) {
  const bb = cy.elements().boundingBox({ includeLabels: true });
  const pad = 20, top = title ? 30 : 0;
  const w = Math.ceil(bb.w + 2 * pad), h = Math.ceil(bb.h + 2 * pad + top);
  const dx = pad - bb.x1, dy = pad + top - bb.y1;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" font-family="DejaVu Sans, sans-serif" font-size="12">`,
    `<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#7d8898"/></marker></defs>`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
  ];
  if (title) parts.push(`<text x="${pad}" y="20" font-size="14" font-weight="bold">${esc(title)}</text>`);
  cy.edges().forEach((e) => {
    const s = e.sourceEndpoint(), t = e.targetEndpoint();
    const dash = e.hasClass("reply") ? ' stroke-dasharray="6 4"' : "";
    parts.push(`<line x1="${s.x + dx}" y1="${s.y + dy}" x2="${t.x + dx}" y2="${t.y + dy}" stroke="#7d8898" stroke-width="2"${dash} marker-end="url(#arrow)"/>`);
  });
  cy.nodes().forEach((n) => {
    const m = model.nodes.get(n.id());
    const c = m.terminal && m.status === "ok" ? { fill: "#e3f4e8", line: "#1b6e3a", text: "#1b6e3a" } : COLORS[m.status];
    const p = n.position(), nw = n.outerWidth(), nh = n.outerHeight();
    const x = p.x + dx - nw / 2, y = p.y + dy - nh / 2;
    const dash = m.status === "unknown" || m.direction === "reply" ? ' stroke-dasharray="5 3"' : "";
    const sw = m.status === "warning" || m.status === "error" ? 4 : 2;
    const shape = n.data("shape") === "ellipse"
      ? `<ellipse cx="${p.x + dx}" cy="${p.y + dy}" rx="${nw / 2}" ry="${nh / 2}"`
      : `<rect x="${x}" y="${y}" width="${nw}" height="${nh}" rx="${m.kind === "pod" ? 8 : 2}"`;
    parts.push(`${shape} fill="${c.fill}" stroke="${c.line}" stroke-width="${sw}"${dash}/>`);
    const lines = labelLines(m);
    const weight = m.status === "ok" || m.status === "unknown" ? "normal" : "bold";
    lines.forEach((line, i) => {
      const ly = p.y + dy + (i - (lines.length - 1) / 2) * LINE_H + 4;
      parts.push(`<text x="${p.x + dx}" y="${ly}" text-anchor="middle" fill="${c.text}" font-weight="${weight}">${esc(line)}</text>`);
    });
  });
  parts.push("</svg>");
  return parts.join("\n");
}
