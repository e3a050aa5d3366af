// The queue page: queue figures and items polled as data; filters stay as the user set them.
"use strict";

const POLL_MS = Number(new URLSearchParams(location.search).get("poll")) || 5000;
const me = JSON.parse(document.getElementById("me-data").textContent);
let items = [];
let updates = 0;

function filters() {
  const f = {};
  document.querySelectorAll("#filters select, #filters input").forEach((s) => { f[s.name] = s.value; });
  return f;
}

function keep(item, f) {
  if (f.station && `${item.line}/${item.station}` !== f.station) return false;
  if (f.best_class && item.best_class !== f.best_class) return false;
  if (f.reason && item.reason !== f.reason) return false;
  if (f.model_version && item.model_version !== f.model_version) return false;
  if (f.queue && item.queue !== f.queue) return false;
  if (f.since && Date.parse(item.created_at) < Date.parse(f.since)) return false;
  if (f.band) {
    const [lo, hi] = f.band.split("-").map(Number);
    const c = item.confidence ?? 0;
    if (c < lo || c >= hi) return false;
  }
  return true;
}

function fillOptions(name, values) {
  // New stations/classes/models appear as options; the chosen one stays chosen.
  const sel = document.querySelector(`#filters select[name=${name}]`);
  const have = new Set([...sel.options].map((o) => o.value));
  [...new Set(values)].filter((v) => v && !have.has(v)).sort().forEach((v) => sel.add(new Option(v, v)));
}

function render() {
  // A name half-typed into an assign box survives the live update (value, focus and caret).
  const typed = new Map([...document.querySelectorAll("#items input.assignee")]
    .filter((el) => el.value || el === document.activeElement)
    .map((el) => [el.nextElementSibling.dataset.frame, { value: el.value, focus: el === document.activeElement, at: el.selectionStart }]));
  const f = filters();
  const rows = items.filter((i) => keep(i, f)).map((i) => `
   <tr data-frame="${esc(i.frame_id)}">
    <td>${i.image_key ? `<img class="thumb" src="/api/frames/${encodeURIComponent(i.frame_id)}/image" alt="frame ${esc(i.frame_id.slice(0, 12))}" loading="lazy">` : ""}</td>
    <td><code title="${esc(i.frame_id)}">${esc(i.frame_id.slice(0, 12))}</code></td>
    <td>${esc(i.line)}/${esc(i.station)}</td><td>${esc(i.queue)}</td>
    <td title="${esc(i.reason)}">${esc(i.reason_text)}</td><td>${esc(i.state)}</td>
    <td>${esc(i.best_class || "no class")}</td><td>${(i.confidence ?? 0).toFixed(2)}</td>
    <td>${esc(i.model_version)}</td><td>${age((Date.now() - Date.parse(i.created_at)) / 1000)}</td>
    <td>${esc(i.claimed_by || i.assigned_to)}</td>
    <td><a href="/frames/${encodeURIComponent(i.frame_id)}">open</a>${me.can.assign ? `
      <input class="assignee" size="8" aria-label="assign ${esc(i.frame_id.slice(0, 12))} to" placeholder="user">
      <button type="button" class="assign" data-frame="${esc(i.frame_id)}">assign</button>` : ""}</td>
   </tr>`);
  document.getElementById("items").innerHTML = rows.join("") || `<tr><td colspan="12" class="muted">nothing waiting</td></tr>`;
  for (const [frame, t] of typed) {
    const el = document.querySelector(`#items button.assign[data-frame="${CSS.escape(frame)}"]`)?.previousElementSibling;
    if (!el) continue;
    el.value = t.value;
    if (t.focus) { el.focus(); el.setSelectionRange(t.at, t.at); }
  }
}

async function poll() {
  try {
    const [stats, queue] = await Promise.all([api("GET", "/api/queues"), api("GET", "/api/review-queue?limit=1000")]);
    for (const s of stats) {
      const card = document.querySelector(`.card[data-queue="${s.queue}"]`);
      if (!card) continue;
      card.querySelector(".depth").textContent = s.depth;
      card.querySelector(".oldest").textContent = s.depth ? age(s.oldest_age_s) : "–";
      card.querySelector(".claimed").textContent = s.claimed;
      card.querySelector(".capacity").textContent = s.capacity_per_shift;
      card.querySelector(".over").textContent = s.over_capacity ? "over capacity" : "";
      card.classList.toggle("over", s.over_capacity);
    }
    items = queue;
    fillOptions("station", items.map((i) => `${i.line}/${i.station}`));
    fillOptions("best_class", items.map((i) => i.best_class));
    fillOptions("model_version", items.map((i) => i.model_version));
    render();
    document.getElementById("updated").textContent = ++updates;
  } catch (e) {
    flash("queue not updated: " + e.message, true);
  }
}

document.querySelectorAll("#filters select, #filters input").forEach((s) => s.addEventListener("change", render));
document.getElementById("items").addEventListener("click", async (e) => {
  const b = e.target.closest("button.assign");
  if (!b) return;
  const who = b.previousElementSibling.value.trim();
  if (!who) { flash("name the person to assign it to", true); b.previousElementSibling.focus(); return; }
  try {
    await api("POST", `/api/frames/${encodeURIComponent(b.dataset.frame)}/assign`, { assignee: who });
    flash(`${b.dataset.frame.slice(0, 12)} assigned to ${who}`);
    poll();
  } catch (err) { flash("not assigned: " + err.message, true); }
});
document.querySelectorAll("button.claim").forEach((b) => b.addEventListener("click", async () => {
  try {
    const out = await api("POST", "/api/claims", { queue: b.dataset.queue });
    if (!out.claimed) { flash(`nothing in ${b.dataset.queue} you can work on`); return; }
    location.href = "/frames/" + encodeURIComponent(out.item.frame_id) + "?queue=" + encodeURIComponent(b.dataset.queue);
  } catch (e) { flash("claim failed: " + e.message, true); }
}));
poll();
setInterval(poll, POLL_MS);
