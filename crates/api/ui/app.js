"use strict";
(function () {
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const box = document.getElementById("q");
  const out = document.getElementById("results");
  if (box && out) {
    let timer = null, seq = 0;
    const run = () => {
      const q = box.value.trim();
      const mine = ++seq;
      history.replaceState(null, "", q ? "/?q=" + encodeURIComponent(q) : "/");
      fetch("/api/v1/search?n=25&q=" + encodeURIComponent(q), {credentials: "same-origin"})
        .then((r) => r.ok ? r.json() : Promise.reject(r.status))
        .then((data) => {
          if (mine !== seq) return;
          const items = data.results.map((r) =>
            '<div class="card result"><a class="name" href="/r/' + esc(r.name) + '">' + esc(r.name) + "</a>" +
            (r.description ? '<div class="muted">' + esc(r.description) + "</div>" : "") +
            "<div>" + r.tags.map((t) => '<span class="chip">' + esc(t) + "</span>").join("") +
            r.platforms.map((p) => '<span class="chip">' + esc(p) + "</span>").join("") + "</div></div>");
          out.innerHTML = '<div class="muted" id="count">' + data.num_results + (data.num_results_exact === false ? "+" : "") + (data.num_results === 1 && data.num_results_exact !== false ? " repository</div>" : " repositories</div>") + items.join("");
        })
        .catch(() => {});
    };
    box.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(run, 120); });
  }
  document.querySelectorAll("button[data-copy]").forEach((b) => b.addEventListener("click", () => {
    const text = b.getAttribute("data-copy");
    const done = () => { b.textContent = "Copied"; setTimeout(() => (b.textContent = "Copy"), 1500); };
    if (navigator.clipboard) navigator.clipboard.writeText(text).then(done, done); else done();
  }));
  document.querySelectorAll("button[data-delete-tag]").forEach((b) => b.addEventListener("click", () => {
    const repo = b.getAttribute("data-repo"), tag = b.getAttribute("data-delete-tag");
    if (!confirm("Delete tag " + tag + " of " + repo + "? The image stays pullable by digest (and under its other tags) until garbage collection removes untagged images, if configured to.")) return;
    fetch("/v2/" + repo + "/manifests/" + encodeURIComponent(tag), {method: "DELETE", credentials: "same-origin"})
      .then((r) => {
        if (r.status === 202) { const row = b.closest("tr"); if (row) row.remove(); }
        else r.text().then((t) => alert("Delete failed (" + r.status + "): " + t));
      });
  }));
})();
