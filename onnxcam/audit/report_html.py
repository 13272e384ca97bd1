"""Self-contained HTML reports for ``onnxcam audit`` and ``onnxcam compare``.

One file, opened offline: CSS and the small script are inline, every image is a ``data:`` URI
(PNG or JPEG, whichever is smaller, tiles downscaled to ``TILE_SIZE``), charts are inline SVG drawn
here (no JS library), and nothing references a network address. The pages are rendered from the
same dictionaries written to ``metrics.json``, so the report and the JSON cannot disagree.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from onnxcam.audit.metrics_run import BORDER_BAND, NEAR_TIE_GAP, flag_detail, flag_text
from onnxcam.errors import OutputError

TILE_SIZE = 224
JPEG_QUALITY = 85

Tile = tuple[str, str]  # (caption, data URI)

METRIC_INFO: dict[str, tuple[str, str, str]] = {
    # key: (column title, better direction, what it means)
    "average_drop": ("Avg drop %", "lower", "confidence lost when the image is multiplied by the map"),
    "increase": ("Increase", "higher", "1 if the masked image scores higher than the original"),
    "deletion_auc": ("Deletion AUC", "lower", "class probability while the top pixels are removed"),
    "insertion_auc": ("Insertion AUC", "higher", "class probability while the top pixels are restored on a blur"),
    "random_insertion_auc": ("Random ins. AUC", "-", "mean insertion AUC of two seeded random maps (baseline)"),
    "border_energy": ("Border energy", "lower", f"share of map mass in the outer {BORDER_BAND:.0%} band"),
    "pointing_game": ("Pointing", "higher", "1 if the map's maximum is inside the labelled box"),
    "energy_pointing_game": ("Energy PG", "higher", "share of map mass inside the labelled box"),
    "cam_box_iou": ("CAM-box IoU", "higher", "IoU of the box at 20% of the map max with the labelled box"),
    "road": ("ROAD", "higher", "ROAD combined (LeRF - MoRF) / 2"),
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2329;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
h3{font-size:15px;margin:18px 0 6px;word-break:break-all}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:right}th{background:#f3f5f7}
td.l,th.l{text-align:left}
.meta{color:#57606a;font-size:13px}
.tiles{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0}figure img{display:block;width:224px;height:auto;image-rendering:auto;border:1px solid #d0d7de}
figcaption{font-size:12px;color:#57606a;max-width:224px;word-break:break-all}
.flag{background:#fff1e5;color:#953800}td.flag{font-weight:600}
.badge{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px;background:#fff1e5;color:#953800;
margin:2px 4px 2px 0}
.ok{color:#1a7f37}.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;margin:14px 0}
ul.flags{margin:4px 0;padding-left:20px;font-size:13px}
.charts{display:flex;flex-wrap:wrap;gap:16px}svg.chart{border:1px solid #d0d7de;background:#fff}
svg.chart text{font-size:11px;fill:#1d2329}.verdict{font-size:15px;font-weight:600}
"""

#: Series colours (colour-blind safe, Okabe-Ito), in method order; grey is the random baseline.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
GREY = "#8c959f"

