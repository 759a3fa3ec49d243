"""Report model -> one self-contained HTML page: lesion thumbnails, a trend chart, the page itself.

Pure functions, no file writes: the pipeline writes the returned text. The page embeds its
images as data: URIs and loads nothing from the network, so it can be archived and printed.

Display convention (radiological, all three planes): the volume is first reoriented to
the nearest RAS+ axes of its affine; then axial slices show anterior up and patient left
on image right, coronal slices superior up and patient left on image right, sagittal
slices superior up and anterior on image left.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io

import jinja2
import markupsafe
import nibabel.orientations
import numpy as np
from PIL import Image
from scipy import ndimage

from msvol.datatypes import REVIEWED_STATUSES, IntervalImages

UPSCALE = 3  # nearest-neighbour zoom of every thumbnail pixel
PANEL_GAP_PX = 4  # black gap between panels, in output pixels
OUTLINE_RGB = (255, 215, 0)  # gold: visible on grey FLAIR and for red-green colour blindness
DATE_LABEL_WIDTH_PX = 70  # an ISO date at font-size 11 plus a gap: closer date labels would overlap


def lesion_thumbnails(images: IntervalImages, lesion_ids: list[int], *, window_mm: int = 40) -> dict[int, str]:
    """One PNG per lesion: baseline and follow-up FLAIR in three planes through its centroid.

    The centroid is that of `followup_labels == id`; an id absent at follow-up is looked up
    in `baseline_labels` instead (by value: only meaningful where the caller's ids are
    baseline label values). The lesion's outline (the inner edge of that same mask) is drawn
    on both rows in OUTLINE_RGB, so the radiologist compares the same region at both visits.
    Where the centroid falls outside a non-convex lesion, the planes pass through the lesion
    voxel nearest to it instead, so that the outline is always visible.

    Layout: top row baseline, bottom row follow-up; columns axial, coronal, sagittal, in the
    radiological convention of the module docstring. Each visit is windowed separately at
    the 1st-99.5th percentile of its 3D crop. On an isotropic grid a window of n voxels per
    axis (window_mm over the spacing) gives an image 2 * n * UPSCALE + PANEL_GAP_PX pixels
    high and 3 * n * UPSCALE + 2 * PANEL_GAP_PX wide; crops at the volume border are padded
    with black, so every image has the same size.

    Parameters
    ----------
    images : both visits and both label maps on the halfway grid.
    lesion_ids : follow-up label values (LesionChange.id).
    window_mm : edge of the cubic field of view around the centroid, in mm.

    Returns
    -------
    dict[int, str] : lesion id -> base64-encoded PNG (no "data:" prefix).

    Raises
    ------
    ValueError : an id is in neither label map.
    """
    ornt = nibabel.orientations.io_orientation(images.affine)
    ras = {name: nibabel.orientations.apply_orientation(getattr(images, name), ornt)
           for name in ("baseline_flair", "followup_flair", "baseline_labels", "followup_labels")}
    spacing_mm = np.empty(3)
    spacing_mm[ornt[:, 0].astype(int)] = np.sqrt((images.affine[:3, :3] ** 2).sum(axis=0))
    size = np.maximum(1, np.round(window_mm / spacing_mm)).astype(int)
    boxes = {name: ndimage.find_objects(ras[name]) for name in ("followup_labels", "baseline_labels")}
    thumbnails = {}
    for lesion_id in lesion_ids:
        labels_name, box = _lesion_box(boxes, lesion_id)
        start = _display_centre(ras[labels_name][box] == lesion_id, box) - size // 2
        mask = _crop(ras[labels_name], start, size, 0) == lesion_id
        rows = [_panels(_window(_crop(ras[flair], start, size, np.nan)), mask)
                for flair in ("baseline_flair", "followup_flair")]
        thumbnails[lesion_id] = _encode_png(_layout(rows))
    return thumbnails


def _lesion_box(boxes: dict, lesion_id: int) -> tuple[str, tuple[slice, ...]]:
    """The label map holding the id (follow-up first) and the id's bounding box in it."""
    for labels_name in ("followup_labels", "baseline_labels"):
        found = boxes[labels_name]
        if 0 < lesion_id <= len(found) and found[lesion_id - 1] is not None:
            return labels_name, found[lesion_id - 1]
    raise ValueError(f"lesion {lesion_id} is in neither the follow-up nor the baseline label map")


