// The frame view: label (first pass), review (second pass) or decide (dispute), keyboard first.
// State lives in `draft`; every change goes through change() so undo can step back. The queue
// figure in the side panel is polled as data: what the user has typed is never re-rendered.
// Next and previous swap the frame in place (no page load): the next frame's data and pictures
// are fetched while the current one is worked on, so moving on waits for no round trip.
"use strict";

const me = JSON.parse(document.getElementById("me-data").textContent);
const POLL_MS = Number(new URLSearchParams(location.search).get("poll")) || 5000;

let view = null; // the frame on screen (the JSON of /api/frames/<id>/view)
let queueName = "";
let firstPass = null;
let lastReview = null;
let mode = "view";

/** Make `v` the frame on screen: what the viewer may do with it follows from its state. */
function setView(v) {
  view = v;
  queueName = new URLSearchParams(location.search).get("queue") || view.queue;
  firstPass = view.labels.filter((l) => l.kind === "label").at(-1);
  lastReview = view.labels.filter((l) => l.kind === "review").at(-1);
  mode = view.state === "open" && me.can.label ? "label"
    : view.state === "first_pass" && me.can.review ? "review"
    : view.state === "disputed" && me.can.decide ? "decide" : "view";
}

let draft = { label: "", severity: "", ambiguous: false, ambiguity_reason: "", regions: [] };
let selected = -1;
let undoStack = [];
let nextId = 1;

// ---- viewer ------------------------------------------------------------------------------------

const viewer = OpenSeadragon({
  id: "viewer",
  prefixUrl: "/static/vendor/openseadragon/images/",
  showNavigationControl: false,
  keyboardNavEnabled: false, // our keys: the viewer's own would pan on w/a/s/d
  drawer: "canvas", // a 2-D canvas draws one still frame fastest (no WebGL context to set up)
  crossOriginPolicy: false, // frames come from this origin (/api/frames/<id>/image)
  immediateRender: true, // one still image: draw the level the view needs at once, no coarse pass
  gestureSettingsMouse: { clickToZoom: false },
});
// Boxes are dragged out (press, drag, release); polygons are clicked point by point.
const anno = AnnotoriousOSD.createOSDAnnotator(viewer, { drawingEnabled: false, drawingMode: "drag" });
let heat = null;
const modelOverlays = [];

function imageItem() { return viewer.world.getItemAt(0); }

viewer.addHandler("open", () => {
  const item = imageItem();
  // A frame left before its picture opened: the one on screen now opens its own.
  const absolute = (url) => new URL(url, location.href).href;
  if (!item || absolute(item.source.url) !== absolute(view.image_url)) return;
  const shown = view;
  // The heatmap is an overlay picture over the whole frame (loaded with the frame's data): the
  // viewer keeps one image in its world, so the regions layer maps pixels exactly.
  if (view.heatmap_url) {
    const size = item.getContentSize();
    heat = pictures.get(view.heatmap_url) || new Image();
    pictures.delete(view.heatmap_url);
    if (!heat.src) heat.src = view.heatmap_url;
    heat.alt = "";
    heat.className = "heatmap";
    heat.style.opacity = String(heatOpacity());
    viewer.addOverlay({ element: heat, location: item.imageToViewportRectangle(0, 0, size.x, size.y) });
  }
  modelOverlays.length = 0;
  for (const r of view.model.regions) {
    const el = document.createElement("div");
    el.className = "model-region";
    el.title = `model: ${r.named_region || "region"} ${r.peak_score.toFixed(2)}`;
    el.style.display = document.getElementById("model-regions").checked ? "" : "none";
    viewer.addOverlay({ element: el, location: item.imageToViewportRectangle(r.x_min, r.y_min, r.x_max - r.x_min, r.y_max - r.y_min) });
    modelOverlays.push(el);
  }
  syncAnnotations();
  // Shown means drawn: the image's tiles are loaded and the viewer has painted them (the
  // animation frame after the load runs after the viewer's draw of that frame).
  const drawn = () => requestAnimationFrame(() => {
    if (view !== shown) return;
    document.body.dataset.viewerOpen = "1";
    markShown();
  });
  if (item.getFullyLoaded()) drawn();
  else {
    const wait = (e) => { if (e.fullyLoaded) { item.removeHandler("fully-loaded-change", wait); drawn(); } };
    item.addHandler("fully-loaded-change", wait);
  }
});

// When the frame is on screen and the form takes keys: the moment an inspector can work on it.
function markShown() {
  if (document.body.dataset.viewerOpen && document.body.dataset.ready && !document.body.dataset.shownAt) {
    document.body.dataset.shownAt = String(performance.timeOrigin + performance.now());
  }
}

