// The taxonomy editor: the document is a plain object (`doc`) edited in place through inputs that
// name their path (data-path="classes.0.definition"); structural edits (add or remove a class,
// a rule, a region) re-render the form from `doc`. Saving sends the object; the server writes the
// YAML and the taxonomy service validates it, as the signed-in user (never as this service).
"use strict";

const cfg = JSON.parse(document.getElementById("tax-data").textContent);
const RULE_KEYS = ["min_area_px", "min_area_mm2", "min_length_px", "min_length_mm"];
let doc = null;
let opened = null; // {version, state} of what was loaded
let draftVersion = ""; // the draft being edited (set once saved)

const $ = (id) => document.getElementById(id);
const product = () => $("product").value.trim();

// ---- versions ----------------------------------------------------------------------------------

async function loadVersions() {
  const out = await api("GET", `/api/taxonomy/versions?product=${encodeURIComponent(product())}`);
  const published = out.versions.map((v) => ({ value: `p:${v}`, text: `v${v} (published)`, v }));
  const drafts = out.drafts.map((d) => ({ value: `d:${d.version}`, text: `v${d.version} (${d.state} by ${d.author})`, v: d.version }));
  const fill = (sel, items, pick) => {
    sel.innerHTML = "";
    items.forEach((i) => sel.add(new Option(i.text, i.value)));
    if (pick) sel.value = pick;
  };
  const latest = published.at(-1);
  fill($("open"), [...published.slice().reverse(), ...drafts], $("open").value || latest?.value);
  const all = [...published, ...drafts];
  fill($("from"), all, published.at(-2)?.value || latest?.value);
  fill($("to"), all, drafts.at(-1)?.value || latest?.value);
  return out;
}

async function openSelected() {
  const [kind, version] = $("open").value.split(/:(.*)/s);
  if (!version) { flash("nothing published or drafted for this product yet", true); return; }
  const q = new URLSearchParams({ product: product(), version, draft: kind === "d" });
  const out = await api("GET", `/api/taxonomy/document?${q}`);
  doc = out.document;
  opened = { version, state: out.state };
  draftVersion = kind === "d" ? version : "";
  $("version").value = kind === "d" ? version : nextVersion(version);
  $("notes").value = out.migration_notes || "";
  $("loaded").textContent = `editing ${kind === "d" ? "draft" : "a copy of"} v${version}`;
  $("draft-state").textContent = kind === "d" ? `draft state: ${out.state}${out.review_comment ? " · sent back: " + out.review_comment : ""}` : "";
  $("editor").hidden = false;
  render();
}

function nextVersion(v) { return /^\d+$/.test(v) ? String(Number(v) + 1) : `${v}.1`; }

// ---- the form ----------------------------------------------------------------------------------

function input(path, value, attrs = "") {
  return `<input type="text" data-path="${esc(path)}" value="${esc(value ?? "")}" ${attrs}>`;
}
function select(path, value, options, label) {
  return `<select data-path="${esc(path)}" aria-label="${esc(label)}">${options.map((o) =>
    `<option${o === value ? " selected" : ""}>${esc(o)}</option>`).join("")}</select>`;
}
function area(path, value, label) {
  return `<label>${label}<textarea data-path="${esc(path)}" rows="2">${esc(value ?? "")}</textarea></label>`;
}

