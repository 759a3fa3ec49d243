// The worklist: every subject of the store with its review status, most urgent first.
//
// Urgency, among the subjects awaiting review (pending or in review; signed ones come last): more
// new or enlarging findings first, then the least confident proposal (lowest confidence of an
// undecided lesion finding), then more QC flags (the report's interval flags, on the PBVC finding).

import { api, bindReviewer, element, showMessage, statusClass } from "./client.js";

const ACTIVE = ["new", "enlarging"];

export function summarise(entry) {
  const lesions = entry.findings.filter((finding) => finding.kind !== "pbvc");
  const count = (...classes) => lesions.filter((finding) => classes.includes(finding.current_class)).length;
  const undecided = lesions.filter((finding) => finding.decision === null && finding.confidence !== null);
  const confidences = undecided.map((finding) => finding.confidence);
  const qcFlags = entry.findings.filter((finding) => finding.kind === "pbvc")
    .flatMap((finding) => (finding.details && finding.details.qc_flags) || []);
  const mustDecide = lesions.filter((finding) => ACTIVE.includes(finding.class));
  const sessions = [...new Set(entry.findings.flatMap((finding) => finding.interval.split("-")))].sort();
  return {
    subject: entry.subject, status: entry.status, version: entry.version,
    awaiting: entry.status !== "signed",
    newCount: count("new"), enlargingCount: count("enlarging"), shrinkingCount: count("shrinking", "resolved"),
    leastConfidence: confidences.length ? Math.min(...confidences) : null,
    qcFlags, decided: mustDecide.filter((finding) => finding.decision !== null).length, mustDecide: mustDecide.length,
    visits: entry.sessions ? entry.sessions.map((session) => `ses-${session.session} ${session.date}`)
      : sessions.map((session) => `ses-${session}`), // an older API without dates
    signed: entry.signed ? `${entry.signed.at.slice(0, 10)} by ${entry.signed.reviewer} (v${entry.signed.version})` : "–",
  };
}

export function byUrgency(a, b) {
  const confidence = (row) => (row.leastConfidence === null ? Infinity : row.leastConfidence);
  return (b.awaiting - a.awaiting)
    || (b.newCount + b.enlargingCount) - (a.newCount + a.enlargingCount)
    || confidence(a) - confidence(b)
    || b.qcFlags.length - a.qcFlags.length
    || a.subject.localeCompare(b.subject);
}

function matches(row, filter) {
  if (filter === "all") return true;
  if (filter === "open") return row.awaiting;
  if (filter === "in review") return row.status.startsWith("in review");
  return row.status === filter;
}

function rowOf(row) {
  const cell = (text, className) => element("td", className ? { className } : {}, String(text));
  const link = element("a", { href: `/subjects/sub-${encodeURIComponent(row.subject)}` }, `sub-${row.subject}`);
  return element("tr", { dataset: { subject: row.subject, status: row.status } },
    element("td", {}, link),
    element("td", {}, element("span", { className: `badge ${statusClass(row.status)}` }, row.status)),
    cell(row.visits.join(" → ")),
    cell(row.newCount, "number"), cell(row.enlargingCount, "number"), cell(row.shrinkingCount, "number"),
    cell(row.leastConfidence === null ? "–" : row.leastConfidence.toFixed(2), "number"),
    element("td", { className: row.qcFlags.length ? "qc" : "" }, row.qcFlags.length ? row.qcFlags.join(", ") : "none"),
    cell(`${row.decided} / ${row.mustDecide}`, "number"), cell(row.signed), cell(row.version, "number"));
}

export async function startWorklist() {
  bindReviewer();
  const filter = document.getElementById("status-filter");
  const body = document.querySelector("#worklist tbody");
  let rows = [];
  const render = () => {
    const shown = rows.filter((row) => matches(row, filter.value));
    body.replaceChildren(...(shown.length ? shown.map(rowOf)
      : [element("tr", {}, element("td", { colspan: "11" }, "No subjects with this status."))]));
  };
  filter.addEventListener("change", render);
  try {
    rows = (await api.subjects()).map(summarise).sort(byUrgency);
  } catch (error) {
    showMessage(`The worklist could not be read: ${error.message}`, { error: true, reload: true });
    return;
  }
  render();
  document.body.dataset.ready = "true";
}
