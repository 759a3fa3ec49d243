// The review API as the pages use it (msvol/review/api.py): JSON reads, and writes that carry the
// subject version last read. The token travels in the httponly cookie the first URL set, so no
// script here ever sees it. Every request goes to this page's own origin.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.stale = status === 409; // someone else wrote since this page read the subject
  }
}

async function request(method, path, { json, body, query, contentType } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
  }
  const init = { method, credentials: "same-origin", headers: {} };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
    init.headers["Content-Type"] = contentType || "application/octet-stream";
  }
  const response = await fetch(url, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text };
  }
  if (!response.ok) {
    const detail = data && data.detail !== undefined ? data.detail : response.statusText;
    throw new ApiError(response.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}

const subjectPath = (subject) => `/api/subjects/${encodeURIComponent(subject)}`;

export const api = {
  subjects: () => request("GET", "/api/subjects"),
  subject: (subject) => request("GET", subjectPath(subject)),
  intervals: (subject) => request("GET", `${subjectPath(subject)}/intervals`),
  startReading: (subject) => request("POST", `${subjectPath(subject)}/reading`),
  decide: (subject, finding, body) =>
    request("POST", `${subjectPath(subject)}/findings/${encodeURIComponent(finding)}/decision`, { json: body }),
  editMask: (subject, finding, niftiBytes, query) =>
    request("PUT", `${subjectPath(subject)}/findings/${encodeURIComponent(finding)}/mask`,
      { body: niftiBytes, query }),
  addLesion: (subject, body) => request("POST", `${subjectPath(subject)}/lesions`, { json: body }),
  signOff: (subject, body) => request("POST", `${subjectPath(subject)}/signoff`, { json: body }),
};

// The reviewer's name, kept in this browser between pages and readings (it is no secret: it goes into
// the audit trail with every decision).
const REVIEWER_KEY = "msvol.reviewer";

export function bindReviewer() {
  const input = document.getElementById("reviewer");
  if (input.readOnly) return () => input.value.trim(); // the server records one reader (msvol review --reviewer)
  input.value = window.localStorage.getItem(REVIEWER_KEY) || "";
  input.addEventListener("change", () => window.localStorage.setItem(REVIEWER_KEY, input.value.trim()));
  return () => input.value.trim();
}

export function showMessage(text, { error = false, reload = false } = {}) {
  const box = document.getElementById("message");
  box.replaceChildren(document.createTextNode(text));
  box.classList.toggle("error", error);
  if (reload) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Reload";
    button.addEventListener("click", () => window.location.reload());
    box.append(button);
  }
  box.hidden = false;
}

export function clearMessage() {
  document.getElementById("message").hidden = true;
}

export function statusClass(status) {
  return status === "signed" ? "signed" : status === "pending" ? "pending" : "review";
}

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "className") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}
