// FashionSearchNet web page: talks only to the HTTP API.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { schema: null, offset: 0, limit: 24, total: 0, query: null, upload: null };

async function api(path, opts) {
  const r = await fetch(path, opts);
  const ct = r.headers.get("content-type") || "";
  const body = ct.includes("json") ? await r.json() : null;
  if (!r.ok) throw new Error((body && body.error) || `HTTP ${r.status}`);
  return body;
}

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of kids) e.append(c);
  return e;
}

function option(value, label) { const o = el("option", { value, text: label ?? value }); return o; }

async function init() {
  const [health, schema] = await Promise.all([api("/api/health"), api("/api/schema")]);
  state.schema = schema;
  $("status").textContent = `${health.items} items · index ${health.index_version} · model ${health.model}`;
  for (const a of schema.attributes) $("explain-attr").append(option(a.name));
  await loadCatalog();
}

async function loadCatalog() {
  const q = encodeURIComponent($("filter-text").value.trim());
  const data = await api(`/api/items?offset=${state.offset}&limit=${state.limit}${q ? "&q=" + q : ""}`);
  state.total = data.total;
  const grid = $("catalog");
  grid.replaceChildren();
  for (const it of data.items) {
    const card = el("div", { class: "card", "data-id": it.id, title: it.title || it.id },
      el("img", { src: `/api/items/${encodeURIComponent(it.id)}/image?size=160`, alt: it.id, loading: "lazy" }),
      el("div", { class: "cap", text: it.id }));
    if (state.query && state.query.id === it.id) card.classList.add("selected");
    card.addEventListener("click", () => selectItem(it.id));
    grid.append(card);
  }
  const last = Math.min(state.total, state.offset + state.limit);
  $("page").textContent = state.total ? `${state.offset + 1}–${last} of ${state.total}` : "no items";
  $("prev").disabled = state.offset === 0;
  $("next").disabled = last >= state.total;
}

async function selectItem(id) {
  const it = await api(`/api/items/${encodeURIComponent(id)}`);
  state.query = it; state.upload = null;
  document.querySelectorAll("#catalog .card").forEach((c) => c.classList.toggle("selected", c.dataset.id === id));
  showQuery(`/api/items/${encodeURIComponent(id)}/image?size=384`, it.predicted, it.rois);
  await runSearch();
}

function showQuery(src, predicted, rois) {
  $("query-empty").hidden = true; $("query-view").hidden = false;
  $("query-img").src = src;
  showQueryInfo(predicted, rois);
  updateExplain();
}

function showQueryInfo(predicted, rois) {
  const box = $("rois"); box.replaceChildren();
  const shown = state.schema.regions.map((r) => r.roi_attribute);
  for (const [attr, r] of Object.entries(rois || {})) {
    if (!shown.includes(attr)) continue;
    const d = el("div", {}, el("span", { text: attr }));
    Object.assign(d.style, { left: `${100 * r[0]}%`, top: `${100 * r[1]}%`, width: `${100 * (r[2] - r[0])}%`, height: `${100 * (r[3] - r[1])}%` });
    box.append(d);
  }
  const t = $("predicted"); t.replaceChildren();
  for (const [attr, p] of Object.entries(predicted || {})) {
    const bar = el("div", { class: "b" }, el("i"));
    bar.firstChild.style.width = `${Math.round(100 * p.confidence)}%`;
    t.append(el("tr", {}, el("td", { text: attr }), el("td", { text: p.value }), el("td", { style: "width:40%" }, bar), el("td", { text: `${Math.round(100 * p.confidence)}%` })));
  }
}

function updateExplain() {
  const attr = $("explain-attr").value;
  if (state.query && state.query.id) {
    $("explain-img").src = `/api/items/${encodeURIComponent(state.query.id)}/explain?attribute=${encodeURIComponent(attr)}`;
  } else if (state.upload) {
    const fd = new FormData(); fd.append("file", state.upload); fd.append("attribute", attr);
    fetch("/api/explain", { method: "POST", body: fd }).then((r) => (r.ok ? r.blob() : null)).then((b) => { if (b) $("explain-img").src = URL.createObjectURL(b); });
  }
}