function render() {
  const sev = doc.severities || ["minor", "major", "critical"];
  const regionNames = (doc.regions || []).map((r) => r.name);
  $("classes").innerHTML = (doc.classes || []).map((c, i) => `
   <fieldset data-class="${esc(c.name)}"><legend>class ${i + 1}: ${esc(c.name)}
     <button type="button" data-remove-class="${i}">remove class</button></legend>
    <div class="grid2">
     <label>name ${input(`classes.${i}.name`, c.name, 'data-rename="1" required')}</label>
     <label>kind ${select(`classes.${i}.kind`, c.kind || "surface", ["surface", "directional"], "kind")}</label>
     ${area(`classes.${i}.description`, c.description, "what it is")}
     ${area(`classes.${i}.definition`, c.definition, "definition")}
     ${area(`classes.${i}.visible_evidence`, c.visible_evidence, "visible evidence")}
     ${area(`classes.${i}.acceptable_variation`, c.acceptable_variation, "still acceptable")}
     <label>default severity ${select(`classes.${i}.default_severity`, c.default_severity || sev[0], sev, "default severity")}</label>
    </div>
    <table><caption>severity rules (all conditions of a row must hold)
      <button type="button" data-add-rule="${i}">add a rule</button></caption>
     <tr><th>severity</th>${RULE_KEYS.map((k) => `<th>${k.replace("min_", "≥ ").replace("_", " ")}</th>`).join("")}<th>in region</th><th></th></tr>
     ${(c.severity_rules || []).map((r, j) => `<tr>
       <td>${select(`classes.${i}.severity_rules.${j}.severity`, r.severity, sev, "rule severity")}</td>
       ${RULE_KEYS.map((k) => `<td>${input(`classes.${i}.severity_rules.${j}.${k}`, r[k], `data-number="1" aria-label="${k}" inputmode="decimal"`)}</td>`).join("")}
       <td>${select(`classes.${i}.severity_rules.${j}.region`, r.region || "", ["", ...regionNames], "rule region")}</td>
       <td><button type="button" data-remove-rule="${i}.${j}">remove</button></td></tr>`).join("")}
    </table>
    <table><caption>gallery: gold examples and hard negatives (frame ids)
      <button type="button" data-add-example="${i}">add an example</button></caption>
     ${(c.gallery || []).map((g, j) => `<tr>
       <td>${input(`classes.${i}.gallery.${j}.frame_id`, g.frame_id, 'aria-label="frame id"')}</td>
       <td>${select(`classes.${i}.gallery.${j}.kind`, g.kind || "gold", ["gold", "hard_negative"], "example kind")}</td>
       <td>${input(`classes.${i}.gallery.${j}.note`, g.note, 'aria-label="note"')}</td>
       <td><button type="button" data-remove-example="${i}.${j}">remove</button></td></tr>`).join("")}
    </table>
   </fieldset>`).join("");
  renderDisposition(sev);
  renderRegions();
}

function renderDisposition(sev) {
  doc.disposition = doc.disposition || {};
  const rows = [...(doc.classes || []).map((c) => c.name), ...("default" in doc.disposition ? ["default"] : [])];
  $("disposition").innerHTML = `<tr><th>class</th>${sev.map((s) => `<th>${esc(s)}</th>`).join("")}</tr>` +
    rows.map((name) => `<tr data-row="${esc(name)}"><td>${esc(name)}</td>${sev.map((s) => `<td>${select(
      `disposition.${name}.${s}`, (doc.disposition[name] || {})[s] || "", ["", ...cfg.dispositions], `${name} ${s}`)}</td>`).join("")}</tr>`).join("");
}

function renderRegions() {
  doc.regions = doc.regions || [];
  $("regions").innerHTML = `<tr><th>name</th><th>x0</th><th>y0</th><th>x1</th><th>y1</th><th></th></tr>` +
    doc.regions.map((r, i) => `<tr><td>${input(`regions.${i}.name`, r.name, 'aria-label="region name"')}</td>${[0, 1, 2, 3].map((k) =>
      `<td>${input(`regions.${i}.rect.${k}`, r.rect[k], `data-number="1" aria-label="rect ${k}"`)}</td>`).join("")}
      <td><button type="button" data-remove-region="${i}">remove</button></td></tr>`).join("");
  syncReference();
}

function setPath(path, raw, numeric) {
  const keys = path.split(".");
  let at = doc;
  for (const k of keys.slice(0, -1)) {
    if (at[k] === undefined) at[k] = {};
    at = at[k];
  }
  const last = keys.at(-1);
  const value = numeric ? (raw.trim() === "" ? undefined : Number(raw)) : raw;
  if (value === undefined || value === "") { if (Array.isArray(at)) at[last] = value ?? 0; else delete at[last]; }
  else at[last] = value;
}

document.addEventListener("input", (e) => {
  const path = e.target.dataset?.path;
  if (!path || !doc) return;
  setPath(path, e.target.value, e.target.dataset.number === "1");
});
document.addEventListener("change", (e) => {
  const t = e.target;
  if (!t.dataset?.path || !doc) return;
  if (t.dataset.rename) { renameClass(t); return; }
  if (t.dataset.path.startsWith("regions.")) syncReference();
});

function renameClass(t) {
  // The disposition table follows a renamed class.
  const i = Number(t.dataset.path.split(".")[1]);
  const old = t.closest("fieldset").dataset.class;
  const now = doc.classes[i].name;
  if (old !== now && doc.disposition && old in doc.disposition) {
    doc.disposition[now] = doc.disposition[old];
    delete doc.disposition[old];
  }
  render();
}