function heatOpacity() {
  return document.getElementById("heat-on").checked ? Number(document.getElementById("heat-opacity").value) / 100 : 0;
}
function applyHeat() { if (heat) heat.style.opacity = String(heatOpacity()); }
document.getElementById("heat-on").addEventListener("change", applyHeat);
document.getElementById("heat-opacity").addEventListener("input", applyHeat);
document.getElementById("model-regions").addEventListener("change", (e) => {
  modelOverlays.forEach((el) => { el.style.display = e.target.checked ? "" : "none"; });
});

// ---- regions <-> annotations -------------------------------------------------------------------

function toAnnotation(r) {
  const bounds = r.type === "box"
    ? { minX: r.x_min, minY: r.y_min, maxX: r.x_max, maxY: r.y_max }
    : { minX: Math.min(...r.points.map((p) => p[0])), minY: Math.min(...r.points.map((p) => p[1])),
        maxX: Math.max(...r.points.map((p) => p[0])), maxY: Math.max(...r.points.map((p) => p[1])) };
  const selector = r.type === "box"
    ? { type: "RECTANGLE", geometry: { x: r.x_min, y: r.y_min, w: r.x_max - r.x_min, h: r.y_max - r.y_min, bounds } }
    : { type: "POLYGON", geometry: { points: r.points, bounds } };
  return { id: r.id, bodies: [], target: { annotation: r.id, selector } };
}

function fromAnnotation(a) {
  const s = a.target.selector;
  if (s.type === "RECTANGLE") {
    const g = s.geometry;
    return { id: a.id, type: "box", x_min: Math.max(0, Math.round(g.x)), y_min: Math.max(0, Math.round(g.y)),
             x_max: Math.max(0, Math.round(g.x + g.w)), y_max: Math.max(0, Math.round(g.y + g.h)) };
  }
  return { id: a.id, type: "polygon", points: s.geometry.points.map((p) => [Math.max(0, p[0]), Math.max(0, p[1])]) };
}

// The draft is the truth; the annotator shows it. Annotorious also reports changes made through
// its API, so each handler acts only on a real difference (an echo changes nothing, adds no undo).
function syncAnnotations() {
  const shown = new Map(anno.getAnnotations().map((a) => [a.id, a]));
  for (const r of draft.regions) {
    const a = toAnnotation(r);
    if (!shown.has(r.id)) anno.addAnnotation(a);
    else if (JSON.stringify(fromAnnotation(shown.get(r.id))) !== JSON.stringify(r)) anno.updateAnnotation(a);
    shown.delete(r.id);
  }
  for (const id of shown.keys()) anno.removeAnnotation(id);
}

anno.on("createAnnotation", (a) => {
  if (draft.regions.some((r) => r.id === a.id)) return;
  change(() => { draft.regions.push(fromAnnotation(a)); selected = draft.regions.length - 1; }, false);
});
anno.on("updateAnnotation", (a) => {
  const i = draft.regions.findIndex((r) => r.id === a.id);
  const now = fromAnnotation(a);
  if (i >= 0 && JSON.stringify(now) !== JSON.stringify(draft.regions[i])) change(() => { draft.regions[i] = now; selected = i; }, false);
});
// A region picked with the mouse is the selected one: arrows move it, Delete removes it.
anno.on("selectionChanged", (picked) => {
  const i = draft.regions.findIndex((r) => r.id === picked[0]?.id);
  if (i >= 0 && i !== selected) { selected = i; renderDraft(); }
});
anno.on("deleteAnnotation", (a) => {
  if (!draft.regions.some((r) => r.id === a.id)) return;
  change(() => { draft.regions = draft.regions.filter((r) => r.id !== a.id); selected = -1; }, false);
});

// ---- the draft ----------------------------------------------------------------------------------

function snapshot() { return JSON.parse(JSON.stringify({ draft, selected })); }

function change(fn, redraw = true) {
  undoStack.push(snapshot());
  fn();
  if (redraw) syncAnnotations();
  renderDraft();
}

function undo() {
  const last = undoStack.pop();
  if (!last) { flash("nothing to undo"); return; }
  draft = last.draft;
  selected = last.selected;
  syncAnnotations();
  renderDraft();
}

// Annotorious draws regions on a WebGL canvas that repaints on every pan, zoom and new frame; on a
// machine without a GPU each repaint the page shows costs about 100 ms. The canvas stays out of the
// page (display: none, its GL state kept) while it has nothing on it and nothing is being drawn.
function showLayer() {
  document.getElementById("viewer").classList.toggle("no-regions", !(draft.regions.length > 0 || tool));
}

function renderDraft() {
  showLayer();
  document.querySelectorAll("#classes button").forEach((b) => b.classList.toggle("on", b.dataset.class === draft.label));
  document.querySelectorAll("#severities button").forEach((b) => b.classList.toggle("on", b.dataset.severity === draft.severity));
  document.getElementById("ambiguous").checked = draft.ambiguous;
  document.getElementById("ambiguity-reason").value = draft.ambiguity_reason;
  renderCard(draft.label || view.model.defect_class || view.best_class);
  document.getElementById("regions").innerHTML = draft.regions.map((r, i) => `
    <li class="${i === selected ? "sel" : ""}">${r.type === "box"
      ? `box ${r.x_min},${r.y_min} – ${r.x_max},${r.y_max}` : `polygon of ${r.points.length} points`}
      <button type="button" data-delete="${i}">delete</button></li>`).join("");
}