function addEdit(region) {
  const s = state.schema;
  const row = el("div", { class: "edit" });
  const attrSel = el("select", { class: "edit-attr", "aria-label": "attribute" });
  const valSel = el("select", { class: "edit-value", "aria-label": "value" });
  let regSel = null;
  const fillValues = () => {
    const a = s.attributes.find((x) => x.name === attrSel.value);
    valSel.replaceChildren(...a.values.map((v) => option(v)));
  };
  if (region) {
    regSel = el("select", { class: "edit-region", "aria-label": "region" });
    const regions = [...new Set(s.region_edits.map((e) => e.region))];
    regSel.append(...regions.map((r) => option(r)));
    const fillAttrs = () => { attrSel.replaceChildren(...s.region_edits.filter((e) => e.region === regSel.value).map((e) => option(e.attribute))); fillValues(); };
    regSel.addEventListener("change", fillAttrs);
    row.append(el("span", { class: "tag", text: "in region" }), regSel);
    fillAttrs();
  } else {
    attrSel.append(...s.attributes.map((a) => option(a.name)));
    row.append(el("span", { class: "tag", text: "whole item" }));
    fillValues();
  }
  attrSel.addEventListener("change", fillValues);
  const rm = el("button", { type: "button", "aria-label": "remove edit", text: "✕" });
  rm.addEventListener("click", () => { row.remove(); runSearch(); });
  row.append(attrSel, el("span", { text: "=" }), valSel, rm);
  row.dataset.region = region ? "1" : "";
  $("edits").append(row);
  return row;
}

function currentEdits() {
  return [...document.querySelectorAll("#edits .edit")].map((row) => {
    const a = row.querySelector(".edit-attr").value, v = row.querySelector(".edit-value").value;
    const r = row.querySelector(".edit-region");
    return r ? `${r.value}:${a}=${v}` : `${a}=${v}`;
  });
}

async function runSearch() {
  if (!state.query && !state.upload) return;
  $("error").hidden = true;
  const k = Number($("k").value);
  try {
    let res;
    if (state.upload) {
      const fd = new FormData();
      fd.append("file", state.upload);
      fd.append("query", JSON.stringify({ edits: currentEdits(), k }));
      res = await api("/api/search/image", { method: "POST", body: fd });
      showQueryInfo(res.query.predicted, res.query.rois);
    } else {
      res = await api("/api/search", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ item_id: state.query.id, edits: currentEdits(), k }) });
    }
    showResults(res);
  } catch (e) {
    $("error").textContent = e.message; $("error").hidden = false;
  }
}

function showResults(res) {
  const grid = $("results"); grid.replaceChildren();
  const changed = new Set(res.query.changed_blocks);
  const edits = res.query.edits.map((e) => e.edit).join(", ");
  $("results-info").textContent = `${res.results.length} of ${res.total}${edits ? " · " + edits : ""}`;
  const maxW = Math.max(...Object.values(res.query.weights), 1e-9);
  for (const r of res.results) {
    const sim = el("div", { class: "sim" });
    for (const [block, v] of Object.entries(r.breakdown)) {
      const w = res.query.weights[block] || maxW;
      const bar = el("div", { class: "b" }, el("i", { class: changed.has(block) ? "changed" : "" }));
      bar.firstChild.style.width = `${Math.max(0, Math.min(100, 100 * v / w))}%`;
      sim.append(el("span", { text: block }), bar, el("span", { text: v.toFixed(2) }));
    }
    const attrs = Object.entries(r.predicted).map(([a, p]) => `${a}: ${p.value}`).join("\n");
    grid.append(el("div", { class: "card result", "data-id": r.id, title: attrs },
      el("img", { src: `/api/items/${encodeURIComponent(r.id)}/image?size=256`, alt: r.id, loading: "lazy" }),
      el("div", { class: "cap", text: `#${r.rank} ${r.id} · ${r.score.toFixed(3)}` }), sim));
  }
}

$("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadCatalog(); });
$("next").addEventListener("click", () => { state.offset += state.limit; loadCatalog(); });
let filterTimer = null;
$("filter-text").addEventListener("input", () => { clearTimeout(filterTimer); filterTimer = setTimeout(() => { state.offset = 0; loadCatalog(); }, 250); });
$("add-edit").addEventListener("click", () => addEdit(false));
$("add-region-edit").addEventListener("click", () => addEdit(true));
$("search").addEventListener("click", runSearch);
$("k").addEventListener("change", runSearch);
$("explain-attr").addEventListener("change", updateExplain);
$("upload").addEventListener("change", async (ev) => {
  const f = ev.target.files[0];
  if (!f) return;
  state.upload = f; state.query = null;
  document.querySelectorAll("#catalog .card").forEach((c) => c.classList.remove("selected"));
  showQuery(URL.createObjectURL(f), {}, {});
  await runSearch();
});
init().catch((e) => { $("status").textContent = "error: " + e.message; });
