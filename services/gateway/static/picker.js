// Scenario pickers: the source and destination inputs become comboboxes (WAI-ARIA 1.2 "list
// autocomplete") offering the pods, Services and nodes of the cluster summary
// (GET /api/v1/cluster) plus addresses seen in past diagnoses. Free typing stays possible.

const SHOWN = 50;  // options rendered at once; typing narrows the rest

const hostPort = (ip, port) => `${ip.includes(":") ? `[${ip}]` : ip}:${port}`;
const diagnosable = (p) => p.protocol === "TCP" || p.protocol === "UDP";  // the API has no SCTP

/** Picker entries {value, label, note, kind, port?, protocol?} from a ClusterSummary. */
export function clusterEntries(summary, role) {
  const out = [];
  for (const p of summary.pods) {
    const note = [p.host_network ? "hostNetwork" : "", p.phase !== "Running" ? p.phase : p.ready ? "" : "not ready"].filter(Boolean).join(", ");
    for (const ip of p.ips) out.push({ kind: "pod", value: ip, label: `pod ${p.namespace}/${p.name} (${ip})`, note });
  }
  if (role === "dst") {
    for (const s of summary.services) {
      const name = `${s.namespace}/${s.name}`;
      const vips = [[s.cluster_ips, ""], [s.lb_ips, " LB"], [s.external_ips, " externalIP"]];
      for (const port of s.ports.filter(diagnosable)) {
        const service = { kind: "svc", port: port.port, protocol: port.protocol.toLowerCase(), note: port.name || "" };
        for (const [ips, how] of vips) {
          for (const ip of ips) out.push({ ...service, value: ip, label: `svc ${name}${how} (${hostPort(ip, port.port)}/${port.protocol})` });
        }
        if (port.node_port) {
          for (const n of summary.nodes) {
            for (const a of n.addresses) {
              out.push({ ...service, port: port.node_port, value: a.address,
                         label: `svc ${name} NodePort on ${n.name} (${hostPort(a.address, port.node_port)}/${port.protocol})` });
            }
          }
        }
      }
    }
  }
  for (const n of summary.nodes) {
    for (const a of n.addresses) out.push({ kind: "node", value: a.address, label: `node ${n.name} (${a.address})`, note: [a.type, n.ready ? "" : "NotReady"].filter(Boolean).join(", ") });
  }
  return out;
}

/** Past-diagnosis addresses ({address: label}) the cluster entries do not already offer. */
export function recentEntries(known, offered) {
  const taken = new Set(offered.map((e) => e.value));
  return Object.keys(known).filter((a) => !taken.has(a)).sort()
    .map((a) => ({ kind: "recent", value: a, label: known[a] ? `${a} — ${known[a]}` : a, note: "seen in a diagnosis" }));
}

function matches(entries, query) {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  return words.length ? entries.filter((e) => words.every((w) => e.label.toLowerCase().includes(w))) : entries;
}

/**
 * Make `input` a combobox over `entries()` (called when the list opens). `onChoose(entry)` runs
 * after the input's value is set. Keys: ↓/↑ open and move, Enter chooses, Escape closes.
 * Returns {refresh()} to re-list after the entries changed.
 */
export function attachPicker(input, { entries, onChoose, onOpen, label }) {
  const id = `${input.id}-options`;
  const wrap = input.parentElement.insertBefore(document.createElement("div"), input);
  wrap.className = "picker";
  wrap.append(input);
  const toggle = document.createElement("button");
  Object.assign(toggle, { type: "button", className: "picker-toggle", tabIndex: -1, textContent: "▾" });
  toggle.setAttribute("aria-label", `Show ${label}`);
  const pop = document.createElement("div");
  Object.assign(pop, { className: "picker-pop", hidden: true });
  const list = document.createElement("ul");
  Object.assign(list, { id, className: "picker-list" });
  list.setAttribute("role", "listbox");
  list.setAttribute("aria-label", label);
  const note = document.createElement("p");
  note.className = "picker-note";
  pop.append(list, note);
  wrap.append(toggle, pop);
  for (const [k, v] of Object.entries({ role: "combobox", "aria-autocomplete": "list", "aria-expanded": "false", "aria-controls": id })) input.setAttribute(k, v);

  let shown = [];
  let active = -1;

  function setActive(i) {
    active = i;
    [...list.children].forEach((li, j) => li.setAttribute("aria-selected", String(j === i)));
    if (i < 0) { input.removeAttribute("aria-activedescendant"); return; }
    input.setAttribute("aria-activedescendant", list.children[i].id);
    list.children[i].scrollIntoView({ block: "nearest" });
  }

  function open() {
    if (onOpen) onOpen();
    const all = matches(entries(), input.value.trim());
    shown = all.slice(0, SHOWN);
    list.replaceChildren(...shown.map((e, i) => {
      const li = document.createElement("li");
      Object.assign(li, { id: `${id}-${i}`, className: `picker-option k-${e.kind}` });
      li.setAttribute("role", "option");
      li.dataset.value = e.value;
      li.append(e.label);
      if (e.note) { const n = document.createElement("span"); n.className = "picker-option-note"; n.textContent = ` · ${e.note}`; li.append(n); }
      li.addEventListener("click", () => choose(i));
      return li;
    }));
    note.hidden = all.length <= SHOWN;
    note.textContent = `showing ${SHOWN} of ${all.length}: type to narrow`;
    pop.hidden = shown.length === 0;
    input.setAttribute("aria-expanded", String(!pop.hidden));
    setActive(-1);
  }

  function close() {
    pop.hidden = true;
    input.setAttribute("aria-expanded", "false");
    setActive(-1);
  }

  function choose(i) {
    const entry = shown[i];
    input.value = entry.value;
    close();
    onChoose(entry);
  }

  input.addEventListener("input", open);
  input.addEventListener("blur", close);
  input.addEventListener("keydown", (ev) => {
    const isOpen = !pop.hidden;
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      if (!isOpen) { open(); if (ev.key === "ArrowUp") setActive(shown.length - 1); return; }
      const step = ev.key === "ArrowDown" ? 1 : -1;
      setActive(active < 0 && step < 0 ? shown.length - 1 : (active + step + shown.length) % shown.length);
    } else if (ev.key === "Enter" && isOpen && active >= 0) {
      ev.preventDefault();  // choosing is not submitting
      choose(active);
    } else if (ev.key === "Escape" && isOpen) {
      ev.preventDefault();
      close();
    }
  });
  // a mousedown in the list would blur the input first (closing it, validating a half-typed value)
  toggle.addEventListener("mousedown", (ev) => ev.preventDefault());
  pop.addEventListener("mousedown", (ev) => ev.preventDefault());
  toggle.addEventListener("click", () => { input.focus(); if (pop.hidden) open(); else close(); });
  // new entries (a summary arriving while the user types) show at once
  return { refresh: () => { if (document.activeElement === input && input.value.trim()) open(); } };
}
