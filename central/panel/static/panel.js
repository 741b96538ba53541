// meterlink panel: the overview follows the server's events (SSE) and swaps in the fresh
// figures without reloading the page. Nothing else needs a script: every page works without.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  let timer = null;
  async function refresh() {
    timer = null;
    try {
      const resp = await fetch(live.dataset.src, { credentials: "same-origin", cache: "no-store" });
      if (!resp.ok) return;
      live.innerHTML = await resp.text();
      live.dataset.refreshed = String((Number(live.dataset.refreshed) || 0) + 1);
      live.classList.remove("updated");
      void live.offsetWidth;
      live.classList.add("updated");
    } catch (e) {
      // the server is restarting: the next event refreshes
    }
  }
  function soon() { if (!timer) timer = setTimeout(refresh, 300); }
  const events = new EventSource("/events");
  events.addEventListener("coverage", (e) => { live.dataset.version = e.data; soon(); });
  events.addEventListener("status", soon);
})();