document.getElementById("editor").addEventListener("click", (e) => {
  const d = e.target.dataset || {};
  const structural = (fn) => { fn(); render(); };
  if (e.target.id === "add-class") structural(() => {
    const sev = doc.severities || ["minor", "major", "critical"];
    let n = 1;
    while (doc.classes.some((c) => c.name === `new_class_${n}`)) n++;
    doc.classes.push({ name: `new_class_${n}`, description: "", kind: "surface", default_severity: sev[0], severity_rules: [] });
    doc.disposition = doc.disposition || {};
    doc.disposition[`new_class_${n}`] = Object.fromEntries(sev.map((s) => [s, "review"]));
  });
  else if (e.target.id === "add-region") structural(() => doc.regions.push({ name: `region_${doc.regions.length + 1}`, rect: [0.25, 0.25, 0.75, 0.75] }));
  else if (d.removeClass !== undefined) structural(() => {
    const [gone] = doc.classes.splice(Number(d.removeClass), 1);
    if (doc.disposition) delete doc.disposition[gone.name];
  });
  else if (d.addRule !== undefined) structural(() => {
    const c = doc.classes[Number(d.addRule)];
    (c.severity_rules = c.severity_rules || []).push({ severity: (doc.severities || ["minor", "major"])[1] || "major", min_area_px: 100 });
  });
  else if (d.removeRule !== undefined) structural(() => { const [i, j] = d.removeRule.split(".").map(Number); doc.classes[i].severity_rules.splice(j, 1); });
  else if (d.addExample !== undefined) structural(() => {
    const c = doc.classes[Number(d.addExample)];
    (c.gallery = c.gallery || []).push({ frame_id: "", kind: "gold", note: "" });
  });
  else if (d.removeExample !== undefined) structural(() => { const [i, j] = d.removeExample.split(".").map(Number); doc.classes[i].gallery.splice(j, 1); });
  else if (d.removeRegion !== undefined) structural(() => doc.regions.splice(Number(d.removeRegion), 1));
});

// ---- the region editor on a reference image ----------------------------------------------------

let ref = null; // {viewer, anno, size}

function openReference() {
  const frame = $("ref-frame").value.trim();
  if (!frame) { flash("name a frame to draw on", true); return; }
  if (ref) ref.viewer.destroy();
  const viewer = OpenSeadragon({
    id: "ref-viewer", prefixUrl: "/static/vendor/openseadragon/images/", showNavigationControl: false,
    drawer: "canvas", gestureSettingsMouse: { clickToZoom: false },
    tileSources: { type: "image", url: `/api/frames/${encodeURIComponent(frame)}/image` },
  });
  const anno = AnnotoriousOSD.createOSDAnnotator(viewer, { drawingEnabled: true, drawingMode: "drag" });
  anno.setDrawingTool("rectangle");
  ref = { viewer, anno, size: null };
  viewer.addHandler("open", () => { ref.size = viewer.world.getItemAt(0).getContentSize(); syncReference(); });
  viewer.addHandler("open-failed", () => flash(`frame ${frame} has no image here`, true));
  const toRect = (a) => {
    const g = a.target.selector.geometry;
    const r = (v, n) => Math.round(Math.min(1, Math.max(0, v / n)) * 1000) / 1000;
    return [r(g.x, ref.size.x), r(g.y, ref.size.y), r(g.x + g.w, ref.size.x), r(g.y + g.h, ref.size.y)];
  };
  anno.on("createAnnotation", (a) => {
    if (a.id.startsWith("region-")) return;
    doc.regions.push({ name: `region_${doc.regions.length + 1}`, rect: toRect(a) });
    renderRegions();
  });
  anno.on("updateAnnotation", (a) => {
    const i = Number(a.id.replace("region-", ""));
    if (a.id.startsWith("region-") && doc.regions[i]) { doc.regions[i].rect = toRect(a); renderRegionsTableOnly(); }
  });
}

let drawing = false; // the region table follows a drag on the image without redrawing the image
function renderRegionsTableOnly() { drawing = true; try { renderRegions(); } finally { drawing = false; } }

function syncReference() {
  if (!ref || !ref.size || drawing) return;
  const { x, y } = ref.size;
  ref.anno.setAnnotations((doc.regions || []).map((r, i) => {
    const [x0, y0, x1, y1] = r.rect.map(Number);
    const bounds = { minX: x0 * x, minY: y0 * y, maxX: x1 * x, maxY: y1 * y };
    return { id: `region-${i}`, bodies: [], target: { annotation: `region-${i}`, selector: {
      type: "RECTANGLE", geometry: { x: bounds.minX, y: bounds.minY, w: bounds.maxX - bounds.minX, h: bounds.maxY - bounds.minY, bounds } } } };
  }));
}

