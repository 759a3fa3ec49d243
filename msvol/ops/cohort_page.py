"""The cohort page: three matplotlib plots as PNG data URIs in one self-contained HTML page (templates/cohort.html).

Plots: annualised PBVC per patient with the pathological cut-off; new T2 lesions per patient-year with
the cohort rate; the shares of patients MRI activity-free, and MRI activity-free with atrophy within
the cut-off (the MRI parts of NEDA-3 and NEDA-4), with their intervals. The page loads nothing: no
scripts, styles or images from elsewhere. matplotlib is used through `Figure` only (no pyplot state).
"""

from __future__ import annotations

import base64
import io

AUTOMATED, CONFIRMED = "automated", "confirmed"
BEYOND_COLOUR, WITHIN_COLOUR, LINE_COLOUR = "#c0392b", "#2c6fbb", "#444444"
MAX_LABELLED_PATIENTS = 30  # above this, patients are ranks on the x axis rather than named ticks


def render_page(record: dict, patients: list[dict]) -> str:
    """The cohort page.

    Parameters
    ----------
    record : the cohort.json model (summary, definitions, atrophy cut-off, reports, skipped, notes, files).
    patients : the patients table's rows.

    Returns
    -------
    str : HTML; every value is escaped, the plots are data:image/png URIs.
    """
    import jinja2

    cutoff = record["atrophy_cutoff"]["value"]
    summary = record["summary"]
    dots = "One dot per patient, ranked; filled: confirmed by a radiologist, hollow: automated."
    plots = [
        ("Annualised PBVC per patient", "annualised-pbvc", pbvc_plot(patients, cutoff),
         f"{dots} Red: at or beyond the cut-off. From each patient's baseline-to-latest interval."),
        ("New T2 lesions per patient-year", "new-lesion-rate",
         rate_plot(patients, summary["new_lesions_per_patient_year"]),
         f"{dots} Dashed: the cohort rate (negative binomial), its interval shaded."),
        ("Patients free of MRI activity", "mri-activity-free",
         share_plot(summary, cutoff, record["cohort_params"]["confidence_level"]["value"]),
         ("The MRI parts of NEDA-3 and NEDA-4, among the patients who can be judged (two visits or more; for the "
         "second bar also an annualised PBVC).")),
    ]
    environment = jinja2.Environment(loader=jinja2.PackageLoader("msvol.ops", "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined)
    environment.filters["number"] = _number
    environment.filters["percent"] = lambda value: "n/a" if value is None else f"{100 * value:.1f} %"
    return environment.get_template("cohort.html").render(record=record, summary=summary, plots=plots)


def pbvc_plot(patients: list[dict], cutoff: float) -> str:
    """Annualised PBVC per patient, ranked, with the cut-off line; base64 PNG."""
    rows = sorted((row for row in patients if row["annualized_pbvc_percent"] is not None),
                  key=lambda row: row["annualized_pbvc_percent"])
    figure, axes = _figure()
    if rows:
        values = [row["annualized_pbvc_percent"] for row in rows]
        colours = [BEYOND_COLOUR if value <= cutoff else WITHIN_COLOUR for value in values]
        _dots(axes, rows, values, colours)
        axes.axhline(0.0, color="#bbbbbb", linewidth=0.8)
        axes.axhline(cutoff, color=BEYOND_COLOUR, linestyle="--", linewidth=1.2,
                     label=f"pathological cut-off\n{cutoff:+.2f} %/year (De Stefano 2016)")
        _legend(axes)
    else:
        _empty(axes, "no patient has an annualised PBVC")
    axes.set_ylabel("annualised PBVC, baseline to latest (%/year)")
    return _png(figure)


def rate_plot(patients: list[dict], rate: dict | None) -> str:
    """Each patient's new T2 lesions per year, ranked, with the cohort rate and its interval; base64 PNG."""
    rows = sorted((row for row in patients if row["new_lesions_per_year"] is not None),
                  key=lambda row: row["new_lesions_per_year"])
    figure, axes = _figure()
    if rows:
        values = [row["new_lesions_per_year"] for row in rows]
        _dots(axes, rows, values, [WITHIN_COLOUR] * len(rows))
        if rate is not None:
            if rate["lower"] is not None:
                axes.axhspan(rate["lower"], rate["upper"], color=LINE_COLOUR, alpha=0.12, linewidth=0)
            axes.axhline(rate["rate_per_year"], color=LINE_COLOUR, linestyle="--", linewidth=1.2,
                         label=f"cohort rate {rate['rate_per_year']:.2f}\nper patient-year"
                               + ("" if rate["lower"] is None else f"\n({rate['lower']:.2f}-{rate['upper']:.2f})"))
        _legend(axes)
        axes.set_ylim(bottom=0)
    else:
        _empty(axes, "no patient with follow-up")
    axes.set_ylabel("new T2 lesions per year")
    return _png(figure)


def share_plot(summary: dict, cutoff: float, confidence_level: float) -> str:
    """The two shares with their intervals as horizontal bars; base64 PNG."""
    figure, axes = _figure(height=2.6)
    labels = ["MRI activity-free", f"MRI activity-free and\nannualised PBVC above {cutoff:+.2f} %/y"]
    shares = [summary["mri_activity_free"], summary["mri_activity_free_atrophy_within_cutoff"]]
    for position, share in zip((1, 0), shares):
        if share["fraction"] is None:
            axes.text(1, position, "no patient can be judged", va="center", fontsize=9)
            continue
        error = [[100 * (share["fraction"] - share["lower"])], [100 * (share["upper"] - share["fraction"])]]
        axes.barh(position, 100 * share["fraction"], xerr=error, color=WITHIN_COLOUR, height=0.5, capsize=4,
                  error_kw={"ecolor": LINE_COLOUR, "linewidth": 1})
        axes.text(min(100 * share["upper"] + 2, 80), position,
                  f"{share['count']}/{share['total']} ({100 * share['fraction']:.0f} %)", va="center", fontsize=9)
    axes.set_yticks([1, 0], labels)
    axes.set_xlim(0, 100)
    axes.set_xlabel(f"patients (%), with {confidence_level:.0%} Wilson interval")
    return _png(figure)


def _figure(height: float = 3.6):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, height), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.spines[["top", "right"]].set_visible(False)
    return figure, axes


def _dots(axes, rows: list[dict], values: list[float], colours: list[str]) -> None:
    """One dot per patient at its rank: filled when confirmed by a radiologist, hollow when automated."""
    ranks = list(range(1, len(rows) + 1))
    for source, face in ((CONFIRMED, None), (AUTOMATED, "none")):
        chosen = [index for index, row in enumerate(rows) if row["source"] == source]
        if chosen:
            axes.scatter([ranks[index] for index in chosen], [values[index] for index in chosen],
                         facecolors=face if face else [colours[index] for index in chosen],
                         edgecolors=[colours[index] for index in chosen], s=22 if len(rows) <= 200 else 8,
                         linewidths=1, label=f"{source} ({len(chosen)})", zorder=3)
    if len(rows) <= MAX_LABELLED_PATIENTS:
        axes.set_xticks(ranks, [row["participant_id"] for row in rows], rotation=90, fontsize=7)
    else:
        axes.set_xlabel(f"patients ranked by value (n = {len(rows)})")


def _legend(axes) -> None:
    """Beside the plot, so it never hides a patient (loc="best" is slow for a thousand dots)."""
    axes.margins(y=0.12)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _empty(axes, message: str) -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)
    axes.set_xticks([])


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _number(value, pattern: str = "{:.2f}") -> str:
    return "n/a" if value is None else pattern.format(value)
