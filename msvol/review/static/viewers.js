// The two viewers of the subject view: baseline and follow-up FLAIR of one interval, both on the halfway
// grid (intervals/ses-A_to_ses-B/viewer/ of `msvol run`), each with the change classes as an overlay (the map
// the API serves with the reviewer's decisions drawn in: rejected lesions gone, edited and added masks shown).
//
// Coordinates: "halfway mm" is the world space of the viewer images; findings, added points and saved
// masks live in the follow-up images' world mm. The interval's 4 x 4 maps (space.json, served by
// GET /api/subjects/<subject>/intervals) convert between them; toHalfway / toFollowup below apply them.
// The two crosshairs are linked in halfway mm: a move in one sets the other to the same mm position.
// NiiVue's own voxel indices ("RAS voxels") are those of its reoriented copy of the back image; the
// drawing bitmap is indexed by them.

import { Niivue, NVImage, SHOW_RENDER, SLICE_TYPE } from "./niivue/niivue.js";

// changes.nii.gz: 0 none, 1 new, 2 enlarging, 3 shrinking or resolved, 4 stable, 5 possible new (datatypes.py
// CHANGE_MAP_VALUES; review.css uses the same colours)
export const CHANGE_COLOURS = {
  R: [0, 255, 255, 60, 80, 230], G: [0, 40, 176, 140, 200, 60], B: [0, 40, 0, 255, 120, 230],
  A: [0, 255, 255, 255, 255, 255], I: [0, 1, 2, 3, 4, 5],
  labels: ["", "new", "enlarging", "shrinking or resolved", "stable", "possible new"],
};
const OVERLAY_OPACITY = 0.6;
const SEED_SEARCH_VOXELS = 3; // a finding's centroid may fall outside its own (non-convex) lesion
const LAYOUTS = {
  multiplanar: SLICE_TYPE.MULTIPLANAR, axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL,
  sagittal: SLICE_TYPE.SAGITTAL,
};
const OPTIONS = {
  backColor: [0, 0, 0, 1], crosshairColor: [0.1, 1, 0.3, 0.7],
  crosshairWidth: 0.6, crosshairWidthUnit: "percent", // of the field of view: ~2 px at any image size
  isRadiologicalConvention: true, // the reader's convention: the patient's right on the screen's left
  multiplanarShowRender: SHOW_RENDER.NEVER, // no 3D tile: it costs seconds on a software renderer
  isColorbar: false, showLegend: false, isOrientCube: false, dragAndDropEnabled: false,
  // NiiVue's own hot keys (c, p, v on a focused canvas) would clash with the page's keyboard path
  clipPlaneHotKey: "", cycleClipPlaneHotKey: "", viewModeHotKey: "",
  logLevel: "warn", loadingText: "loading...",
};

export function applyMatrix(matrix, point) {
  return [0, 1, 2].map((row) => matrix[row][0] * point[0] + matrix[row][1] * point[1]
    + matrix[row][2] * point[2] + matrix[row][3]);
}

export class ViewerPair {
  constructor(baselineCanvas, followupCanvas, { onCursor = () => {}, onFollowupClick = () => {} } = {}) {
    this.canvases = { baseline: baselineCanvas, followup: followupCanvas };
    this.onCursor = onCursor;
    this.baseline = null;
    this.followup = null;
    this.space = null;
    this.overlay = true;
    this.difference = null; // the follow-up minus baseline volume, made on first use
    this.differenceShown = false;
    this.changesRAS = null;
    followupCanvas.addEventListener("mouseup", (event) => {
      // before NiiVue's own handlers (registered later, on attach): its pen draws each segment without the newer
      // end, so a stroke would stop one voxel short of where the button was released
      const drawing = this.followup && this.followup.opts.drawingEnabled;
      if (event.button === 0 && drawing && Number.isFinite(this.followup.drawPenLocation[0])) {
        this.followup.drawPt(...this.followup.drawPenLocation, this.followup.opts.penValue);
      }
      // after them (the timeout), once they have moved the crosshair to the click
      if (event.button === 0 && this.followup) setTimeout(() => onFollowupClick(this.cursorMM("followup")), 0);
    });
  }