$("ref-open").addEventListener("click", openReference);

// ---- the workflow ------------------------------------------------------------------------------

async function save() {
  const version = $("version").value.trim();
  if (!version) { flash("name the new version", true); $("version").focus(); return null; }
  doc.version = version;
  const body = { product: product(), document: doc, migration_notes: $("notes").value, replaces: draftVersion === version ? draftVersion : "" };
  try {
    const d = await api("POST", "/api/taxonomy/drafts", body);
    draftVersion = d.version;
    $("draft-state").textContent = `draft state: ${d.state}`;
    flash(`saved draft v${d.version}`);
    await loadVersions();
    return d;
  } catch (e) {
    flash("not saved (your edits are kept): " + e.message, true);
    return null;
  }
}

async function step(label, call) {
  try {
    const out = await call();
    flash(label(out));
    await loadVersions();
    return out;
  } catch (e) {
    flash(e.message, true);
    return null;
  }
}

$("save").addEventListener("click", save);
$("submit-review").addEventListener("click", async () => {
  if (!draftVersion && !(await save())) return;
  const d = await step((o) => `v${o.version} is ${o.state}`, () => api("POST", "/api/taxonomy/drafts/submit", { product: product(), version: draftVersion }));
  if (d) $("draft-state").textContent = `draft state: ${d.state}`;
});
if (cfg.can_approve) {
  $("approve").addEventListener("click", async () => {
    if (!draftVersion) { flash("save and submit a draft first", true); return; }
    const out = await step((o) => `published v${o.version}${o.relabel_classes.length ? "; labels to look at again: " + o.relabel_classes.join(", ") : ""}`,
      () => api("POST", "/api/taxonomy/drafts/approve", { product: product(), version: draftVersion, comment: $("review-comment").value }));
    if (out) {
      $("draft-state").textContent = `published v${out.version}`;
      $("from").value = `p:${out.previous_version}`;
      $("to").value = `p:${out.version}`;
      draftVersion = "";
      await showDiff();
    }
  });
  $("reject").addEventListener("click", async () => {
    const d = await step((o) => `v${o.version} sent back to draft`, () => api("POST", "/api/taxonomy/drafts/reject", { product: product(), version: draftVersion, comment: $("review-comment").value }));
    if (d) $("draft-state").textContent = `draft state: ${d.state}`;
  });
}

// ---- the difference, side by side --------------------------------------------------------------

async function showDiff() {
  const from = $("from").value.split(/:(.*)/s)[1];
  const to = $("to").value.split(/:(.*)/s)[1];
  if (!from || !to) return;
  const q = new URLSearchParams({ product: product(), from_version: from, to_version: to });
  let d;
  try { d = await api("GET", `/api/taxonomy/diff?${q}`); } catch (e) { flash(e.message, true); return; }
  const list = (title, xs) => xs.length ? `${title}: <b>${xs.map(esc).join(", ")}</b>. ` : "";
  $("summary").innerHTML = `v${esc(d.from_version)} → v${esc(d.to_version)}: ${d.changes.length} change(s). ` +
    list("added", d.added_classes) + list("removed", d.removed_classes) +
    list("redefined (labels get a second look)", d.redefined_classes) + list("rules changed", d.rule_changed_classes);
  const show = (j) => { if (!j) return ""; try { const v = JSON.parse(j); return typeof v === "string" ? v : JSON.stringify(v, null, 1); } catch (e) { return j; } };
  $("diff").innerHTML = `<div class="head">field</div><div class="head">v${esc(d.from_version)}</div><div class="head">v${esc(d.to_version)}</div>` +
    d.changes.map((c) => `<div class="path" title="${esc(c.category)}">${esc(c.path)}</div>
      <div class="old">${esc(show(c.old_json))}</div><div class="new">${esc(show(c.new_json))}</div>`).join("");
}

$("compare").addEventListener("submit", (e) => { e.preventDefault(); showDiff(); });
$("pick").addEventListener("submit", async (e) => {
  e.preventDefault();
  try { await loadVersions(); await openSelected(); } catch (err) { flash(err.message, true); }
});

(async () => {
  try {
    await loadVersions();
    await openSelected();
  } catch (e) {
    flash(e.message, true);
  }
  document.body.dataset.ready = "taxonomy";
})();