// A defect class comes with a severity to start from (shown, changed with s): the model's when it
// named the same class, else the class's default in the taxonomy. "good" has none.
function pickClass(c) {
  change(() => {
    draft.label = c;
    if (c === "good") draft.severity = "";
    else if (!draft.severity) draft.severity = suggestedSeverity(c);
  }, false);
}

function suggestedSeverity(c) {
  const known = (s) => (me.severities.includes(s) ? s : "");
  if (c === view.model.defect_class && known(view.model.severity)) return view.model.severity;
  return known(cards?.classes?.[c]?.default_severity || "");
}

// ---- the class's definition and gallery, from the published taxonomy ----------------------------

let cards = null; // {available, reason, classes: {name: card}} once the taxonomy answered
const cardCache = new Map(); // "product version" -> the promise of its cards
const cardsDone = new Map(); // "product version" -> its cards, once they came

function cardsOf(product, version) {
  const key = `${product} ${version}`;
  if (!cardCache.has(key)) {
    const q = new URLSearchParams({ product, version });
    cardCache.set(key, api("GET", `/api/taxonomy/classes?${q}`).then((c) => { cardsDone.set(key, c); return c; }, (e) => {
      cardCache.delete(key); // asked again for the next frame of this taxonomy
      return { available: false, reason: e.message, classes: {} };
    }));
  }
  return cardCache.get(key);
}

async function loadCards() {
  const shown = view;
  const loaded = await cardsOf(view.product, view.taxonomy_version || "");
  if (view !== shown) return;
  cards = loaded;
  renderCard(draft.label || view.model.defect_class || view.best_class);
}

function renderCard(name) {
  const el = document.getElementById("definition");
  const score = view.model.class_scores.find((s) => s.class === name);
  const model = name && name !== "good" ? `<div class="muted">the model gives ${score ? score.score.toFixed(2) : "no score"}</div>` : "";
  if (!name) { el.innerHTML = `<span class="muted">pick a class (1–9)</span>`; return; }
  if (!cards) { el.innerHTML = `<b>${esc(name)}</b>${model}<div class="muted">definition loading…</div>`; return; }
  const c = cards.classes[name];
  if (!c) {
    el.innerHTML = `<b>${esc(name)}</b>${model}<div class="muted">${cards.available
      ? (name === "good" ? "no defect of any class" : "no definition in this taxonomy version")
      : "definitions unavailable: " + esc(cards.reason)}</div>`;
    return;
  }
  const field = (title, text) => text ? `<div><i>${title}</i>: ${esc(text)}</div>` : "";
  const gallery = (kind, title) => {
    const items = c.gallery.filter((g) => g.kind === kind);
    return items.length ? `<div><i>${title}</i></div><div class="gallery ${kind}">${items.map((g) =>
      `<figure><img src="${esc(g.image_url)}" alt="${esc(title)} ${esc(g.frame_id)}"
        onerror="this.replaceWith(Object.assign(document.createElement('span'),{className:'muted',textContent:'frame not in this plant\'s ledger'}))">
        <figcaption>${esc(g.note || g.frame_id.slice(0, 12))}</figcaption></figure>`).join("")}</div>` : "";
  };
  el.innerHTML = `<b>${esc(c.name)}</b> <span class="muted">(${esc(c.kind)}, taxonomy ${esc(cards.version)})</span>${model}
    ${field("what it is", c.description)}${field("definition", c.definition)}
    ${field("visible evidence", c.visible_evidence)}${field("still acceptable", c.acceptable_variation)}
    <div><i>severity</i>: ${esc(c.default_severity)} by default${c.severity_rules.length ? "; " + c.severity_rules.map(esc).join("; ") : ""}</div>
    <div><i>line does</i>: ${Object.entries(c.disposition).map(([s, d]) => `${esc(s)} → ${esc(d)}`).join(", ")}</div>
    ${gallery("gold", "gold examples")}${gallery("hard_negative", "hard negatives (look alike, are not)")}`;
}

function fromLabel(l) {
  if (!l) return;
  draft = {
    label: l.label, severity: l.severity || "", ambiguous: l.ambiguous, ambiguity_reason: l.ambiguity_reason || "",
    regions: [
      ...l.boxes.map((b) => ({ id: `r${nextId++}`, type: "box", x_min: b.x_min, y_min: b.y_min, x_max: b.x_max, y_max: b.y_max })),
      ...l.polygons.map((p) => ({ id: `r${nextId++}`, type: "polygon", points: p.points })),
    ],
  };
}

