// Entry point of the review pages (templates/base.html loads it as a module; no build step).
// The worklist needs no viewer; the subject view imports viewers.js, which imports the vendored
// NiiVue (./niivue/niivue.js, 3 MB), only there.

const page = document.body.dataset.page;
if (page === "worklist") {
  const { startWorklist } = await import("./worklist.js");
  await startWorklist();
} else if (page === "subject") {
  const { startSubject } = await import("./subject.js");
  await startSubject(document.body.dataset.subject);
}
