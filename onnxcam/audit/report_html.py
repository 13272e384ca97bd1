"""Self-contained HTML reports for ``onnxcam audit`` and ``onnxcam compare``.

One file, opened offline: CSS and the small script are inline, every image is a ``data:`` URI
(PNG or JPEG, whichever is smaller, tiles downscaled to ``TILE_SIZE``), and nothing references a
network address. The pages are rendered from the same dictionaries written to ``metrics.json``,
so the report and the JSON cannot disagree.
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
    "random_insertion_auc": ("Random ins. AUC", "-", "insertion AUC of a seeded random map (baseline)"),
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
"""

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


def _legend(keys: Sequence[str]) -> str:
    rows = "".join(f"<tr><td class=\"l\">{esc(METRIC_INFO[k][0])}</td><td class=\"l\">{esc(METRIC_INFO[k][1])}</td>"
                   f"<td class=\"l\">{esc(METRIC_INFO[k][2])}</td></tr>" for k in keys if k in METRIC_INFO)
    flags = "".join(f"<li>{esc(flag_text(c))}</li>" for c in
                    ("low_insertion", "border", "peak_outside_box", "near_tie", "blank_map"))
    return ("<details><summary>How to read the numbers</summary><table><tr><th class=\"l\">Metric</th>"
            f"<th class=\"l\">Better</th><th class=\"l\">Meaning</th></tr>{rows}</table>"
            f"<p>Flags raised for review:</p><ul class=\"flags\">{flags}</ul></details>")


# ------------------------------------------------------------------------------------------ audit


def render_audit(report: dict[str, Any], tiles: Sequence[Sequence[Tile]]) -> str:
    """The audit page from ``report`` (the ``metrics.json`` dictionary) and per-image tiles.

    ``tiles[i]``: the input image first, then one overlay per method, for ``report["images"][i]``.
    """
    keys: list[str] = report["metric_keys"]
    methods: list[str] = report["methods"]
    images: list[dict[str, Any]] = report["images"]
    body = [f"<h1>onnxcam audit: {esc(report['model_name'])}</h1>",
            f"<p class=\"meta\">{len(images)} image(s), methods {esc(', '.join(methods))}, layer(s) "
            f"{esc('; '.join(f'{m}: ' + ', '.join(v) for m, v in report['layers'].items()))}, device "
            f"{esc(report['device'])}, preprocessing {esc(report['preprocess'])}</p>"]
    if report.get("failed"):
        body.append("<p class=\"flag\">Skipped (unreadable): "
                    + ", ".join(esc(f["file"]) for f in report["failed"]) + "</p>")
    body.append(_legend(keys + ["random_insertion_auc"]))
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
    body.append(_sanity(report.get("sanity")))
    body.append(_flag_index(images))
    body.append("<h2>Images</h2>")
    for i, (item, row) in enumerate(zip(images, tiles, strict=True)):
        body.append(_audit_image(i, item, row, methods, keys))
    return _page(f"onnxcam audit - {report['model_name']}", body)


def _sanity(sanity: dict[str, Any] | None) -> str:
    if not sanity:
        return "<h2>Sanity check</h2><p class=\"meta\">Not run (--no-sanity).</p>"
    parts = ["<h2>Sanity check: cascading model randomisation</h2>",
             f"<p class=\"meta\">Weights re-drawn from the output end (Adebayo et al. 2018) on the first "
             f"{sanity['images']} image(s); Spearman rank correlation with the original maps. It should fall "
             "towards 0; a method whose maps survive randomised weights is not explaining the model.</p>"]
    for m, res in sanity["methods"].items():
        head = "".join(f"<th>top {k}</th>" for k in res["depths"])
        cells = "".join(f"<td>{fmt(v)}</td>" for v in res["mean"])
        last = res["mean"][-1] if res["mean"] else None
        verdict = (f"<span class=\"badge\">still correlated ({fmt(last)} &gt; {sanity['threshold']}) with every "
                   "layer randomised: the maps may reflect the image more than the model</span>"
                   if res["suspicious"] else f"<span class=\"ok\">ends at {fmt(last)}: falls as expected</span>")
        parts.append(f"<table><tr><th class=\"l\">{esc(m)} (layers randomised)</th>{head}</tr>"
                     f"<tr><td class=\"l\">mean Spearman</td>{cells}</tr></table>{verdict}")
        for note in res.get("notes", []):
            parts.append(f"<p class=\"meta\">{esc(note)}</p>")
    return "".join(parts)


def _flag_index(images: Sequence[dict[str, Any]]) -> str:
    rows = []
    for i, item in enumerate(images):
        flags = _image_flags(item)
        if flags:
            rows.append(f"<li><a href=\"#img-{i}\">{esc(item['name'])}</a>: {esc('; '.join(flags))}</li>")
    if not rows:
        return "<h2>Flags</h2><p class=\"ok\">No image raised a flag.</p>"
    return f"<h2>Flags ({len(rows)} image(s) to review)</h2><ul class=\"flags\">{''.join(rows)}</ul>"


def _image_flags(item: dict[str, Any]) -> list[str]:
    out = [flag_text("near_tie")] if item["near_tie"] else []
    for m, res in item["methods"].items():
        out += [f"{m}: {flag_text(c)}" for c in res["flags"]]
    return out


def _audit_image(i: int, item: dict[str, Any], row: Sequence[Tile], methods: Sequence[str],
                 keys: Sequence[str]) -> str:
    parts = [f"<div class=\"card\" id=\"img-{i}\"><h3>{esc(item['name'])}</h3>", _predictions(item["predictions"])]
    if item["near_tie"]:
        parts.append(f"<span class=\"badge\">{esc(flag_text('near_tie'))}</span>")
    if item.get("box") is None and item.get("box_note"):
        parts.append(f"<p class=\"meta\">{esc(item['box_note'])}</p>")
    parts.append(f"<div class=\"tiles\">{_figures(row[:1], 'input')}{_figures(row[1:], 'overlay')}</div>")
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
    flags = [f"{m}: {flag_detail(c, item['methods'][m]['values'], item.get('random_insertion_auc'))}"
             for m in methods for c in item["methods"][m]["flags"]]
    if flags:
        parts.append("<ul class=\"flags\">" + "".join(f"<li class=\"flag\">{esc(f)}</li>" for f in flags) + "</ul>")
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


__all__ = ["METRIC_INFO", "TILE_SIZE", "data_uri", "fmt", "render_audit", "render_compare"]