function labelBody() {
  return {
    label: draft.label,
    severity: draft.severity,
    regions: draft.regions.filter((r) => r.type === "box").map(({ x_min, y_min, x_max, y_max }) => ({ x_min, y_min, x_max, y_max })),
    polygons: draft.regions.filter((r) => r.type === "polygon").map((r) => ({ points: r.points })),
    ambiguous: draft.ambiguous,
    ambiguity_reason: draft.ambiguous ? draft.ambiguity_reason : "",
    comment: document.getElementById("comment").value,
  };
}

function describe(l, title) {
  if (!l) return "";
  const regions = l.boxes.length + l.polygons.length;
  return `<div><b>${esc(title)}</b> by ${esc(l.author_name || l.author)}<br>${esc(l.label)} ${esc(l.severity)}
    · ${regions} region(s)${l.ambiguous ? ` · ambiguous: ${esc(l.ambiguity_reason)}` : ""}
    ${l.accepted === false ? `<br>rejected: ${esc(l.reason)}` : ""}${l.comment ? `<br><i>${esc(l.comment)}</i>` : ""}</div>`;
}

// ---- actions -----------------------------------------------------------------------------------

function boxAtCentre() {
  const item = imageItem();
  if (!item) return;
  const size = item.getContentSize();
  const c = item.viewportToImageCoordinates(viewer.viewport.getCenter(true));
  const w = Math.max(4, Math.round(size.x / 8));
  const h = Math.max(4, Math.round(size.y / 8));
  const x = Math.min(Math.max(0, Math.round(c.x - w / 2)), size.x - w);
  const y = Math.min(Math.max(0, Math.round(c.y - h / 2)), size.y - h);
  change(() => {
    draft.regions.push({ id: `r${nextId++}`, type: "box", x_min: x, y_min: y, x_max: x + w, y_max: y + h });
    selected = draft.regions.length - 1;
  });
}

function polygonAtCentre() {
  const item = imageItem();
  if (!item) return;
  const size = item.getContentSize();
  const c = item.viewportToImageCoordinates(viewer.viewport.getCenter(true));
  const rx = Math.max(3, Math.round(size.x / 16));
  const ry = Math.max(3, Math.round(size.y / 16));
  const cx = Math.min(Math.max(rx, Math.round(c.x)), size.x - rx);
  const cy = Math.min(Math.max(ry, Math.round(c.y)), size.y - ry);
  change(() => {
    draft.regions.push({ id: `r${nextId++}`, type: "polygon", points: [[cx, cy - ry], [cx + rx, cy], [cx, cy + ry], [cx - rx, cy]] });
    selected = draft.regions.length - 1;
  });
}

function nudge(dx, dy, resize) {
  const r = draft.regions[selected];
  if (!r) { flash("select a region first ([ or ])"); return; }
  const size = imageItem().getContentSize();
  const step = Math.max(1, Math.round(size.x / 64));
  if (r.type === "polygon") {
    const xs = r.points.map((p) => p[0]);
    const ys = r.points.map((p) => p[1]);
    if (resize) { // grow or shrink about the centre, kept inside the frame
      const cx = (Math.min(...xs) + Math.max(...xs)) / 2;
      const cy = (Math.min(...ys) + Math.max(...ys)) / 2;
      const f = 1 + 0.1 * (dx || dy);
      change(() => {
        draft.regions[selected].points = r.points.map(([x, y]) => [
          Math.min(size.x, Math.max(0, Math.round(cx + (x - cx) * f))), Math.min(size.y, Math.max(0, Math.round(cy + (y - cy) * f)))]);
      });
    } else {
      const mx = Math.min(Math.max(-Math.min(...xs), dx * step), size.x - Math.max(...xs));
      const my = Math.min(Math.max(-Math.min(...ys), dy * step), size.y - Math.max(...ys));
      change(() => { draft.regions[selected].points = r.points.map(([x, y]) => [x + mx, y + my]); });
    }
    return;
  }
  change(() => {
    const b = draft.regions[selected];
    if (resize) {
      b.x_max = Math.min(size.x, Math.max(b.x_min + 2, b.x_max + dx * step));
      b.y_max = Math.min(size.y, Math.max(b.y_min + 2, b.y_max + dy * step));
    } else {
      const mx = Math.min(Math.max(-b.x_min, dx * step), size.x - b.x_max);
      const my = Math.min(Math.max(-b.y_min, dy * step), size.y - b.y_max);
      b.x_min += mx; b.x_max += mx; b.y_min += my; b.y_max += my;
    }
  });
}

let tool = "";
function drawTool(name) {
  tool = tool === name ? "" : name;
  anno.cancelSelected(); // a shape still selected would take the next click instead of the new tool
  if (tool) anno.setDrawingTool(tool);
  anno.setDrawingEnabled(Boolean(tool));
  showLayer();
  flash(tool ? `drawing a ${tool} with the mouse; press again to stop` : "drawing off");
}

