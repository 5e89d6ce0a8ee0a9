// edgefleet console: live regions and confirmations. The pages work without it.
"use strict";
(function () {
  const LIVE_MS = 5000;
  // Ask before destructive forms (data-confirm).
  document.addEventListener("submit", function (ev) {
    const form = ev.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.getAttribute("data-confirm"))) ev.preventDefault();
  });
  // Regions marked data-live (with an id) are refreshed from the same page every few
  // seconds while the tab is visible; a form being edited inside one is left alone.
  const regions = () => Array.from(document.querySelectorAll("[data-live][id]"));
  async function refresh() {
    if (document.hidden || regions().length === 0) return;
    const active = document.activeElement;
    try {
      const resp = await fetch(window.location.href, {credentials: "same-origin",
                                                       headers: {"X-Console-Live": "1"}});
      if (resp.status === 401) { window.location.reload(); return; }  // signed out: say so
      if (!resp.ok || resp.redirected) return;
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      for (const el of regions()) {
        if (active && el.contains(active) && active.matches("input, select, textarea")) continue;
        const fresh = doc.getElementById(el.id);
        if (fresh && fresh.innerHTML !== el.innerHTML) el.innerHTML = fresh.innerHTML;
      }
      document.documentElement.setAttribute("data-refreshed", String(Date.now()));
    } catch (e) { /* offline for a moment: try again next time */ }
  }
  setInterval(refresh, LIVE_MS);
})();