# Counts the images that actually decoded; headless checks and curious reviewers read it.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', String(ok));
  document.body.setAttribute('data-images-total', String(imgs.length));
  var el = document.getElementById('loaded');
  if (el) { el.textContent = ok + ' of ' + imgs.length + ' images loaded'; }
});
"""


def data_uri(rgb: np.ndarray, max_side: int = TILE_SIZE, jpeg_quality: int = JPEG_QUALITY) -> str:
    """``(H, W, 3)`` uint8 RGB as a ``data:`` URI, downscaled to ``max_side``; PNG or JPEG, the smaller."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise OutputError(f"report tile must be a (H, W, 3) uint8 RGB array, got {arr.dtype} {arr.shape}")
    h, w = arr.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        arr = cv2.resize(arr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    bgr = np.ascontiguousarray(arr[:, :, ::-1])
    ok_png, png = cv2.imencode(".png", bgr)
    ok_jpg, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    if not (ok_png and ok_jpg):
        raise OutputError(f"OpenCV could not encode a report tile of shape {arr.shape}")
    # Heatmap overlays of photos are ~5x smaller as JPEG; flat synthetic tiles are smaller as PNG.
    mime, buf = ("image/png", png) if png.size <= jpg.size else ("image/jpeg", jpg)
    return f"data:{mime};base64,{base64.b64encode(buf.tobytes()).decode('ascii')}"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, key: str = "") -> str:
    """A number for a table cell; missing/undefined values are a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "average_drop":
        return f"{float(value):.1f}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.3f}"


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body)
            + "\n<p class=\"meta\" id=\"loaded\"></p>"
            + f"<script>{_SCRIPT}</script></body></html>\n")


def _figures(tiles: Sequence[Tile], kind: str) -> str:
    return "".join(f"<figure><img class=\"{esc(kind)}\" alt=\"{esc(cap)}\" src=\"{uri}\"><figcaption>{esc(cap)}"
                   "</figcaption></figure>" for cap, uri in tiles)


def _predictions(preds: Sequence[dict[str, Any]]) -> str:
    parts = [f"{esc(p['label'])} <b>{p['probability']:.3f}</b>" for p in preds]
    return "<p class=\"meta\">Top-3: " + " &middot; ".join(parts) + "</p>"


def _legend(keys: Sequence[str], with_boxes: bool = False) -> str:
    rows = "".join(f"<tr><td class=\"l\">{esc(METRIC_INFO[k][0])}</td><td class=\"l\">{esc(METRIC_INFO[k][1])}</td>"
                   f"<td class=\"l\">{esc(METRIC_INFO[k][2])}</td></tr>" for k in keys if k in METRIC_INFO)
    flags = "".join(f"<li>{esc(flag_text(c))}</li>" for c in
                    ("low_insertion", "border", "peak_outside_box", "near_tie", "blank_map"))
    boxes = ("<p>Boxes: the <b>white box</b> on the input and on every overlay is the labelled (ground-truth) box "
             "from the boxes file, mapped to the model's input; onnxcam draws no box of its own here.</p>"
             if with_boxes else "")
    return ("<details open><summary>How to read the numbers</summary><table><tr><th class=\"l\">Metric</th>"
            f"<th class=\"l\">Better</th><th class=\"l\">Meaning</th></tr>{rows}</table>{boxes}"
            f"<p>Flags raised for review:</p><ul class=\"flags\">{flags}</ul></details>")


# ------------------------------------------------------------------------------------------ charts


def _svg_axes(w: int, h: int, m: int, x_label: str, y_label: str, y_range: tuple[float, float],
              x_ticks: Sequence[tuple[float, str]]) -> list[str]:
    lo, hi = y_range
    out = [f"<line x1=\"{m}\" y1=\"{h - m}\" x2=\"{w - 8}\" y2=\"{h - m}\" stroke=\"#57606a\"/>",
           f"<line x1=\"{m}\" y1=\"8\" x2=\"{m}\" y2=\"{h - m}\" stroke=\"#57606a\"/>"]
    for v in (lo, (lo + hi) / 2, hi):
        y = _sy(v, y_range, h, m)
        out.append(f"<text x=\"{m - 4}\" y=\"{y + 4:.1f}\" text-anchor=\"end\">{v:g}</text>")
        out.append(f"<line x1=\"{m}\" y1=\"{y:.1f}\" x2=\"{w - 8}\" y2=\"{y:.1f}\" stroke=\"#eaeef2\"/>")
    for x, label in x_ticks:
        px = m + x * (w - 8 - m)
        out.append(f"<text x=\"{px:.1f}\" y=\"{h - m + 14}\" text-anchor=\"middle\">{esc(label)}</text>")
    out.append(f"<text x=\"{(m + w) / 2:.1f}\" y=\"{h - 4}\" text-anchor=\"middle\">{esc(x_label)}</text>")
    out.append(f"<text x=\"12\" y=\"{(h - m) / 2:.1f}\" text-anchor=\"middle\" "
               f"transform=\"rotate(-90 12 {(h - m) / 2:.1f})\">{esc(y_label)}</text>")
    return out


def _sy(v: float, y_range: tuple[float, float], h: int, m: int) -> float:
    lo, hi = y_range
    return 8 + (hi - min(max(v, lo), hi)) / (hi - lo) * (h - m - 8)


def svg_lines(title: str, series: Sequence[dict[str, Any]], x_label: str, y_label: str,
              y_range: tuple[float, float] = (0.0, 1.0), x_ticks: Sequence[tuple[float, str]] | None = None,
              width: int = 360, height: int = 230) -> str:
    """An inline SVG line chart. ``series``: dicts with ``name``, ``y`` (values at x = 0..1 evenly),
    optional ``spread`` (std per point, drawn as a band) and ``color``; None values are gaps."""
    m = 40
    full = height + 18 * len(series)
    parts = [f"<svg class=\"chart\" role=\"img\" aria-label=\"{esc(title)}\" width=\"{width}\" height=\"{full}\" "
             f"viewBox=\"0 0 {width} {full}\"><title>{esc(title)}</title>"]
    parts += _svg_axes(width, height, m, x_label, y_label, y_range,
                       x_ticks if x_ticks is not None else [(0, "0"), (0.5, "0.5"), (1, "1")])

    def px(i: int, n: int) -> float:
        return m + (i / max(1, n - 1)) * (width - 8 - m)

    for k, s in enumerate(series):
        ys = list(s["y"])
        color = s.get("color", PALETTE[k % len(PALETTE)])
        n = len(ys)
        spread = s.get("spread")
        if spread is not None and n:
            pts = [(px(i, n), y, sd) for i, (y, sd) in enumerate(zip(ys, spread)) if y is not None and sd is not None]
            if pts:
                upper = " ".join(f"{x:.1f},{_sy(y + sd, y_range, height, m):.1f}" for x, y, sd in pts)
                lower = " ".join(f"{x:.1f},{_sy(y - sd, y_range, height, m):.1f}" for x, y, sd in reversed(pts))
                parts.append(f"<polygon class=\"spread\" points=\"{upper} {lower}\" fill=\"{color}\" "
                             "fill-opacity=\"0.15\" stroke=\"none\"/>")
        line = " ".join(f"{px(i, n):.1f},{_sy(y, y_range, height, m):.1f}" for i, y in enumerate(ys) if y is not None)
        if line:
            dash = " stroke-dasharray=\"4 3\"" if s.get("dashed") else ""
            parts.append(f"<polyline class=\"series\" points=\"{line}\" fill=\"none\" stroke=\"{color}\" "
                         f"stroke-width=\"2\"{dash}><title>{esc(s['name'])}</title></polyline>")
            if n <= 12:
                parts += [f"<circle cx=\"{px(i, n):.1f}\" cy=\"{_sy(y, y_range, height, m):.1f}\" r=\"3\" "
                          f"fill=\"{color}\"/>" for i, y in enumerate(ys) if y is not None]
        ly = height + 14 + 18 * k
        parts.append(f"<line x1=\"{m}\" y1=\"{ly - 4}\" x2=\"{m + 20}\" y2=\"{ly - 4}\" stroke=\"{color}\" "
                     f"stroke-width=\"3\"/><text x=\"{m + 26}\" y=\"{ly}\">{esc(s['name'])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def svg_strips(title: str, rows: Sequence[tuple[str, Sequence[float | None]]], x_range: tuple[float, float],
               x_label: str, width: int = 360) -> str:
    """An inline SVG strip plot: one row per name, a dot per value, a bar at the mean."""
    m, row_h = 90, 26
    height = 36 + row_h * len(rows)
    full = height + 8
    lo, hi = x_range
    span = (hi - lo) or 1.0

    def px(v: float) -> float:
        return m + (min(max(v, lo), hi) - lo) / span * (width - 12 - m)

    parts = [f"<svg class=\"chart\" role=\"img\" aria-label=\"{esc(title)}\" width=\"{width}\" height=\"{full}\" "
             f"viewBox=\"0 0 {width} {full}\"><title>{esc(title)}</title>"]
    for k, (name, values) in enumerate(rows):
        y = 14 + row_h * k + row_h / 2
        color = PALETTE[k % len(PALETTE)]
        parts.append(f"<text x=\"{m - 6}\" y=\"{y + 4:.1f}\" text-anchor=\"end\">{esc(name[:14])}</text>")
        parts.append(f"<line x1=\"{m}\" y1=\"{y:.1f}\" x2=\"{width - 12}\" y2=\"{y:.1f}\" stroke=\"#eaeef2\"/>")
        finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        for j, v in enumerate(finite):
            jitter = ((j * 7) % 9 - 4) * 1.2
            parts.append(f"<circle class=\"dot\" cx=\"{px(v):.1f}\" cy=\"{y + jitter:.1f}\" r=\"3\" fill=\"{color}\" "
                         f"fill-opacity=\"0.7\"><title>{v:.3f}</title></circle>")
        if finite:
            mean = sum(finite) / len(finite)
            parts.append(f"<line x1=\"{px(mean):.1f}\" y1=\"{y - 9:.1f}\" x2=\"{px(mean):.1f}\" y2=\"{y + 9:.1f}\" "
                         f"stroke=\"#1d2329\" stroke-width=\"2\"><title>mean {mean:.3f}</title></line>")
    base = 14 + row_h * len(rows)
    parts.append(f"<line x1=\"{m}\" y1=\"{base}\" x2=\"{width - 12}\" y2=\"{base}\" stroke=\"#57606a\"/>")
    for v in (lo, (lo + hi) / 2, hi):
        parts.append(f"<text x=\"{px(v):.1f}\" y=\"{base + 13}\" text-anchor=\"middle\">{v:g}</text>")
    parts.append(f"<text x=\"{(m + width) / 2:.1f}\" y=\"{height + 2}\" text-anchor=\"middle\">{esc(x_label)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _curve_charts(report: dict[str, Any]) -> str:
    curves = report.get("curves") or {}
    methods: list[str] = report["methods"]
    if not curves:
        return ""
    charts = []
    for kind, better in (("deletion", "lower area is better"), ("insertion", "higher area is better")):
        series = [{"name": m, "y": curves[m][kind]["mean"], "spread": curves[m][kind]["std"],
                   "color": PALETTE[i % len(PALETTE)]} for i, m in enumerate(methods) if m in curves]
        if "random" in curves:
            series.append({"name": "random map (baseline)", "y": curves["random"][kind]["mean"], "spread": None,
                           "color": GREY, "dashed": True})
        charts.append(svg_lines(f"{kind.capitalize()} curve ({better})", series,
                                f"fraction of pixels {'removed' if kind == 'deletion' else 'restored'}",
                                "class probability"))
    return ("<h2>Deletion and insertion curves</h2><p class=\"meta\">Mean class probability over the images "
            "(band: &plusmn; one standard deviation) as the map's top pixels are removed (deletion) or restored on a "
            f"blurred image (insertion).</p><div class=\"charts\">{''.join(charts)}</div>")


def _distributions(report: dict[str, Any]) -> str:
    methods: list[str] = report["methods"]
    images: list[dict[str, Any]] = report["images"]
    charts = []
    for k in report["metric_keys"]:
        rows = [(m, [item["methods"][m]["values"].get(k) for item in images]) for m in methods]
        if k == "insertion_auc":
            rows.append(("random map", [item.get("random_insertion_auc") for item in images]))
        finite = [float(v) for _, vals in rows for v in vals if v is not None and math.isfinite(float(v))]
        hi = 100.0 if k == "average_drop" else max(1.0, max(finite, default=1.0))
        lo = min(0.0, min(finite, default=0.0))
        title, better, _ = METRIC_INFO.get(k, (k, "", ""))
        charts.append(svg_strips(title, rows, (lo, hi), f"{title} ({better} is better)"))
    return ("<h2>Metric distributions</h2><p class=\"meta\">One dot per image shown, the bar at the mean.</p>"
            f"<div class=\"charts\">{''.join(charts)}</div>")


# ------------------------------------------------------------------------------------------ audit


def render_audit(report: dict[str, Any], tiles: Sequence[Sequence[Tile]]) -> str:
    """The audit page from ``report`` (the ``metrics.json`` dictionary) and per-image tiles.

    ``tiles[i]``: the input image first, then one overlay per method, for ``report["images"][i]``.
    """
    keys: list[str] = report["metric_keys"]
    methods: list[str] = report["methods"]
    images: list[dict[str, Any]] = report["images"]
    total = report.get("images_total", len(images))
    body = [f"<h1>onnxcam audit: {esc(report['model_name'])}</h1>",
            f"<p class=\"meta\">{total} image(s), methods {esc(', '.join(methods))}, layer(s) "
            f"{esc('; '.join(f'{m}: ' + ', '.join(v) for m, v in report['layers'].items()))}, device "
            f"{esc(report['device'])}, preprocessing {esc(report['preprocess'])}</p>"]
    if report.get("failed"):
        body.append("<p class=\"flag\">Skipped (unreadable): "
                    + ", ".join(esc(f["file"]) for f in report["failed"]) + "</p>")
    body.append(_legend(keys + ["random_insertion_auc"], any(item.get("box") for item in images)))
    body.append("<h2>Summary (mean &plusmn; std over images)</h2>")
    head = "".join(f"<th>{esc(METRIC_INFO[k][0])}</th>" for k in keys)
    rows = []
    for m in methods:
        cells = []
        for k in keys:
            s = report["summary"][m].get(k, {})
            cells.append(f"<td>{fmt(s.get('mean'), k)} &plusmn; {fmt(s.get('std'), k)} "
                         f"<span class=\"meta\">({s.get('n', 0)})</span></td>")
        nflag = report["flag_counts"].get(m, 0)
        rows.append(f"<tr><td class=\"l\">{esc(m)}</td>{''.join(cells)}<td>{nflag}</td></tr>")
    base = report["summary"].get("random", {}).get("random_insertion_auc", {})
    body.append(f"<table><tr><th class=\"l\">Method</th>{head}<th>Flags</th></tr>{''.join(rows)}</table>")
    body.append(f"<p class=\"meta\">Random-map insertion AUC baseline: {fmt(base.get('mean'))} &plusmn; "
                f"{fmt(base.get('std'))}. Near-ties (top-2 gap &lt; {NEAR_TIE_GAP}): {report['near_ties']} "
                "image(s).</p>")
    body.append(_false_alarm(report))
    body.append(_per_class(report))
    body.append(_curve_charts(report))
    body.append(_distributions(report))
    body.append(_sanity(report.get("sanity")))
    body.append(_flag_index(images, (report.get("sample") or {}).get("flagged_total")))
    body.append("<h2>Images</h2>")
    body.append(_sample_note(report, len(images), sum(1 for item in images if _image_flags(item))))
    for i, (item, row) in enumerate(zip(images, tiles, strict=True)):
        body.append(_audit_image(i, item, row, methods, keys, report.get("insertion_margin")))
    return _page(f"onnxcam audit - {report['model_name']}", body)


def _per_class(report: dict[str, Any]) -> str:
    rows = report.get("per_class")
    if not rows:
        return ""
    methods: list[str] = report["methods"]
    head = "".join(f"<th>{esc(m)} insertion AUC</th><th>{esc(m)} deletion AUC</th>" for m in methods)
    body = []
    for r in rows:
        cells = "".join(f"<td>{fmt(r['metrics'][m].get('insertion_auc'))}</td>"
                        f"<td>{fmt(r['metrics'][m].get('deletion_auc'))}</td>" for m in methods)
        body.append(f"<tr><td class=\"l\">{esc(r['label'])}</td><td>{fmt(r['class'])}</td><td>{r['images']}</td>"
                    f"<td>{fmt(r['accuracy'])}</td>{cells}</tr>")
    return (f"<h2>Accuracy and per-class metrics</h2><p class=\"meta\">Top-1 accuracy against the labels: "
            f"{fmt(report.get('accuracy'))}. Mean AUCs per true class.</p>"
            f"<table><tr><th class=\"l\">Label</th><th>Class</th><th>Images</th><th>Accuracy</th>{head}</tr>"
            f"{''.join(body)}</table>")


def _sample_note(report: dict[str, Any], shown: int, shown_flagged: int) -> str:
    sample = report.get("sample") or {}
    if sample.get("all", True):
        return ""
    parts = [f"<p class=\"meta\">Showing {shown} of {report.get('images_total', shown)} images: per method the "
             f"{sample.get('k')} worst and best by insertion AUC over the image's random-map baseline, "
             f"{sample.get('k')} at random, and flagged images. Every image's numbers are in records.parquet, "
             "records.jsonl and metrics.csv; its overlays in overlays/.</p>"]
    more = sample.get("flagged_not_shown") or []
    if more:
        items = "".join(f"<li>{esc(m['file'])}: "
                        f"{esc(', '.join(flag_text(c) for c in m['flags']) or flag_text('near_tie'))}</li>"
                        for m in more)
        left = int(sample.get("flagged_total") or 0) - shown_flagged - len(more)
        rest = f"<p class=\"meta\">... and {left} more (see the records).</p>" if left > 0 else ""
        parts.append(f"<details><summary>{len(more) + max(left, 0)} more flagged image(s), not shown</summary>"
                     f"<ul class=\"flags\">{items}</ul>{rest}</details>")
    return "".join(parts)


def _false_alarm(report: dict[str, Any]) -> str:
    fa = report.get("false_alarm") or {}
    if not fa.get("of"):
        return ""
    return (f"<p class=\"meta\">Low-insertion flags are calibrated against random maps: a map is flagged when its "
            f"insertion AUC is more than {fmt(fa.get('margin'))} below the same image's random-map baseline (the mean "
            "of two seeded random maps); the margin is set from the spread between the two random maps so that a map "
            f"with no information would be flagged on about {fa.get('target', 0.05):.0%} of images (expected here: "
            f"{fmt(fa.get('expected'))}). Measured false-alarm rate: one random map flagged against the other on "
            f"{fa['flagged']} of {fa['of']} comparisons ({fmt(fa.get('rate'))}).</p>")


def _sanity(sanity: dict[str, Any] | None) -> str:
    if not sanity:
        return "<h2>Sanity check</h2><p class=\"meta\">Not run (--no-sanity).</p>"
    parts = ["<h2>Sanity check: cascading model randomisation</h2>",
             f"<p class=\"meta\">Weights re-drawn from the output end (Adebayo et al. 2018) on the first "
             f"{sanity['images']} image(s); Spearman rank correlation with the original maps. It should fall "
             f"towards 0 (here: to {sanity.get('falls_to', 0.2)} or below, without rising on the way); a method whose "
             "maps survive randomised weights is not explaining the model.</p>"]
    series = []
    for i, (m, res) in enumerate(sanity["methods"].items()):
        head = "".join(f"<th>top {k}</th>" for k in res["depths"])
        cells = "".join(f"<td>{fmt(v)}</td>" for v in res["mean"])
        dropped = res.get("dropped") or [0] * len(res["depths"])
        kept = "".join(f"<td>{sanity['images'] - d} of {sanity['images']}</td>" for d in dropped)
        ok = res.get("verdict") == "falls"
        verdict = (f"<span class=\"{'ok' if ok else 'badge'}\">{esc(m)}: "
                   f"{esc(res.get('verdict_text', ''))}</span>")
        parts.append(f"<table><tr><th class=\"l\">{esc(m)} (layers randomised)</th>{head}</tr>"
                     f"<tr><td class=\"l\">mean Spearman</td>{cells}</tr>"
                     f"<tr><td class=\"l\">images with a defined value</td>{kept}</tr></table>{verdict}")
        for note in res.get("notes", []):
            parts.append(f"<p class=\"meta\">{esc(note)}</p>")
        series.append({"name": m, "y": [1.0, *res["mean"]],
                       "color": PALETTE[i % len(PALETTE)]})
    depths = next(iter(sanity["methods"].values()))["depths"] if sanity["methods"] else []
    n = len(depths) + 1
    ticks = [(j / max(1, n - 1), "none" if j == 0 else f"top {depths[j - 1]}") for j in range(n)]
    parts.append("<div class=\"charts\">" + svg_lines("Sanity check: Spearman correlation with the original maps",
                                                        series, "layers randomised (from the output end)",
                                                        "mean Spearman", (-0.2, 1.0), ticks, width=420) + "</div>")
    return "".join(parts)


def _flag_index(images: Sequence[dict[str, Any]], total: int | None = None) -> str:
    rows = []
    for i, item in enumerate(images):
        flags = _image_flags(item)
        if flags:
            rows.append(f"<li><a href=\"#img-{i}\">{esc(item['name'])}</a>: {esc('; '.join(flags))}</li>")
    if not rows and not total:
        return "<h2>Flags</h2><p class=\"ok\">No image raised a flag.</p>"
    shown = "" if total is None or total == len(rows) else f"; {len(rows)} shown here"
    return (f"<h2>Flags ({total if total is not None else len(rows)} image(s) to review{shown})</h2>"
            f"<ul class=\"flags\">{''.join(rows)}</ul>")


def _grouped_flags(item: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The image's flags, each code once with the methods that raised it (in method order)."""
    order: dict[str, list[str]] = {}
    for m, res in item["methods"].items():
        for c in res["flags"]:
            order.setdefault(c, []).append(m)
    return list(order.items())


