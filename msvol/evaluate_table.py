"""The plain-text table of an msvol.evaluate result (what `msvol evaluate` prints)."""

from __future__ import annotations


def render_table(result: dict) -> str:
    """A plain-text summary: pooled figures, then one line per scan and per pair, then what was skipped."""
    overall = result["overall"]
    lines = [f"msvol evaluation: {overall['scans']} scans, {overall['pairs']} pairs "
             f"(truth layout: {result['truth_layout']})", "",
             "Lesions per scan (26-connected components; detected = any overlap)",
             f"{'scan':<24}{'truth':>6}{'pred':>6}{'det':>6}{'FP':>5}{'sens':>7}{'prec':>7}{'F1':>7}{'Dice':>7}"
             f"{'vol ratio':>10}"]
    rows = [("all (pooled; mean Dice)", {**overall, "dice": overall["mean_dice"],
                                          "volume_ratio": overall["mean_volume_ratio"]})]
    rows += [(f"sub-{scan['subject']} ses-{scan['session']}", scan) for scan in result["scans"]]
    for name, row in rows:
        lines.append(f"{name:<24}{row['truth_lesions']:>6}{row['pred_lesions']:>6}{row['detected']:>6}"
                     f"{row['false_positives']:>5}{_cell(row['sensitivity']):>7}{_cell(row['precision']):>7}"
                     f"{_cell(row['f1']):>7}{_cell(row['dice']):>7}{_cell(row['volume_ratio']):>10}")
    lines.append("Sensitivity by truth lesion volume (mm3, pooled): " + "; ".join(
        f"{label} {counts['detected']}/{counts['truth']} = {_cell(counts['sensitivity'])}"
        for label, counts in overall["sensitivity_by_size"].items()))
    lines += ["", "New lesions and PBVC per pair (PBVC error = measured - true, percentage points)",
              f"{'pair':<32}{'new':>5}{'det':>5}{'sens':>7}{'>=30':>6}{'sens':>7}{'false':>7}{'enl sens':>9}"
              f"{'PBVC err':>10}"]
    rows = [("all (pooled)", {**overall, "pbvc_error_percent": overall["mean_pbvc_error_percent"]})]
    rows += [(f"sub-{pair['subject']} ses-{pair['from_session']}->ses-{pair['to_session']}", pair)
             for pair in result["pairs"]]
    for name, row in rows:
        lines.append(f"{name:<32}{_cell(row['truth_new'], 0):>5}{_cell(row['detected_new'], 0):>5}"
                     f"{_cell(row['new_sensitivity']):>7}{_cell(row['truth_new_ge30'], 0):>6}"
                     f"{_cell(row['new_sensitivity_ge30']):>7}{_cell(row['false_new'], 0):>7}"
                     f"{_cell(row['enlarging_sensitivity']):>9}{_cell(row['pbvc_error_percent'], 3, '+'):>10}")
    lines.append(f"Mean false new lesions per pair: {_cell(overall['mean_false_new_per_pair'], 2)}; "
                 f"PBVC |error| mean {_cell(overall['mean_abs_pbvc_error_percent'])}, "
                 f"max {_cell(overall['max_abs_pbvc_error_percent'])} over {overall['pairs_with_pbvc']} pairs")
    new_bins = overall.get("new_by_size") or {}
    lines.append("New lesions by truth volume (mm3, pooled; reported / reported or candidate of truth): " + "; ".join(
        f"{label} {counts['reported']} / {counts['reported_or_candidate']} of {counts['truth']}"
        for label, counts in new_bins.items()))
    lines.append(f"New-lesion sensitivity reported {_cell(overall.get('new_sensitivity'))}, reported or candidate "
                 f"{_cell(overall.get('new_sensitivity_or_candidate'))}; candidates per pair "
                 f"{_cell(overall.get('mean_candidates_per_pair'), 2)} ({_cell(overall.get('false_candidates'), 0)} "
                 f"on no new lesion)")
    lines.append(f"Enlarging: {_cell(overall.get('detected_enlarging'), 0)}/{_cell(overall.get('truth_enlarging'), 0)}"
                 f" found; false enlarging per pair {_cell(overall.get('mean_false_enlarging_per_pair'), 2)} "
                 f"({_cell(overall.get('false_enlarging_dont_count'), 0)} on a merger or a below-noise growth); "
                 f"false shrinking/resolved per pair {_cell(overall.get('mean_false_shrinking_resolved_per_pair'), 2)}"
                 f" over {overall.get('pairs_with_calls', 0)} pairs")
    lines.append(f"PBVC recovery (measured / true): median {_cell(overall.get('median_pbvc_recovery'))}, range "
                 f"{_cell(overall.get('min_pbvc_recovery'))}-{_cell(overall.get('max_pbvc_recovery'))} over "
                 f"{overall.get('pairs_with_pbvc_recovery', 0)} pairs")
    for pair in result["pairs"]:
        rescan = pair.get("rescan")
        if rescan and rescan.get("counts"):
            lines.append(f"Scan-rescan sub-{pair['subject']} ses-{pair['from_session']}->ses-{pair['to_session']}: "
                         f"lesions {rescan['counts'][0]} -> {rescan['counts'][1]}, volume "
                         f"{rescan['volumes_mm3'][0]:.0f} -> {rescan['volumes_mm3'][1]:.0f} mm3 "
                         f"({_cell(rescan['volume_difference_percent'], 1, '+')} %), |PBVC| "
                         f"{_cell(rescan['abs_pbvc_percent'])} %")
    if result["skipped"]:
        lines += ["", "Skipped"]
        for entry in result["skipped"]:
            where = (f" ses-{entry['session']}" if "session" in entry else
                     f" ses-{entry['from_session']}->ses-{entry['to_session']}" if "from_session" in entry else "")
            lines.append(f"  sub-{entry['subject']}{where}: {entry['reason']}")
    return "\n".join(lines) + "\n"


def _cell(value, digits: int = 3, sign: str = "") -> str:
    if value is None:
        return "-"
    return str(value) if digits == 0 else f"{value:{sign}.{digits}f}"