function needReason(what) {
  const box = document.getElementById("reason");
  if (box.value.trim()) return box.value.trim();
  document.getElementById("reason-box").hidden = false;
  box.focus();
  flash(`${what} needs a reason: type it, then press Ctrl+Enter`, true);
  return null;
}

let busy = false;
let claimed = Promise.resolve(true);
async function act(kind) {
  if (busy || !(await claimed)) return;
  if ((mode === "label" || mode === "decide" || kind === "reject") && !draft.label) { flash("pick a class first (1–9)", true); return; }
  if (draft.ambiguous && !draft.ambiguity_reason && kind !== "accept") {
    flash("say why it is ambiguous", true); document.getElementById("ambiguity-reason").focus(); return;
  }
  const frameId = view.frame_id;
  let call;
  if (mode === "label") call = () => api("POST", "/api/labels", { frame_id: frameId, ...labelBody() });
  else if (mode === "review" && kind === "accept") call = () => api("POST", "/api/reviews", { frame_id: frameId, accept: true, reason: "" });
  else if (mode === "review" && kind === "reject") {
    const reason = needReason("A rejection");
    if (reason === null) return;
    call = () => api("POST", "/api/reviews", { frame_id: frameId, accept: false, reason, correction: labelBody() });
  } else if (mode === "decide") {
    const reason = needReason("A decision");
    if (reason === null) return;
    call = () => api("POST", "/api/decisions", { frame_id: frameId, decision: labelBody(), reason });
  } else return;
  // The label travels while the next frame is put on screen (the inspector waits for neither
  // round trip). Should the server refuse it, the frame comes back with the draft as it was.
  const left = { data: view, draft: snapshot(), comment: document.getElementById("comment").value,
                 reason: document.getElementById("reason").value };
  busy = true;
  stayed.delete(frameId);
  const saving = call().then((out) => {
    flash(`saved ${frameId.slice(0, 12)}: ${out.state}`);
    document.body.dataset.savedAt = String(performance.timeOrigin + performance.now());
    document.body.dataset.saved = frameId; // the last label the server confirmed
    return true;
  }, (e) => { notSaved(left, e); return false; });
  try {
    await goNext(false, saving);
  } finally {
    busy = false;
  }
}

// Drafts the server refused, by frame: showing that frame again restores its draft.
const unsaved = new Map();
const stayed = new Set(); // frames whose refusal came while still on them (goNext then stays)

function notSaved(left, e) {
  const id = left.data.frame_id;
  unsaved.set(id, left);
  const said = `${id.slice(0, 12)} not saved: ${e.message}`;
  if (view.frame_id === id) { // refused before the next frame was up: stay on this one
    stayed.add(id);
    restore();
    syncAnnotations();
    renderDraft();
    flash(said + " (your label is as it was)", true);
    return;
  }
  // Back to it at once unless the inspector has started on the frame now shown.
  const started = undoStack.length || document.getElementById("comment").value || document.getElementById("reason").value;
  if (started) { flash(`${said}; press p to go back to it (your label is kept)`, true); return; }
  if (trail.at(-1) === id) trail = trail.slice(0, -1);
  if (mode !== "view") api("DELETE", `/api/claims/${encodeURIComponent(view.frame_id)}`).catch(() => {});
  show(left.data, "push");
  flash(said + " (back on it, your label as it was)", true);
}

/** The refused draft of the frame on screen, if there is one, back in the form. */
function restore() {
  const kept = unsaved.get(view.frame_id);
  if (!kept) return;
  unsaved.delete(view.frame_id);
  draft = kept.draft.draft;
  selected = kept.draft.selected;
  document.getElementById("comment").value = kept.comment;
  document.getElementById("reason").value = kept.reason;
}

// ---- navigation and prefetch -------------------------------------------------------------------
// The next frame is found, its data fetched and its pictures loaded while the current one is
// worked on; moving on then shows it from memory. Claims stay as they were: a frame is claimed
// when it is shown (not when prefetched), a skipped one is released.

const workable = { label: "open", review: "first_pass", decide: "disputed" };
let upcoming = null; // {frame_id, data: Promise<view>}
const pictures = new Map(); // url -> a loaded Image (kept so the browser keeps it decoded)

function preload(url) {
  if (!url || pictures.has(url)) return;
  const img = new Image();
  img.decoding = "async";
  img.src = url;
  pictures.set(url, img);
  img.decode().catch(() => pictures.delete(url)); // a picture that failed is asked for again
  while (pictures.size > 16) pictures.delete(pictures.keys().next().value);
}

// The viewer's picture of a frame, loaded (and its pyramid built) before it is shown; each one
// opens once (closing the viewer frees it).
const sources = new Map(); // image url -> ImageTileSource

