// What the subject view shows of the findings, as DOM nodes made from the API's JSON (no state, no requests):
// the findings list, least certain first, and the PBVC card's rows.

import { element } from "./client.js";

export const MUST_DECIDE = ["new", "enlarging"]; // sign-off needs a decision on each (review/findings.py)

const SUBTRACTION_ONLY = "new FLAIR hyperintensity on the subtraction image only: no model proposed it";

/** A finding's certainty for the list order: its confidence; a proposal without one (a candidate only the
 * subtraction image shows) 0; the reader's own (added) last. */
function certainty(finding) {
  return finding.confidence ?? (finding.kind === "added" ? Infinity : 0);
}

/** Where a finding comes from when it has no confidence. */
function source(finding) {
  if (finding.kind === "added") return element("span", { className: "muted" }, "reader");
  const subtraction = Boolean(finding.details && finding.details.subtraction_only);
  return element("span", subtraction ? { className: "muted", title: SUBTRACTION_ONLY } : { className: "muted" },
    subtraction ? "subtraction image only" : "no confidence");
}

/** The lesion findings of one interval (proposed and added), least certain first. */
export function sortedLesions(entry, interval) {
  return entry.findings
    .filter((finding) => finding.kind !== "pbvc" && finding.interval === interval)
    .sort((a, b) => certainty(a) - certainty(b) || a.id.localeCompare(b.id, "en", { numeric: true }));
}

/** Proposed new or enlarging findings (any interval) without a decision: what blocks the sign-off. */
export function undecidedOf(entry) {
  return entry.findings.filter((finding) => MUST_DECIDE.includes(finding.class) && finding.decision === null);
}

export function describeDecision(finding) {
  const decision = finding.decision;
  if (decision === null) return MUST_DECIDE.includes(finding.class) ? "awaiting your decision" : "no decision (optional)";
  const words = {
    confirm: "confirmed", reject: `rejected (${decision.reason})`, reclassify: `reclassified as ${decision.status}`,
    edit_mask: "mask edited", add: "added",
  }[decision.action] || decision.action;
  return `${words} by ${decision.reviewer}`;
}

/** One row of the findings list: class colour, id and class now (and as proposed), confidence, volumes, decision. */
export function findingItem(finding, selected) {
  const shown = finding.current_class ?? "rejected";
  const was = finding.class && finding.class !== finding.current_class ? ` (proposed ${finding.class})` : "";
  const volume = `${Math.round(finding.baseline_volume_mm3 ?? 0)} → ${Math.round(finding.followup_volume_mm3 ?? 0)} mm³`;
  const classes = [selected ? "selected" : "", MUST_DECIDE.includes(finding.class) ? "must" : "",
    finding.decision ? "decided" : ""];
  return element("li", {
    className: classes.join(" ").trim(), dataset: { finding: finding.id }, "aria-selected": String(selected),
  },
  element("span", { className: `chip ${finding.kind === "added" ? "added" : shown.split(" ")[0]}` }),
  element("span", { className: "what" }, `${finding.id.split(":")[1]} ${shown.replace("_", " ")}${was.replace("_", " ")}`),
  finding.confidence === null ? source(finding)
    : element("span", { className: "muted" }, `conf. ${finding.confidence.toFixed(2)}`),
  element("span", { className: "decision" }, `${volume} · ${describeDecision(finding)}`));
}

/** The PBVC card's rows (dt, dd nodes) for an interval's PBVC finding. */
export function pbvcRows(finding) {
  const details = finding.details || {};
  const number = (value, digits, unit = "") => (value === null || value === undefined ? "–"
    : `${value.toFixed(digits)}${unit}`);
  const flags = details.qc_flags || [];
  const decision = finding.decision;
  const rows = [
    ["PBVC", number(details.pbvc_percent, 2, " %")],
    ["annualised", number(details.pbvc_annualized_percent, 2, " %/year")],
    ["interval", number(details.years, 2, " years")],
    ["beyond the pathological cut-off", details.pbvc_beyond_pathological_cutoff ? "yes" : "no"],
    ["alignment correlation", number(details.alignment_correlation, 3)],
    ["QC flags", flags.length ? flags.join(", ") : "none"],
    ["decision", decision ? `${decision.action}${decision.reason ? ` (${decision.reason})` : ""} by ${decision.reviewer}`
      : "none yet"],
  ];
  return rows.flatMap(([name, value]) => [element("dt", {}, name),
    element("dd", name === "QC flags" && flags.length ? { className: "qc" } : {}, value)]);
}