  /** Show one interval: `images` {baseline_flair, followup_flair, changes} as URLs; `space` its maps. */
  async load(images, space) {
    this.space = space;
    this.difference = null;
    this.differenceShown = false;
    this.changesRAS = null;
    const show = async (name, flair) => {
      if (!this[name]) {
        const viewer = new Niivue(OPTIONS);
        await viewer.attachToCanvas(this.canvases[name]);
        this[name] = viewer;
      }
      const viewer = this[name];
      // the pipeline windowed each FLAIR to 0-255 (0.5-99.5th percentile in the head): show that window, the
      // same for both visits, not NiiVue's own robust range (which a mostly-uniform image collapses)
      await viewer.loadVolumes([{ url: flair, colormap: "gray", cal_min: 0, cal_max: 255 },
        { url: images.changes, opacity: OVERLAY_OPACITY }]);
      viewer.overlayAlphaShader = this.overlay ? 1 : 0;
      viewer.volumes[1].setColormapLabel(CHANGE_COLOURS);
      viewer.updateGLVolume();
    };
    await Promise.all([show("baseline", images.baseline_flair), show("followup", images.followup_flair)]);
    this.link(this.baseline, this.followup, "baseline");
    this.link(this.followup, this.baseline, "followup");
    this.moveTo(this.cursorMM("followup"));
  }

  /** Replace the change overlay of both viewers by the map at `url` (same grid, the reviewer's decisions drawn
   * in): the voxels are copied into the loaded overlays, so each viewer re-uploads once. */
  async setChanges(url) {
    const map = await NVImage.loadFromUrl({ url });
    for (const viewer of [this.baseline, this.followup]) {
      const overlay = viewer.volumes.find((volume) => volume.colormapLabel);
      if (!overlay || overlay.img.length !== map.img.length) throw new Error("the change map is not on the viewers' grid");
      overlay.img.set(map.img);
      viewer.updateGLVolume();
    }
    this.changesRAS = null; // componentAt reads the new map
  }

  link(source, target, name) {
    source.onLocationChange = () => {
      const mm = this.cursorMM(name);
      target.scene.crosshairPos = target.mm2frac(mm, 0, true);
      target.drawScene();
      this.onCursor(mm, name);
    };
  }

  /** The crosshair of one viewer ("baseline" | "followup") in halfway mm (true world mm, not NiiVue's slice mm). */
  cursorMM(name) {
    const viewer = this[name];
    return Array.from(viewer.frac2mm(viewer.scene.crosshairPos, 0, true)).slice(0, 3);
  }

  toHalfway(followupMM) {
    return this.space && this.space.followup_to_halfway ? applyMatrix(this.space.followup_to_halfway, followupMM) : null;
  }

  toFollowup(halfwayMM) {
    return this.space && this.space.halfway_to_followup ? applyMatrix(this.space.halfway_to_followup, halfwayMM) : null;
  }

  /** Both crosshairs to one halfway mm position. */
  moveTo(halfwayMM) {
    for (const viewer of [this.baseline, this.followup]) {
      viewer.scene.crosshairPos = viewer.mm2frac(halfwayMM, 0, true);
      viewer.drawScene();
    }
    this.onCursor(halfwayMM, "page");
  }

  setLayout(name) {
    for (const viewer of [this.baseline, this.followup]) viewer.setSliceType(LAYOUTS[name]);
  }

  setOverlay(shown) {
    this.overlay = shown;
    for (const viewer of [this.baseline, this.followup]) {
      // the slice shader's alpha for all overlays: a redraw, not a re-upload of the volumes (seconds on SwiftShader)
      viewer.overlayAlphaShader = shown ? 1 : 0;
      viewer.drawScene();
    }
  }

  /** Show follow-up minus baseline in place of the baseline (the follow-up stays beside it), or the baseline again. */
  setDifference(shown) {
    const viewer = this.baseline;
    const baseline = viewer.volumes.find((volume) => volume !== this.difference && !volume.colormapLabel);
    if (shown && !this.difference) {
      this.difference = this.makeDifference(baseline);
      if (!this.difference) return false;
      this.difference.opacity = 0;
      viewer.addVolume(this.difference);
    }
    if (!this.difference) return !shown;
    // the back volume (index 0) is the one shown; the other grey volume stays, hidden, as an overlay.
    // Opacities first: setVolume re-uploads once.
    this.difference.opacity = shown ? 1 : 0;
    baseline.opacity = shown ? 0 : 1;
    viewer.setVolume(shown ? this.difference : baseline, 0);
    this.differenceShown = shown;
    return true;
  }

  makeDifference(baseline) {
    const followup = this.followup.volumes[0];
    if (baseline.img.length !== followup.img.length) return null; // not one grid: no voxelwise difference
    const difference = NVImage.zerosLike(baseline, "float32");
    const values = difference.img;
    let largest = 0;
    for (let index = 0; index < values.length; index += 1) {
      values[index] = followup.img[index] - baseline.img[index];
      largest = Math.max(largest, Math.abs(values[index]));
    }
    const window = Math.max(1, largest / 2); // +-half the largest change: small changes stay visible
    difference.name = "follow-up minus baseline";
    difference.cal_min = -window;
    difference.cal_max = window;
    difference.colormap = "gray";
    return difference;
  }

