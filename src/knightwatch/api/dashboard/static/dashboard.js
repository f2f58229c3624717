// knightwatch dashboard: the live fragment over Server-Sent Events, filters, actions and
// the kill switch. Plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

(function () {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content || "";
  const csrf = meta("kw-csrf");
  const live = document.getElementById("live");
  const liveState = document.getElementById("live-state");
  const notice = document.getElementById("notice");
  const STALE_AFTER_MS = 5000;
  let lastHeard = 0;
  let lastData = null;

  // -- live updates ------------------------------------------------------------------
  function heard(serverTime) {
    lastHeard = Date.now();
    lastData = serverTime ? new Date(serverTime) : new Date();
    document.body.classList.remove("stale");
    liveState.textContent = `live · updated ${lastData.toLocaleTimeString()}`;
  }

  function watchStaleness() {
    if (!lastHeard) return;
    if (Date.now() - lastHeard > STALE_AFTER_MS) {
      document.body.classList.add("stale");
      liveState.textContent =
        `NOT LIVE: no update since ${lastData.toLocaleTimeString()} — what you see may be out of date (reconnecting…)`;
    }
  }

  function connect() {
    const stream = meta("kw-stream");
    if (!stream || !window.EventSource) return;
    const source = new EventSource(stream);
    source.addEventListener("fragment", (event) => {
      const focused = document.activeElement?.id;
      live.innerHTML = event.data;
      applyFilter();
      refreshAges();
      if (focused) document.getElementById(focused)?.focus();
      heard();
    });
    source.addEventListener("alive", (event) => heard(event.data));
    source.addEventListener("problem", (event) => show(event.data, true));
    source.addEventListener("expired", () => {
      source.close();
      window.location.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search);
    });
  }

  // -- ages counted in the browser, so the page does not change every second ----------
  function refreshAges() {
    for (const element of document.querySelectorAll("[data-since]")) {
      const since = Date.parse(element.dataset.since);
      if (Number.isNaN(since)) continue;
      const seconds = Math.max(0, Math.round((Date.now() - since) / 1000));
      element.textContent = seconds < 120 ? `${seconds} s` : `${Math.floor(seconds / 60)} min`;
    }
  }

  // -- filters (fleet page) -------------------------------------------------------------
  const filter = document.getElementById("filter");
  const problems = document.getElementById("problems");
  function applyFilter() {
    if (!filter) return;
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    const onlyProblems = problems && problems.checked;
    let shown = 0, total = 0;
    for (const tile of live.querySelectorAll(".tile")) {
      total += 1;
      const text = tile.dataset.search.toLowerCase();
      const visible = words.every((w) => text.includes(w)) && !(onlyProblems && tile.dataset.tile === "ok");
      tile.hidden = !visible;
      if (visible) shown += 1;
    }
    for (const group of live.querySelectorAll("section.group")) {
      group.hidden = !group.querySelector(".tile:not([hidden])");
    }
    const count = document.getElementById("filter-count");
    if (count) count.textContent = shown === total ? "" : `${shown} of ${total} nodes shown`;
  }
  filter?.addEventListener("input", applyFilter);
  problems?.addEventListener("change", applyFilter);
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }

  // -- actions through the operator API ----------------------------------------------
  function show(message, isError) {
    notice.hidden = false;
    notice.classList.toggle("error", Boolean(isError));
    notice.textContent = message;
  }

  function describe(body, status) {
    if (!body || typeof body !== "object") return `refused (HTTP ${status})`;
    let text = body.error || `refused (HTTP ${status})`;
    if (body.hint) text += `\nhint: ${body.hint}`;
    for (const refusal of body.refusals || []) {
      const about = refusal.subjects?.length ? ` — ${refusal.subjects.join(", ")}` : "";
      text += `\n• ${refusal.check}: ${refusal.reason}${about}`;
    }
    return text;
  }

  async function call(method, url, payload) {
    const response = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(payload || {}),
    });
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    return { ok: response.ok, status: response.status, body };
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const payload = button.dataset.body ? JSON.parse(button.dataset.body) : {};
    if (button.dataset.ask) {
      const answer = window.prompt(button.dataset.ask, "");
      if (answer === null) return;
      payload[button.dataset.field] = answer;
    }
    button.disabled = true;
    try {
      const result = await call(button.dataset.action, button.dataset.url, payload);
      if (result.ok) show(button.dataset.done || "done", false);
      else show(describe(result.body, result.status), true);
    } catch (error) {
      show(`the control plane did not answer: ${error}`, true);
    } finally {
      button.disabled = false;
    }
  });

  // -- the kill switch: two steps, a reason, then the halt's page --------------------
  const kill = document.getElementById("kill");
  const dialog = document.getElementById("kill-dialog");
  if (kill && dialog) {
    const step1 = document.getElementById("kill-step-1");
    const step2 = document.getElementById("kill-step-2");
    const reason = document.getElementById("kill-reason");
    const error = document.getElementById("kill-error");
    const toStep = (second) => {
      step1.hidden = second;
      step2.hidden = !second;
      (second ? document.getElementById("kill-confirm") : reason).focus();
    };
    kill.addEventListener("click", () => { error.hidden = true; dialog.showModal(); toStep(false); });
    document.getElementById("kill-cancel").addEventListener("click", () => dialog.close());
    document.getElementById("kill-back").addEventListener("click", () => toStep(false));
    document.getElementById("kill-next").addEventListener("click", () => {
      if (!reason.value.trim()) {
        error.textContent = "Give a reason: it is recorded with the halt.";
        error.hidden = false;
        reason.focus();
        return;
      }
      document.getElementById("kill-reason-shown").textContent = reason.value.trim();
      toStep(true);
    });
    document.getElementById("kill-confirm").addEventListener("click", async () => {
      const confirm = document.getElementById("kill-confirm");
      confirm.disabled = true;
      try {
        const result = await call("POST", "/api/v1/halts", { reason: reason.value.trim() });
        if (result.ok) {
          window.location.href = `/ui/halts?id=${result.body.halt_id}`;
          return;
        }
        toStep(false);
        error.textContent = describe(result.body, result.status);
        error.hidden = false;
      } catch (e) {
        toStep(false);
        error.textContent = `the control plane did not answer: ${e}`;
        error.hidden = false;
      } finally {
        confirm.disabled = false;
      }
    });
  }

  applyFilter();
  refreshAges();
  heard();
  setInterval(() => { refreshAges(); watchStaleness(); }, 1000);
  connect();
})();
