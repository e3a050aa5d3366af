// Shared by every page: fetch with the session's CSRF header, one renewal of a lapsed session
// token, messages in the flash bar. No page ever reloads itself: pages poll data through api().
"use strict";

function csrfToken() {
  const name = document.body.dataset.csrfCookie;
  const hit = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return hit ? decodeURIComponent(hit.slice(name.length + 1)) : "";
}

async function api(method, url, body, options = {}) {
  const send = () => fetch(url, {
    method,
    credentials: "same-origin",
    keepalive: Boolean(options.keepalive), // a request that must finish even if the page is left
    headers: { "content-type": "application/json", [document.body.dataset.csrfHeader]: csrfToken() },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let res = await send();
  if (res.status === 401) {
    // The cookie's token is short-lived; the session behind it renews it (or is over: log in).
    const renewed = await fetch("/auth/refresh", { method: "POST", credentials: "same-origin" });
    if (!renewed.ok) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname);
      throw new Error("session ended");
    }
    res = await send();
  }
  if (!res.ok) {
    let detail = res.statusText;
    try {
      const j = await res.json();
      detail = typeof j.detail === "string" ? j.detail
        : (j.detail || []).map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ");
    } catch (e) { /* not JSON: keep the status text */ }
    const err = new Error(detail);
    err.status = res.status;
    throw err;
  }
  return res.status === 204 ? null : res.json();
}

function flash(text, isError) {
  const el = document.getElementById("flash");
  el.textContent = text;
  el.className = isError ? "err" : "";
}

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function age(seconds) {
  if (seconds < 90) return Math.round(seconds) + " s";
  if (seconds < 5400) return Math.round(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}
