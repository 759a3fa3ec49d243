// The subject view's writes: one after the other (so a fast keyboard path never races itself), each naming the
// subject version last read; after each, the subject is read again. A 409 (another reviewer wrote) stops
// every later write until the page is reloaded.

import { clearMessage, showMessage } from "./client.js";

/** A function `write(label, action, findingId)` that queues `action(version, reviewer)` (the request) and
 * resolves to its result, or null; a write refused before any request (no reviewer name, or a stale page) has
 * `refused` set. `state` holds version, queue, pending, queued and stale; `refresh` reads the subject again. */
export function writeQueue(state, { reviewer, refresh, nameBox }) {
  return function write(label, action, findingId = null) {
    const refused = Object.assign(Promise.resolve(null), { refused: true });
    const name = reviewer();
    if (!name) {
      showMessage("Type your name in the Reviewer box first: each decision goes into the audit trail with it.", { error: true });
      nameBox.focus();
      return refused;
    }
    if (state.stale) return refused;
    state.pending += 1;
    if (findingId) state.queued.add(findingId);
    const run = state.queue.then(async () => {
      if (state.stale) return null;
      try {
        const result = await action(state.version, name);
        clearMessage();
        await refresh();
        return result;
      } catch (error) {
        if (error.stale) {
          state.stale = true;
          showMessage(`Not saved: ${error.message} Reload the page to see the current state.`, { error: true, reload: true });
        } else {
          showMessage(`${label} failed: ${error.message}`, { error: true });
        }
        return null;
      } finally {
        if (findingId) state.queued.delete(findingId);
        state.pending -= 1;
      }
    });
    state.queue = run;
    return run;
  };
}