def _image_flags(item: dict[str, Any]) -> list[str]:
    out = [flag_text("near_tie")] if item["near_tie"] else []
    out += [f"{flag_text(c)} ({', '.join(ms)})" for c, ms in _grouped_flags(item)]
    return out


def _audit_image(i: int, item: dict[str, Any], row: Sequence[Tile], methods: Sequence[str],
                 keys: Sequence[str], report_margin: float | None = None) -> str:
    parts = [f"<div class=\"card\" id=\"img-{i}\"><h3>{esc(item['name'])}</h3>", _predictions(item["predictions"])]
    if item["near_tie"]:
        parts.append(f"<span class=\"badge\">{esc(flag_text('near_tie'))}</span>")
    if item.get("box") is None and item.get("box_note"):
        parts.append(f"<p class=\"meta\">{esc(item['box_note'])}</p>")
    if row:
        parts.append(f"<div class=\"tiles\">{_figures(row[:1], 'input')}{_figures(row[1:], 'overlay')}</div>")
    else:
        parts.append(f"<p class=\"meta\">Images left out to keep the report small: see {esc(item['file'])} and "
                     "its overlays in overlays/.</p>")
    head = "".join(f"<th>{esc(METRIC_INFO[k][0])}</th>" for k in keys)
    rows = []
    for m in methods:
        res = item["methods"][m]
        flagged = _flagged_keys(res["flags"])
        cells = "".join(f"<td class=\"{'flag' if k in flagged else ''}\">{fmt(res['values'].get(k), k)}</td>"
                        for k in keys)
        rows.append(f"<tr><td class=\"l\">{esc(m)} &rarr; {esc(res['label'])}</td>{cells}</tr>")
    parts.append(f"<table><tr><th class=\"l\">Method &rarr; class</th>{head}</tr>{''.join(rows)}</table>")
    parts.append(f"<p class=\"meta\">Random-map insertion AUC: {fmt(item.get('random_insertion_auc'))}</p>")
    flags = []
    for code, ms in _grouped_flags(item):
        margin = float(report_margin) if report_margin is not None else 0.05
        base = item.get("random_insertion_auc")
        details = "; ".join(f"{m}: {flag_detail(code, item['methods'][m]['values'], base, margin)}"
                            for m in ms) if code in ("low_insertion", "border") else ", ".join(ms)
        flags.append(f"<li class=\"flag\" data-flag=\"{esc(code)}\">{esc(flag_text(code))} &mdash; {esc(details)}</li>")
    if flags:
        parts.append("<ul class=\"flags\">" + "".join(flags) + "</ul>")
    parts.append("</div>")
    return "".join(parts)


