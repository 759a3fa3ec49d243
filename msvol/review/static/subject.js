// The subject view: both visits side by side, the findings least certain first, the decisions, the PBVC
// card and the sign-off. Data and writes go through the JSON API only (client.js), writes one after the
// other through writes.js.

import { api, bindReviewer, element, showMessage, statusClass } from "./client.js";
import { findingItem, pbvcRows, sortedLesions, undecidedOf } from "./findings_view.js";
import { ViewerPair } from "./viewers.js";
import { writeQueue } from "./writes.js";

const REASONS = ["not a lesion", "artefact", "already present at baseline", "other"];
const $ = (id) => document.getElementById(id);

export async function startSubject(subject) {
  const reviewer = bindReviewer();
  const state = {
    subject, entry: null, version: null, intervals: [], interval: null, selected: null, mode: "view",
    pending: 0, queue: Promise.resolve(), queued: new Set(), stale: false, final: null, imagesShown: false,
    overlayShows: null, // the findings' classes and masks the overlay was drawn with
    timings: { opened: performance.now() },
  };
  const viewers = new ViewerPair($("baseline-canvas"), $("followup-canvas"), {
    onCursor: (mm) => showCursor(mm), onFollowupClick: (mm) => addLesionAt(mm),
  });
  // for tests and scripts: idle once no write is queued and no click for an added lesion is awaited
  window.msvolReview = { state, viewers, idle: () => state.pending === 0 && state.mode !== "add" };

  // ---- reading and showing -------------------------------------------------------------------------
  const lesions = () => sortedLesions(state.entry, state.interval.interval);
  const selectedFinding = () => state.entry.findings.find((finding) => finding.id === state.selected) || null;
  const undecided = () => undecidedOf(state.entry);

  async function refresh() {
    state.entry = await api.subject(subject);
    state.version = state.entry.version;
    render();
    if (state.imagesShown && overlayState() !== state.overlayShows) await showChanges();
  }

  // The overlay follows the decisions: the server draws them into the interval's change map.
  const changesUrl = (interval) => new URL(`/api/subjects/${encodeURIComponent(subject)}/intervals/`
    + `${encodeURIComponent(interval.interval)}/changes.nii.gz?version=${state.version}`, window.location.origin).href;
  const overlayState = () => lesions().map((finding) => `${finding.id}:${finding.current_class}:`
    + `${finding.decision ? finding.decision.mask : ""}`).join(" ");

  async function showChanges() {
    const shows = overlayState();
    try {
      await viewers.setChanges(changesUrl(state.interval));
      state.overlayShows = shows;
    } catch (error) {
      showMessage(`The overlay could not be updated: ${error.message}`, { error: true });
    }
  }

  function render() {
    const { entry } = state;
    $("subject-status").textContent = entry.status;
    $("subject-status").className = `badge ${statusClass(entry.status)}`;
    $("subject-version").textContent = `version ${entry.version}`;
    renderFindings();
    renderPbvc();
    renderSignoff();
  }

  function renderFindings() {
    const items = lesions().map((finding) => {
      const item = findingItem(finding, finding.id === state.selected);
      item.addEventListener("click", () => select(finding.id));
      return item;
    });
    $("finding-list").replaceChildren(...items);
    const finding = selectedFinding();
    for (const id of ["confirm", "reject", "reclassify-to", "edit-mask"]) $(id).disabled = !finding || state.mode !== "view";
  }

  function renderPbvc() {
    const finding = state.entry.findings.find((item) => item.kind === "pbvc" && item.interval === state.interval.interval);
    $("pbvc-card").hidden = !finding;
    if (finding) $("pbvc").replaceChildren(...pbvcRows(finding));
  }

  function renderSignoff() {
    const waiting = undecided();
    const button = $("signoff");
    button.disabled = waiting.length > 0 || state.mode !== "view" || state.entry.status === "signed";
    $("signoff-state").textContent = waiting.length
      ? `${waiting.length} new or enlarging finding(s) still need a decision: ${waiting.map((finding) => finding.id).join(", ")}.`
      : state.entry.status === "signed" ? "Signed; a later change needs an amendment with a reason."
        : state.entry.signed ? "Changed since the last sign-off: signing again amends it (give the reason)."
        : "Every new and enlarging finding has a decision.";
    if (state.entry.signed || state.final) showFinalLinks(); // the last signed report, also while amending
  }

  function showFinalLinks() {
    const base = `/files/sub-${encodeURIComponent(subject)}/final`;
    $("final-html").href = `${base}/report.html`;
    $("final-pdf").href = `${base}/report.pdf`;
    const signed = state.entry.signed;
    $("signed-statement").textContent = state.final ? state.final.signed?.statement || ""
      : signed ? `Signed by ${signed.reviewer} at ${signed.at} (version ${signed.version}).` : "";
    $("final-links").hidden = false;
  }

  function showCursor(halfwayMM) {
    const format = (point) => point.map((value) => value.toFixed(1)).join(", ");
    const followupMM = viewers.toFollowup(halfwayMM);
    $("cursor").textContent = `Cursor: (${format(halfwayMM)}) mm halfway`
      + (followupMM ? ` · (${format(followupMM)}) mm follow-up` : "");
  }

  function select(id) {
    state.selected = id;
    renderFindings();
    const item = document.querySelector(`#finding-list li[data-finding="${CSS.escape(id)}"]`);
    if (item) item.scrollIntoView({ block: "nearest" });
    const finding = selectedFinding();
    if (finding && finding.centroid_mm && state.imagesShown) {
      const halfway = viewers.toHalfway(finding.centroid_mm);
      if (halfway) viewers.moveTo(halfway);
    }
  }

  function step(offset) {
    const list = lesions();
    if (!list.length) return;
    const at = list.findIndex((finding) => finding.id === state.selected);
    select(list[at < 0 ? 0 : (at + offset + list.length) % list.length].id);
  }

  /** After deciding the selected finding: on to the next one still without a decision, in this interval or
   * else in the next interval that has one (so the keyboard path covers every interval of the subject). */
  function advance() {
    const list = lesions();
    const at = list.findIndex((finding) => finding.id === state.selected);
    const open = (finding) => finding.decision === null && !state.queued.has(finding.id);
    const next = [...list.slice(at + 1), ...list.slice(0, Math.max(at, 0))].find(open);
    if (next) {
      select(next.id);
      return;
    }
    const other = state.intervals.find((interval) => interval !== state.interval
      && sortedLesions(state.entry, interval.interval).some(open));
    if (!other) return;
    state.pending += 1; // scripts and tests wait (idle()) until the next interval is shown
    showInterval(other).then(() => {
      const first = lesions().find(open);
      if (first) select(first.id);
    }).finally(() => { state.pending -= 1; });
  }

  // ---- writing ---------------------------------------------------------------------------------------
  const write = writeQueue(state, { reviewer, refresh, nameBox: $("reviewer") });

  function decide(body, label) {
    const finding = selectedFinding();
    if (!finding || finding.kind === "pbvc" || state.mode !== "view") return;
    const queued = write(label, (version, name) => api.decide(subject, finding.id, { ...body, reviewer: name, version }),
      finding.id);
    if (!queued.refused) advance();
  }

  const confirm = () => decide({ action: "confirm" }, "Confirm");

  function reject() {
    const finding = selectedFinding();
    if (!finding || state.mode !== "view") return;
    const dialog = $("reject-dialog");
    $("reject-finding").textContent = finding.id;
    dialog.querySelector("form").reset();
    dialog.showModal();
    dialog.querySelector("input[name=reason]:checked").focus();
  }

  // The dialogs act on "submit" (synchronous with the key or click), not on "close" (a later task), so a
  // write is queued before the next key is handled.
  function submitReject() {
    const dialog = $("reject-dialog");
    const form = new FormData(dialog.querySelector("form"));
    dialog.close();
    decide({ action: "reject", reason: form.get("reason"), note: form.get("note") || null }, "Reject");
  }

  $("reject-dialog").addEventListener("keydown", (event) => {
    if (event.target.tagName === "BUTTON") return; // Enter on a button is that button
    if (event.key === "Enter") {
      event.preventDefault();
      submitReject();
      return;
    }
    const index = Number(event.key) - 1;
    if (event.target.name !== "note" && index >= 0 && index < REASONS.length) {
      $("reject-dialog").querySelector(`input[value="${REASONS[index]}"]`).checked = true;
      event.preventDefault();
    }
  });
  $("reject-dialog").querySelector("form").addEventListener("submit", (event) => {
    if (event.submitter && event.submitter.value === "reject") {
      event.preventDefault();
      submitReject();
    }
  });

  const reclassify = (status) => decide({ action: "reclassify", status }, "Reclassify");
  $("reclassify-to").addEventListener("change", (event) => {
    const status = event.target.value;
    event.target.value = "";
    if (status) reclassify(status);
  });

  function acceptPbvc() {
    write("Accept PBVC", (version, name) => api.decide(subject, `${state.interval.interval}:PBVC`,
      { action: "accept", reviewer: name, version }));
  }

  function overrulePbvc() {
    const reason = $("pbvc-reason").value.trim();
    if (!reason) {
      showMessage("Say why you overrule the brain volume change (the reason box next to Overrule).", { error: true });
      $("pbvc-reason").focus();
      return;
    }
    write("Overrule PBVC", (version, name) => api.decide(subject, `${state.interval.interval}:PBVC`,
      { action: "overrule", reason, reviewer: name, version })).then((done) => { if (done) $("pbvc-reason").value = ""; });
  }

  // ---- adding a missed lesion and editing a mask -----------------------------------------------------
  function setMode(mode) {
    state.mode = mode;
    $("add-hint").hidden = mode !== "add";
    $("add-lesion").setAttribute("aria-pressed", String(mode === "add"));
    $("draw-tools").hidden = mode !== "draw";
    renderFindings();
    renderSignoff();
  }

  function startAdding() {
    if (!state.imagesShown || state.mode === "draw") return;
    setMode(state.mode === "add" ? "view" : "add");
  }

  async function addLesionAt(halfwayMM) {
    if (state.mode !== "add") return;
    setMode("view");
    const result = await write("Add lesion", (version, name) => api.addLesion(subject, {
      interval: state.interval.interval, point_mm: halfwayMM, point_space: "halfway",
      class: $("add-class").value, reviewer: name, version,
    }));
    if (result) select(result.id);
  }

  function startEditing() {
    const finding = selectedFinding();
    if (!finding || !state.imagesShown || state.mode !== "view") return;
    const seed = finding.centroid_mm ? viewers.toHalfway(finding.centroid_mm) : null;
    viewers.startDrawing(seed);
    setTool("pen");
    $("draw-title").textContent = `Editing the mask of ${finding.id}`;
    setMode("draw");
  }

  function setTool(tool) {
    viewers.setTool(tool);
    for (const button of document.querySelectorAll("[data-tool]")) button.classList.toggle("on", button.dataset.tool === tool);
  }

  async function saveMask() {
    const finding = selectedFinding();
    if (!finding || state.mode !== "draw") return;
    if (viewers.drawnVoxels() === 0) {
      showMessage(`The mask of ${finding.id} is empty: draw the lesion, or cancel and reject the finding.`, { error: true });
      return;
    }
    const bytes = await viewers.drawingBytes();
    const result = await write("Save mask", (version, name) => api.editMask(subject, finding.id, bytes,
      { reviewer: name, version, space: "halfway" }), finding.id);
    if (result) stopEditing(); // on failure the drawing stays, so no work is lost
  }

  function stopEditing() {
    viewers.stopDrawing();
    setMode("view");
  }

  // ---- sign-off --------------------------------------------------------------------------------------
  async function signOff() {
    await state.queue; // decisions typed just before must be in before the check
    if ($("signoff").disabled) {
      if (undecided().length) showMessage($("signoff-state").textContent, { error: true });
      return;
    }
    const amending = state.entry.status.startsWith("in review (signed") || state.entry.status === "signed";
    const counts = {};
    for (const finding of state.entry.findings.filter((item) => item.kind !== "pbvc" && item.current_class)) {
      counts[finding.current_class] = (counts[finding.current_class] || 0) + 1;
    }
    $("signoff-summary").textContent = `As ${reviewer() || "(type your name first)"}: findings now `
      + (Object.entries(counts).map(([name, count]) => `${count} ${name}`).join(", ") || "none")
      + ". Signing confirms them as decided.";
    $("amend-label").hidden = !amending;
    const dialog = $("signoff-dialog");
    dialog.querySelector("form").reset();
    dialog.showModal();
    if (amending) dialog.querySelector("input[name=amend]").focus(); // Enter there signs, with the reason
  }

  $("signoff-dialog").querySelector("form").addEventListener("submit", async (event) => {
    if (!event.submitter || event.submitter.value !== "sign") return;
    event.preventDefault();
    const dialog = $("signoff-dialog");
    const amend = new FormData(dialog.querySelector("form")).get("amend") || null;
    dialog.close();
    const final = await write("Sign-off", (version, name) => api.signOff(subject,
      { reviewer: name, version, amend_reason: amend }));
    if (final) {
      state.final = final;
      state.timings.signed = performance.now();
      showFinalLinks();
    }
  });

  // ---- controls and keys -----------------------------------------------------------------------------
  function toggleOverlay() {
    if (!state.imagesShown) return;
    viewers.setOverlay(!viewers.overlay);
    $("toggle-overlay").setAttribute("aria-pressed", String(viewers.overlay));
  }

  function toggleDifference() {
    if (!state.imagesShown) return;
    const shown = !viewers.differenceShown;
    if (!viewers.setDifference(shown)) {
      showMessage("No difference view: the two viewer images are not on one grid.", { error: true });
      return;
    }
    $("toggle-difference").setAttribute("aria-pressed", String(shown));
    const { from_session: from, to_session: to } = state.interval;
    $("baseline-caption").textContent = shown ? `Difference: follow-up minus baseline (ses-${to} − ses-${from})`
      : `Baseline ses-${from}`;
  }

  function cancel() {
    if (state.mode === "add") setMode("view");
    else if (state.mode === "draw") stopEditing();
  }

  for (const button of document.querySelectorAll("[data-layout]")) {
    button.addEventListener("click", () => {
      if (!state.imagesShown) return;
      viewers.setLayout(button.dataset.layout);
      for (const other of document.querySelectorAll("[data-layout]")) other.classList.toggle("on", other === button);
    });
  }
  for (const button of document.querySelectorAll("[data-tool]")) button.addEventListener("click", () => setTool(button.dataset.tool));
  const clicks = {
    "toggle-overlay": toggleOverlay, "toggle-difference": toggleDifference, confirm, reject,
    "edit-mask": startEditing, "add-lesion": startAdding, "pbvc-accept": acceptPbvc, "pbvc-overrule": overrulePbvc,
    signoff: signOff, "draw-undo": () => viewers.undo(), "draw-save": saveMask, "draw-cancel": stopEditing,
  };
  for (const [id, handler] of Object.entries(clicks)) $(id).addEventListener("click", handler);

  const keys = {
    j: () => step(1), k: () => step(-1), c: confirm, r: reject, o: toggleOverlay, s: signOff,
    d: toggleDifference, a: startAdding, e: startEditing, p: acceptPbvc, Escape: cancel,
    N: () => reclassify("new"), E: () => reclassify("enlarging"), S: () => reclassify("stable"), // with Shift
  };
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || document.querySelector("dialog[open]")) return;
    if (event.target.closest && event.target.closest("input, select, textarea")) return;
    const handler = keys[event.key];
    if (!handler || (state.mode === "draw" && event.key !== "Escape" && event.key !== "o")) return;
    event.preventDefault();
    handler();
  });

  // ---- start -----------------------------------------------------------------------------------------
  try {
    [state.entry, state.intervals] = await Promise.all([api.subject(subject), api.intervals(subject)]);
  } catch (error) {
    showMessage(`sub-${subject} could not be read: ${error.message}`, { error: true, reload: true });
    $("viewer-status").textContent = "";
    return;
  }
  state.version = state.entry.version;
  api.startReading(subject).catch((error) => console.warn("reading start not recorded:", error.message));
  const choice = $("interval");
  choice.replaceChildren(...state.intervals.map((interval) => element("option", { value: interval.interval },
    `ses-${interval.from_session} → ses-${interval.to_session}`)));
  $("interval-choice").hidden = state.intervals.length < 2;
  choice.addEventListener("change", () => showInterval(state.intervals.find((item) => item.interval === choice.value)));
  await showInterval(state.intervals[state.intervals.length - 1]);

  async function showInterval(interval) {
    if (state.mode !== "view") cancel();
    state.interval = interval;
    choice.value = interval.interval;
    $("baseline-caption").textContent = `Baseline ses-${interval.from_session}`;
    $("followup-caption").textContent = `Follow-up ses-${interval.to_session}`;
    $("toggle-difference").setAttribute("aria-pressed", "false");
    state.selected = lesions()[0]?.id ?? null;
    state.imagesShown = false; // until this interval's images are drawn: no clicks in the previous one's
    render();
    const images = interval.viewer || {};
    const pair = document.querySelector(".viewer-pair");
    pair.hidden = false;
    if (!images.baseline_flair || !images.followup_flair || !images.changes || !interval.followup_to_halfway) {
      pair.hidden = true;
      $("viewer-status").textContent = `Interval ses-${interval.from_session} → ses-${interval.to_session} has no viewer `
        + "images (analysed by an older msvol): decide from the list, or run `msvol run --force` for the images.";
      return;
    }
    const url = (path) => new URL(path.startsWith("/") ? path
      : `/files/sub-${encodeURIComponent(subject)}/${path}`, window.location.origin).href;
    $("viewer-status").textContent = "Loading the images…";
    try {
      const shows = overlayState();
      await viewers.load({ baseline_flair: url(images.baseline_flair), followup_flair: url(images.followup_flair),
        changes: changesUrl(interval) }, interval);
      state.overlayShows = shows;
    } catch (error) {
      $("viewer-status").textContent = `The images could not be shown: ${error.message}`;
      return;
    }
    state.imagesShown = true;
    state.timings.drawn = state.timings.drawn ?? performance.now();
    $("viewer-status").textContent = "Radiological convention (the patient's right on the left). "
      + "Click to move both crosshairs; scroll to page through slices.";
    if (state.selected) select(state.selected);
    document.body.dataset.ready = "true";
  }
}