function frameData(frameId) {
  return api("GET", `/api/frames/${encodeURIComponent(frameId)}/view`).then((data) => {
    if (data.image_url && !sources.has(data.image_url)) {
      sources.set(data.image_url, new OpenSeadragon.ImageTileSource({ url: data.image_url, crossOriginPolicy: false }));
      while (sources.size > 4) sources.delete(sources.keys().next().value);
    }
    preload(data.heatmap_url);
    return data;
  });
}

async function findNext() {
  const items = await api("GET", `/api/review-queue?limit=200${queueName ? "&queue=" + encodeURIComponent(queueName) : ""}`);
  const wanted = workable[mode] || view.state;
  // Never one just left in this tab (a skipped frame stays open): `p` goes back to those.
  return items.find((i) => i.frame_id !== view.frame_id && !trail.includes(i.frame_id) && i.state === wanted
    && (!i.claimed_by || i.claimed_by === me.subject)) || null;
}

async function prefetch() {
  const from = view;
  try {
    const item = await findNext();
    if (!item || view !== from) return;
    const data = frameData(item.frame_id);
    upcoming = { frame_id: item.frame_id, data };
    await data;
    if (view === from) document.body.dataset.prefetched = item.frame_id;
  } catch (e) {
    if (view === from) upcoming = null; // prefetch is a speed-up only; navigation asks again
  }
}

let trail = JSON.parse(sessionStorage.getItem("linesight.history") || "[]"); // frames left, oldest first

async function goNext(release, saving = Promise.resolve(true)) {
  const from = view;
  // The release need not finish before the next frame shows (keepalive: not even if the tab closes).
  if (release && mode !== "view") api("DELETE", `/api/claims/${encodeURIComponent(view.frame_id)}`, undefined, { keepalive: true }).catch(() => {});
  let data = null;
  // The prefetched frame first (its data and pictures are here already); showing it claims it.
  if (upcoming && upcoming.frame_id !== view.frame_id) data = await upcoming.data.catch(() => null);
  if (!data && mode !== "view" && queueName) {
    const out = await api("POST", "/api/claims", { queue: queueName }).catch(() => null);
    if (out && out.claimed && out.item.frame_id !== view.frame_id) data = await frameData(out.item.frame_id).catch(() => null);
  }
  if (!data) {
    const item = await findNext().catch(() => null);
    if (item) data = await frameData(item.frame_id).catch(() => null);
  }
  if (!data) {
    if (await saving) location.href = "/queue"; // leaving the page: not before the label is kept
    stayed.delete(from.frame_id);
    return;
  }
  // Not if the inspector moved elsewhere meanwhile, or the label was refused while we looked.
  if (view !== from || stayed.delete(view.frame_id)) return;
  trail = [...trail, view.frame_id].slice(-50);
  sessionStorage.setItem("linesight.history", JSON.stringify(trail));
  show(data, "push");
}

async function goPrevious() {
  const prev = trail.at(-1);
  if (!prev) { flash("no previous frame"); return; }
  try {
    const data = await frameData(prev); // asked again: its state moved on when it was worked on
    trail = trail.slice(0, -1);
    sessionStorage.setItem("linesight.history", JSON.stringify(trail));
    if (mode !== "view") api("DELETE", `/api/claims/${encodeURIComponent(view.frame_id)}`, undefined, { keepalive: true }).catch(() => {});
    show(data, "push");
  } catch (e) { flash("previous frame not loaded: " + e.message, true); }
}

// The browser's back and forward buttons move between the frames shown in this tab.
window.addEventListener("popstate", async (e) => {
  const id = e.state?.frame_id;
  if (!id || id === view.frame_id) return;
  try { show(await frameData(id), "none"); } catch (err) { location.reload(); }
});

let queueUpdates = 0;
async function pollQueue() {
  try {
    const stats = await api("GET", "/api/queues");
    const mine = stats.filter((s) => !queueName || s.queue === queueName);
    document.getElementById("queue-depth").textContent = mine.reduce((n, s) => n + s.depth, 0);
    document.getElementById("queue-updates").textContent = ++queueUpdates;
  } catch (e) { flash("queue figure not updated: " + e.message, true); }
}

// ---- keyboard ----------------------------------------------------------------------------------