def _display_centre(local_mask: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The centroid voxel, or the lesion voxel nearest to it where it lies outside the lesion."""
    centroid = np.round(ndimage.center_of_mass(local_mask)).astype(int)
    if not local_mask[tuple(centroid)]:
        voxels = np.argwhere(local_mask)
        centroid = voxels[np.argmin(((voxels - centroid) ** 2).sum(axis=1))]
    return centroid + [axis.start for axis in box]


def _crop(array: np.ndarray, start: np.ndarray, size: np.ndarray, fill_value) -> np.ndarray:
    """The box [start, start + size), clipped to the volume and padded back to `size`.

    Images are padded with NaN (shown black, left out of the percentile window), labels with 0.
    """
    low = np.clip(start, 0, array.shape)
    high = np.clip(start + size, 0, array.shape)
    inside = array[tuple(slice(a, b) for a, b in zip(low, high))]
    # NaN padding promotes an integer image to float; a 0 fill keeps labels integer.
    inside = inside.astype(np.result_type(inside, fill_value), copy=False)
    return np.pad(inside, list(zip(low - start, start + size - high)), constant_values=fill_value)


def _window(crop: np.ndarray) -> np.ndarray:
    """Grey levels in [0, 1] between the 1st and 99.5th percentiles; padding -> 0.

    The crop is centred on a lesion voxel, so it always holds some image.
    """
    low, high = np.nanpercentile(crop, [1, 99.5])
    scaled = (crop - low) / max(high - low, np.finfo(np.float32).eps)
    return np.nan_to_num(np.clip(scaled, 0, 1), nan=0.0)


def _panels(grey: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal, sagittal RGB panels through the crop centre, outline drawn."""
    centre = np.array(grey.shape) // 2
    # A RAS crop sliced as [x, y], [x, z] or [y, z] becomes (row, column) = (-second, -first):
    # transposing then flipping both axes puts A/S up and patient left (low x) on the right.
    planes = [(slice(None), slice(None), centre[2]), (slice(None), centre[1], slice(None)),
              (centre[0], slice(None), slice(None))]
    return [_outlined(_to_display(grey[plane]), _to_display(mask[plane])) for plane in planes]


def _to_display(plane: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(plane.T[::-1, ::-1], UPSCALE, axis=0), UPSCALE, axis=1)


def _outlined(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rgb = np.repeat(np.round(grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    # The edge is taken after upscaling, so the line is one output pixel wide and the
    # lesion's own signal stays visible inside it.
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    rgb[edge] = OUTLINE_RGB
    return rgb


def _layout(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Panels on a black canvas, rows top to bottom, PANEL_GAP_PX apart, top-left aligned."""
    height = max(panel.shape[0] for row in rows for panel in row)
    width = max(panel.shape[1] for row in rows for panel in row)
    canvas = np.zeros((len(rows) * (height + PANEL_GAP_PX) - PANEL_GAP_PX,
                       len(rows[0]) * (width + PANEL_GAP_PX) - PANEL_GAP_PX, 3), np.uint8)
    for row_index, row in enumerate(rows):
        for column_index, panel in enumerate(row):
            top, left = row_index * (height + PANEL_GAP_PX), column_index * (width + PANEL_GAP_PX)
            canvas[top:top + panel.shape[0], left:left + panel.shape[1]] = panel
    return canvas


def _encode_png(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def trend_svg(timepoints: list[dict], *, width: int = 480, height: int = 220) -> str:
    """Inline SVG line chart of `brain_volume_ml` against `date` (ISO strings), oldest left.

    Hand-written so the page needs no plotting library and no script. The x axis is
    proportional to time; a single timepoint (or all on one day) is drawn at the centre.
    Where two dates are too close to print both, only the newer one is labelled; every
    point keeps its date and volume as a hover title.
    The root element has no xmlns: HTML5 does not need it inside a page, and leaving it
    out keeps every "http" string out of the self-contained report.

    Parameters
    ----------
    timepoints : report['timepoints'] entries (`date`, `brain_volume_ml`).
    width, height : the chart's size in CSS pixels.

    Returns
    -------
    str : an `<svg>` element, with every text escaped.

    Raises
    ------
    ValueError : no timepoints.
    """
    if not timepoints:
        raise ValueError("trend_svg needs at least one timepoint")
    margin_left, margin_right, margin_top, margin_bottom = 70, 40, 15, 50
    days = np.array([dt.date.fromisoformat(point["date"]).toordinal() for point in timepoints], float)
    volumes = np.array([point["brain_volume_ml"] for point in timepoints], float)
    plot_width, plot_height = width - margin_left - margin_right, height - margin_top - margin_bottom
    span_days = np.ptp(days)
    x = (margin_left + (days - days.min()) / span_days * plot_width if span_days
         else np.full(days.shape, margin_left + plot_width / 2))
    # Pad the range so flat or single-point series still get a readable scale.
    pad = max(np.ptp(volumes) * 0.1, 1.0)
    low, high = volumes.min() - pad, volumes.max() + pad
    y = margin_top + (high - volumes) / (high - low) * plot_height
    bottom, right = margin_top + plot_height, margin_left + plot_width
    parts = [f'<svg class="trend" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="Brain volume over time">',
             f'<line x1="{margin_left}" y1="{margin_top}" x2="{margin_left}" y2="{bottom}" stroke="#333"/>',
             f'<line x1="{margin_left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>']
    for value in (low, (low + high) / 2, high):
        tick_y = margin_top + (high - value) / (high - low) * plot_height
        parts.append(f'<text x="{margin_left - 6}" y="{tick_y + 4:.1f}" font-size="11" text-anchor="end">'
                     f'{value:.0f}</text>')
    if len(timepoints) > 1:
        points = " ".join(f"{px:.1f},{py:.1f}" for px, py in zip(x, y))
        parts.append(f'<polyline points="{points}" fill="none" stroke="#1f5fa8" stroke-width="2"/>')
    labels = [html.escape(str(point["date"])) for point in timepoints]
    for point, label, px, py in zip(timepoints, labels, x, y):
        parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="#1f5fa8">'
                     f'<title>{label}: {point["brain_volume_ml"]:.1f} ml</title></circle>')
    labelled_x = np.inf
    # Newest first, so that of two visits too close to label both, the newer date is printed.
    for label, px in reversed(list(zip(labels, x))):
        if labelled_x - px >= DATE_LABEL_WIDTH_PX:
            parts.append(f'<text x="{px:.1f}" y="{bottom + 16}" font-size="11" text-anchor="middle">{label}</text>')
            labelled_x = px
    parts.append(f'<text x="{margin_left + plot_width / 2:.1f}" y="{height - 8}" font-size="12" '
                 f'text-anchor="middle">Date</text>')
    parts.append(f'<text x="14" y="{margin_top + plot_height / 2:.1f}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 14 {margin_top + plot_height / 2:.1f})">Brain volume (ml)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(report: dict, thumbnails: dict[tuple[str, str], dict[int, str]]) -> str:
    """The report as one self-contained HTML page (templates/report.html).

    Parameters
    ----------
    report : the model from `report.build_report` (or report.json read back).
    thumbnails : (from_session, to_session) -> lesion id -> base64 PNG from
        `lesion_thumbnails`; a reviewed lesion without one is shown without an image.

    Returns
    -------
    str : the HTML text; every value from the report is escaped.
    """
    environment = jinja2.Environment(loader=jinja2.PackageLoader("msvol.outputs", "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined)
    intervals = []
    for interval in report["intervals"]:
        images = thumbnails.get((interval["from_session"], interval["to_session"]), {})
        reviewed = [(lesion, images.get(lesion["id"])) for lesion in interval["lesions"]
                    if lesion["status"] in REVIEWED_STATUSES]
        # The least certain findings first: they need the radiologist most.
        reviewed.sort(key=lambda item: (item[0].get("confidence") is not None, item[0].get("confidence") or 0))
        intervals.append({"model": interval, "reviewed": reviewed})
    cutoff = report.get("params", {}).get("atrophy", {}).get("pathological_annualized_pbvc_percent")
    return environment.get_template("report.html").render(
        report=report, intervals=intervals, pathological_cutoff=cutoff,
        trend=markupsafe.Markup(trend_svg(report["timepoints"])))
