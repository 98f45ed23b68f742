// Progressive enhancement for the console: every page works without this file.
"use strict";

// Tabs: panels are all visible without JavaScript; with it, one at a time.
function setUpTabs(container) {
  const tabs = Array.from(container.querySelectorAll(":scope > .tab-list > .tab"));
  const panels = Array.from(container.querySelectorAll(":scope > .tab-panel"));
  if (tabs.length === 0) return;
  container.classList.add("tabs-on");
  function show(id) {
    for (const tab of tabs) {
      const on = tab.dataset.tab === id;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.classList.toggle("active", on);
    }
    for (const panel of panels) panel.hidden = panel.id !== id;
  }
  for (const tab of tabs) {
    tab.addEventListener("click", (event) => {
      event.preventDefault();
      show(tab.dataset.tab);
    });
  }
  // Open the first tab with an error, else the first one.
  const withError = tabs.find((tab) => tab.classList.contains("tab-error"));
  show((withError || tabs[0]).dataset.tab);
}

// Live counts on an action's page, through the Server-Sent Events stream.
function format(n) {
  return Number(n).toLocaleString("en-GB");
}

function totals(stats) {
  const channels = Object.keys(stats.deliveries);
  const sum = (what) => channels.reduce((acc, c) => acc + stats.deliveries[c][what], 0);
  const reached = Object.values(stats.by_country).reduce((acc, c) => acc + c.recipients, 0);
  return {
    recipients: Object.values(stats.recipients).reduce((a, b) => a + b, 0),
    sent: sum("sent"),
    delivered: sum("delivered"),
    failed: sum("failed"),
    rate: reached ? (100 * stats.responses.people / reached).toFixed(1) + "%" : "—",
  };
}

// A time as the page prints it: "07 Dec 06:12:03 UTC".
function formatTime(iso) {
  if (!iso) return "—";
  const parts = new Intl.DateTimeFormat("en-GB", {
    timeZone: "UTC", day: "2-digit", month: "short",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
  }).formatToParts(new Date(iso));
  const part = (type) => (parts.find((p) => p.type === type) || {}).value;
  return `${part("day")} ${part("month")} ${part("hour")}:${part("minute")}:${part("second")} UTC`;
}

// On a hub: each section's recipients and the network's, summed as the page shows them.
function addRecipientTotals(stats) {
  const sum = (part) => Object.values(part.recipients || {}).reduce((a, b) => a + b, 0);
  for (const part of Object.values(stats.sections || {})) part.recipients_total = sum(part);
  if (stats.network) stats.network.recipients_total = sum(stats.network);
}

function lookup(stats, path) {
  return path.split(".").reduce((node, key) => (node == null ? undefined : node[key]), stats);
}

function renderCountries(tbody, byCountry) {
  const codes = Object.keys(byCountry).sort();
  const rows = codes.map((code) => {
    const row = document.createElement("tr");
    const c = byCountry[code];
    for (const [value, numeric] of [[code, false], [c.recipients, true], [c.people, true], [c.actions, true]]) {
      const cell = document.createElement("td");
      cell.textContent = numeric ? format(value) : value;
      if (numeric) cell.className = "num";
      row.appendChild(cell);
    }
    return row;
  });
  if (rows.length) tbody.replaceChildren(...rows);
}

function setUpLiveStats(main) {
  const url = main.dataset.liveStats;
  if (!url || !window.EventSource) return;
  const status = document.querySelector("[data-live-status]");
  const chart = document.querySelector("[data-chart-img]");
  let chartTimer = null;
  const source = new EventSource(url);
  source.addEventListener("open", () => {
    if (status) status.textContent = "Live: counts update as they come in.";
  });
  source.addEventListener("error", () => {
    if (status) status.textContent = "Reconnecting to live counts…";
  });
  source.addEventListener("stats", (event) => {
    const stats = JSON.parse(event.data);
    stats.totals = totals(stats);
    addRecipientTotals(stats);
    for (const el of document.querySelectorAll("[data-stat]")) {
      const value = lookup(stats, el.dataset.stat);
      if (value === undefined) continue;
      let text;
      if (el.dataset.format === "time") text = formatTime(value);
      else text = typeof value === "number" ? format(value) : String(value ?? "");
      if (el.textContent !== text) {
        el.textContent = text;
        el.classList.remove("bumped");
        void el.offsetWidth; // restart the highlight animation
        el.classList.add("bumped");
      }
    }
    const tbody = document.querySelector("[data-countries]");
    if (tbody) renderCountries(tbody, stats.by_country);
    if (chart && !chartTimer) {
      // At most one chart reload a second, however fast counts arrive.
      chartTimer = setTimeout(() => {
        chartTimer = null;
        chart.src = main.dataset.chart + "?v=" + Date.now();
      }, 1000);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const container of document.querySelectorAll("[data-tabs]")) setUpTabs(container);
  const main = document.querySelector("main[data-live-stats]");
  if (main) setUpLiveStats(main);
});