function typing(el) { return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT"); }

window.addEventListener("keydown", (e) => {
  const help = document.getElementById("help");
  if (e.key === "Escape") { help.hidden = true; document.activeElement.blur(); return; }
  if (typing(e.target)) {
    if (e.key === "Enter" && e.ctrlKey) { e.preventDefault(); document.activeElement.blur(); act(mode === "review" && document.getElementById("reason").value.trim() ? "reject" : "accept"); }
    return;
  }
  if (e.ctrlKey && e.key === "z") { e.preventDefault(); undo(); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const editing = mode !== "view";
  const k = e.key;
  let handled = true;
  if (k === "?") help.hidden = !help.hidden;
  else if (/^[1-9]$/.test(k) && editing) {
    const c = view.classes[Number(k) - 1];
    if (c) pickClass(c);
  } else if ((k === "s" || k === "S") && editing) {
    const list = me.severities;
    const i = list.indexOf(draft.severity);
    const n = k === "s" ? (i + 1) % list.length : (i <= 0 ? list.length - 1 : i - 1);
    change(() => { draft.severity = list[n]; }, false);
  } else if (k === "b") boxAtCentre();
  else if (k === "v") polygonAtCentre();
  else if (k === "d") drawTool("rectangle");
  else if (k === "g") drawTool("polygon");
  else if (k.startsWith("Arrow")) {
    const d = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[k];
    nudge(d[0], d[1], e.shiftKey);
  } else if (k === "]" || k === "[") {
    if (draft.regions.length) {
      selected = (selected + (k === "]" ? 1 : draft.regions.length - 1)) % draft.regions.length;
      anno.setSelected(draft.regions[selected].id);
      renderDraft();
    }
  } else if (k === "Delete" || k === "Backspace") {
    if (selected >= 0) change(() => { draft.regions.splice(selected, 1); selected = draft.regions.length - 1; });
  } else if (k === "m") {
    change(() => { draft.ambiguous = !draft.ambiguous; }, false);
    if (draft.ambiguous) document.getElementById("ambiguity-reason").focus();
  } else if (k === "c") document.getElementById("comment").focus();
  else if (k === "Enter" || k === "a") act("accept");
  else if (k === "r" && mode === "review") act("reject");
  else if (k === "u") undo();
  else if (k === "n") goNext(true);
  else if (k === "p") goPrevious();
  else if (k === "h") { const h = document.getElementById("heat-on"); h.checked = !h.checked; applyHeat(); }
  else if (k === "o") document.getElementById("model-regions").click();
  else if (k === "+" || k === "=") viewer.viewport.zoomBy(1.4);
  else if (k === "-") viewer.viewport.zoomBy(1 / 1.4);
  else if (k === "0") viewer.viewport.goHome();
  else handled = false;
  if (handled) { e.preventDefault(); e.stopPropagation(); }
}, true);

// ---- wiring -------------------------------------------------------------------------------------

document.getElementById("classes").addEventListener("click", (e) => {
  const b = e.target.closest("button"); if (b) pickClass(b.dataset.class);
});
document.getElementById("severities").addEventListener("click", (e) => {
  const b = e.target.closest("button"); if (b) change(() => { draft.severity = b.dataset.severity; }, false);
});
document.getElementById("regions").addEventListener("click", (e) => {
  const i = e.target.dataset.delete;
  if (i !== undefined) change(() => { draft.regions.splice(Number(i), 1); selected = -1; });
});
document.getElementById("ambiguous").addEventListener("change", (e) => change(() => { draft.ambiguous = e.target.checked; }, false));
document.getElementById("ambiguity-reason").addEventListener("change", (e) => change(() => { draft.ambiguity_reason = e.target.value; }, false));

document.getElementById("actions").addEventListener("click", (e) => {
  const id = e.target.closest("button")?.id;
  if (id === "submit" || id === "accept") act("accept");
  else if (id === "reject") act("reject");
  else if (id === "skip") goNext(true);
});

function fmt(x) { return Number(x || 0).toFixed(2); }

/** The side panel's facts about the frame: capture, the model's call, the queue entry. */
function renderFrame() {
  const c = view.capture;
  const m = view.model;
  const id = document.getElementById("frame-id");
  id.textContent = view.frame_id.slice(0, 16);
  id.title = view.frame_id;
  document.title = `LineSight · frame ${view.frame_id.slice(0, 12)}`;
  document.getElementById("state").textContent = view.state;
  document.getElementById("queue-reason").textContent = `${view.queue || "not queued"}: ${view.reason_text}`;
  const part = (word, value) => (value ? ` · ${word} ${esc(value)}` : "");
  document.getElementById("capture").innerHTML = `${esc(c.plant)} · ${esc(c.line)}/${esc(c.station)}${part("camera", c.camera)}`
    + ` · part ${esc(c.part_id)}${part("batch", c.batch)}${part("shift", c.shift)}${part("lighting", c.lighting_profile)}`
    + (c.captured_at ? ` · <span class="muted">${esc(c.captured_at)}</span>` : "");
  document.getElementById("model").innerHTML = `${esc(m.version)}: <b>${esc(m.verdict)}</b> ${esc(m.defect_class || view.best_class)}`
    + ` (${fmt(m.confidence)})${m.severity ? ` · ${esc(m.severity)}` : ""} · anomaly ${fmt(m.anomaly_score)}`;
  document.getElementById("scores").innerHTML = m.class_scores.slice(0, 5).map((s) => `<li>${esc(s.class)} ${fmt(s.score)}</li>`).join("");
  const heatOn = document.getElementById("heat-on");
  heatOn.disabled = !view.heatmap_url;
  document.getElementById("heat-opacity").disabled = !view.heatmap_url;
  document.getElementById("taxonomy-version").textContent = view.taxonomy_version || "?";
  const classes = document.getElementById("classes");
  if (classes.dataset.list !== JSON.stringify(view.classes)) {
    classes.dataset.list = JSON.stringify(view.classes);
    classes.innerHTML = view.classes.map((name, i) =>
      `<button type="button" data-class="${esc(name)}">${i < 9 ? `<kbd>${i + 1}</kbd> ` : ""}${esc(name)}</button>`).join("");
  }
  const titles = { label: "labeling", review: "reviewing", decide: "deciding the dispute", view: "view only" };
  document.getElementById("mode").textContent = titles[mode];
  document.getElementById("earlier").innerHTML = mode === "decide" || mode === "view"
    ? `<div class="labels">${describe(firstPass, "first pass")}${describe(lastReview, "review")}</div>`
    : describe(firstPass, "first pass");
  const form = document.getElementById("form");
  form.hidden = mode === "view";
  document.getElementById("actions").innerHTML = {
    label: `<button type="button" id="submit">submit <kbd>Enter</kbd></button>`,
    review: `<button type="button" id="accept">accept <kbd>a</kbd></button> <button type="button" id="reject">reject with correction <kbd>r</kbd></button>`,
    decide: `<button type="button" id="submit">decide <kbd>Enter</kbd></button>`,
    view: "",
  }[mode] + (mode === "view" ? "" : ` <button type="button" id="skip">skip <kbd>n</kbd></button>`);
  document.getElementById("reason-box").hidden = mode === "label";
  document.getElementById("reason-title").textContent = mode === "decide" ? "Reason for the decision" : "Reason when rejecting";
}

/** Claim the frame on screen for this viewer. Nothing waits for it but an action; a frame someone
 * else holds closes the form and moves on, and one whose state moved on since it was prefetched
 * is shown again as it is now. */
function claim() {
  const shown = view;
  return api("POST", "/api/claims", { frame_id: view.frame_id }).then(async (out) => {
    if (view === shown && out?.item && out.item.state !== view.state) {
      show(await frameData(view.frame_id), "none");
      flash(`this frame moved on to ${view.state} since it was loaded: shown as it is now`, true);
      return false;
    }
    return true;
  }, (e) => {
    if (view !== shown) return false;
    document.getElementById("form").hidden = true;
    document.body.dataset.ready = "refused";
    flash("you cannot work on this frame now: " + e.message, true);
    if (e.status === 409 && queueName) setTimeout(() => { if (view === shown) goNext(false); }, 1500);
    return false;
  });
}

/** Put frame `data` on screen in place of the one shown: the picture, the panel, an empty (or the
 * earlier label's) draft, the URL (`history`: "push", "replace" or "none"). */
function show(data, how) {
  const body = document.body.dataset;
  delete body.shownAt; delete body.ready; delete body.viewerOpen; delete body.prefetched;
  setView(data);
  const url = `/frames/${encodeURIComponent(view.frame_id)}${location.search}`;
  if (how === "push") history.pushState({ frame_id: view.frame_id }, "", url);
  else if (how === "replace") history.replaceState({ frame_id: view.frame_id }, "", url);
  if (how !== "replace") flash("");
  // The draft starts afresh: drawing off, nothing selected, nothing to undo, fields empty.
  if (tool) { tool = ""; anno.setDrawingEnabled(false); }
  draft = { label: "", severity: "", ambiguous: false, ambiguity_reason: "", regions: [] };
  selected = -1;
  undoStack = [];
  anno.cancelSelected();
  // One by one: Annotorious's clearAnnotations() throws in its change observers when the store
  // is empty (the first frame), which left the page without its ready mark.
  for (const a of anno.getAnnotations()) anno.removeAnnotation(a.id);
  heat = null;
  document.getElementById("comment").value = "";
  document.getElementById("reason").value = "";
  document.getElementById("help").hidden = true;
  if (mode === "review" || mode === "decide") fromLabel(mode === "decide" && lastReview ? lastReview : firstPass);
  restore();
  cards = cardsDone.get(`${view.product} ${view.taxonomy_version || ""}`) || null;
  renderFrame();
  renderDraft();
  const source = sources.get(view.image_url);
  sources.delete(view.image_url);
  viewer.open(source || { type: "image", url: view.image_url });
  claimed = mode === "view" ? Promise.resolve(false) : claim();
  upcoming = null;
  if (!cards) loadCards();
  body.ready = mode;
  markShown();
  prefetch();
}

show(JSON.parse(document.getElementById("view-data").textContent), "replace");
pollQueue();
setInterval(pollQueue, POLL_MS);