  /** Start editing a mask on the follow-up viewer, seeded with the changes component at `seedMM` (halfway mm). */
  startDrawing(seedMM) {
    const viewer = this.followup;
    viewer.setDrawingEnabled(true);
    viewer.createEmptyDrawing();
    if (seedMM) {
      const component = this.componentAt(seedMM);
      if (component) viewer.drawBitmap.set(component);
    }
    viewer.drawAddUndoBitmap(); // the seeded mask is what Undo returns to
    viewer.setDrawOpacity(0.7);
    viewer.refreshDrawing(true);
    this.setTool("pen");
  }

  setTool(tool) {
    const viewer = this.followup;
    if (tool === "erase") viewer.setPenValue(0, false);
    else viewer.setPenValue(1, tool === "fill"); // "fill": a closed outline is filled when the stroke ends
  }

  undo() {
    this.followup.drawUndo();
  }

  /** The drawing as an uncompressed NIfTI (uint8, the halfway grid of the follow-up viewer image). */
  async drawingBytes() {
    return this.followup.saveImage({ filename: "", isSaveDrawing: true });
  }

  drawnVoxels() {
    const bitmap = this.followup.drawBitmap;
    return bitmap ? bitmap.reduce((sum, value) => sum + (value > 0 ? 1 : 0), 0) : 0;
  }

  stopDrawing() {
    this.followup.setDrawingEnabled(false);
    this.followup.closeDrawing();
  }

  /** The connected non-zero region of changes.nii.gz at (or next to) `seedMM`, as a RAS-voxel bitmap of 0/1. */
  componentAt(seedMM) {
    const viewer = this.followup;
    const changes = viewer.volumes.find((volume) => volume.colormapLabel);
    const dims = viewer.back.dimsRAS;
    if (!changes || changes.dimsRAS.join() !== dims.join()) return null;
    this.changesRAS = this.changesRAS || toRAS(changes);
    const [nx, ny, nz] = [dims[1], dims[2], dims[3]];
    const seed = Array.from(viewer.frac2vox(viewer.mm2frac(seedMM, 0, true))).map(Math.round);
    const labels = this.changesRAS;
    const index = (x, y, z) => x + nx * (y + ny * z);
    const inside = (x, y, z) => x >= 0 && y >= 0 && z >= 0 && x < nx && y < ny && z < nz;
    let start = null;
    for (let radius = 0; radius <= SEED_SEARCH_VOXELS && start === null; radius += 1) {
      for (let dz = -radius; dz <= radius && start === null; dz += 1) {
        for (let dy = -radius; dy <= radius && start === null; dy += 1) {
          for (let dx = -radius; dx <= radius && start === null; dx += 1) {
            const [x, y, z] = [seed[0] + dx, seed[1] + dy, seed[2] + dz];
            if (inside(x, y, z) && labels[index(x, y, z)] > 0) start = [x, y, z];
          }
        }
      }
    }
    const component = new Uint8Array(labels.length);
    if (start === null) return component;
    const queue = [start];
    component[index(...start)] = 1;
    while (queue.length) {
      const [x, y, z] = queue.pop();
      for (const [dx, dy, dz] of [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]) {
        const [a, b, c] = [x + dx, y + dy, z + dz];
        if (inside(a, b, c) && !component[index(a, b, c)] && labels[index(a, b, c)] > 0) {
          component[index(a, b, c)] = 1;
          queue.push([a, b, c]);
        }
      }
    }
    return component;
  }
}

/** A volume's voxels in NiiVue's RAS-voxel order (as its drawing bitmap), from its native order. */
function toRAS(volume) {
  const dims = volume.dimsRAS;
  const start = volume.img2RASstart;
  const step = volume.img2RASstep;
  const result = new Uint8Array(dims[1] * dims[2] * dims[3]);
  let rasIndex = 0;
  for (let z = 0; z < dims[3]; z += 1) {
    for (let y = 0; y < dims[2]; y += 1) {
      for (let x = 0; x < dims[1]; x += 1) {
        result[rasIndex] = volume.img[start[0] + x * step[0] + start[1] + y * step[1] + start[2] + z * step[2]];
        rasIndex += 1;
      }
    }
  }
  return result;
}