def _flagged_keys(flags: Sequence[str]) -> set[str]:
    mapping = {"low_insertion": "insertion_auc", "border": "border_energy", "peak_outside_box": "pointing_game"}
    return {mapping[f] for f in flags if f in mapping}


# ---------------------------------------------------------------------------------------- compare


def render_compare(report: dict[str, Any], tiles: Sequence[Sequence[Tile]]) -> str:
    """The compare page from ``report`` (its ``metrics.json``) and per-image tiles (input, A, B, |A-B|).

    Images appear in ``report["ranking"]`` order, most changed explanation first.
    """
    a, b = report["model_a_name"], report["model_b_name"]
    s = report["summary"]
    body = [f"<h1>onnxcam compare: {esc(a)} vs {esc(b)}</h1>",
            f"<p class=\"meta\">{s['images']} image(s), method {esc(report['method'])}, each image explained for "
            f"A's top-1 class in both models; layers A: {esc(', '.join(report['layers_a']))}, B: "
            f"{esc(', '.join(report['layers_b']))}</p>"]
    if report.get("failed"):
        body.append("<p class=\"flag\">Skipped (unreadable): "
                    + ", ".join(esc(f["file"]) for f in report["failed"]) + "</p>")
    verdict = report.get("verdict") or {}
    if verdict:
        body.append(f"<p class=\"verdict {'ok' if verdict['agree'] else 'flag'}\">Verdict: {esc(verdict['text'])}</p>")
    body.append("<h2>Summary</h2><table>"
                f"<tr><th class=\"l\">Top-1 agreement</th><td>{fmt(s['top1_agreement'])}</td></tr>"
                f"<tr><th class=\"l\">Pearson (mean &plusmn; std)</th><td>{fmt(s['pearson']['mean'])} &plusmn; "
                f"{fmt(s['pearson']['std'])}</td></tr>"
                f"<tr><th class=\"l\">Top-20% IoU (mean &plusmn; std)</th><td>{fmt(s['top_iou']['mean'])} &plusmn; "
                f"{fmt(s['top_iou']['std'])}</td></tr>"
                f"<tr><th class=\"l\">Max |prob A - prob B| of the class</th><td>{fmt(s['max_prob_diff'])}</td></tr>"
                "</table>")
    rows = []
    for rank, i in enumerate(report["ranking"], 1):
        item = report["images"][i]
        cls = "" if item["top1_agree"] else " class=\"flag\""
        rows.append(f"<tr{cls}><td>{rank}</td><td class=\"l\"><a href=\"#img-{i}\">{esc(item['name'])}</a></td>"
                    f"<td class=\"l\">{esc(item['top1_a_label'])}</td><td class=\"l\">{esc(item['top1_b_label'])}</td>"
                    f"<td>{fmt(item['pearson'])}</td><td>{fmt(item['top_iou'])}</td><td>{fmt(item['change'])}</td>"
                    f"</tr>")
    body.append("<h2>Images ranked by explanation change (most changed first)</h2><table><tr><th>#</th>"
                "<th class=\"l\">Image</th><th class=\"l\">Top-1 A</th><th class=\"l\">Top-1 B</th><th>Pearson</th>"
                f"<th>Top-20% IoU</th><th>Change</th></tr>{''.join(rows)}</table>")
    for i in report["ranking"]:
        item = report["images"][i]
        badge = "" if item["top1_agree"] else "<span class=\"badge\">top-1 differs</span>"
        body.append(f"<div class=\"card\" id=\"img-{i}\"><h3>{esc(item['name'])}</h3>{badge}"
                    f"<p class=\"meta\">class explained: {esc(item['label'])}; p(A) {item['prob_a']:.3f}, "
                    f"p(B) {item['prob_b']:.3f}; Pearson {fmt(item['pearson'])}, top-20% IoU "
                    f"{fmt(item['top_iou'])}</p><div class=\"tiles\">{_figures(tiles[i][:1], 'input')}"
                    f"{_figures(tiles[i][1:], 'overlay')}</div></div>")
    return _page(f"onnxcam compare - {a} vs {b}", body)


__all__ = ["METRIC_INFO", "TILE_SIZE", "data_uri", "fmt", "render_audit", "render_compare", "svg_lines", "svg_strips"]
