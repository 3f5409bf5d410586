"""The compare report as one self-contained HTML file (images embedded as data URIs)."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.no{color:#b00}.yes{color:#070}.muted{color:#777}
img{max-width:100%;border:1px solid #ddd}h2{margin-top:28px}code{background:#f5f5f5;padding:1px 4px}
"""


def _img(path: Path | None, alt: str, upscale: bool = False) -> str:
    """The PNG inline; ``upscale``: small pixel images (64 px samples) shown larger, pixels kept sharp."""
    if path is None:
        return f'<p class="muted">{escape(alt)}: not available.</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode()
    style = ""
    if upscale:
        from PIL import Image

        width = Image.open(path).size[0]
        style = f' style="width:{min(1000, 3 * width)}px;image-rendering:pixelated"'
    return f'<img alt="{escape(alt)}"{style} src="data:image/png;base64,{data}">'


def _fmt(v: float | None, key: str) -> str:
    if v is None:
        return "—"
    if key in ("num_images",):
        return str(int(v))
    return f"{v:.4g}"


def _side_block(name: str, side) -> str:
    m = side.metrics
    comparable = m.get("paper_comparable")
    verdict = (
        '<span class="yes">yes</span>'
        if comparable
        else '<span class="no">no</span>'
        if comparable is False
        else '<span class="muted">not recorded</span>'
    )
    reasons = "".join(f"<li>{escape(r)}</li>" for r in m.get("paper_comparable_reasons", []))
    missing = "".join(f"<li>{escape(x)}</li>" for x in side.missing)
    version = f", registered version {escape(side.version)}" if side.version else ""
    return (
        f"<h3>{name}: <code>{escape(side.ref)}</code></h3>"
        f"<p>run <code>{escape(side.run_id)}</code> ({escape(side.run_name)}){version}; dataset "
        f"{escape(str(m.get('dataset', '?')))} <code>{escape(str(m.get('dataset_id', '?')))}</code>; "
        f"{escape(str(m.get('num_images', '?')))} images at {escape(str(m.get('height', '?')))}x"
        f"{escape(str(m.get('width', '?')))}; style {escape(str(m.get('style_source', '?')))}; "
        f"FID backbone {escape(str(m.get('backbone', {}).get('name', '?')))}; segmenter "
        f"{escape(str(m.get('segmenter', {}).get('arch', '?')))} "
        f"<code>{escape(str(m.get('segmenter', {}).get('id', '?')))}</code>; device "
        f"{escape(str(m.get('precision_modes', {}).get('device', '?')))}</p>"
        f"<p>paper-comparable: {verdict}</p>"
        + (f"<ul>{reasons}</ul>" if reasons else "")
        + (f"<p class='no'>missing from the run:</p><ul>{missing}</ul>" if missing else "")
    )


def _metric_table(rows) -> str:
    body = []
    for r in rows:
        diff = r.b - r.a if r.a is not None and r.b is not None else None
        verdict = '<span class="yes">yes</span>' if r.comparable else f'<span class="no">no</span>: {escape(r.why_not)}'
        body.append(
            f"<tr><td class='l'>{escape(r.key)}</td><td>{_fmt(r.a, r.key)}</td><td>{_fmt(r.b, r.key)}</td>"
            f"<td>{_fmt(diff, r.key)}</td><td>{r.better}</td><td class='l'>{verdict}</td></tr>"
        )
    head = (
        "<tr><th class='l'>metric</th><th>A</th><th>B</th><th>B − A</th><th>better</th>"
        "<th class='l'>comparable</th></tr>"
    )
    return f"<table>{head}{''.join(body)}</table>"


def _iou_table(ious) -> str:
    if not ious:
        return '<p class="muted">No class was scored in both runs.</p>'
    rows = "".join(
        f"<tr><td class='l'>{escape(n)}</td><td>{a:.3f}</td><td>{b:.3f}</td><td>{b - a:+.3f}</td></tr>"
        for n, a, b in reversed(ious)
    )
    return f"<table><tr><th class='l'>class</th><th>A</th><th>B</th><th>B − A</th></tr>{rows}</table>"


def render_html(a, b, rows, ious, files: dict, maps: int, seed: int) -> str:
    title = f"{a.label} vs {b.label}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>Compare: {escape(title)}</h1>
{_side_block("A", a)}{_side_block("B", b)}
<h2>Metrics</h2>
<p>Numbers are compared only when both evaluations share the dataset version, image count, resolution and style
source, and the FID backbone (FID, KID, precision, recall) or the segmenter (mIoU, accuracy).
“better”: lower FID/KID, higher precision, recall, mIoU, accuracy, diversity.</p>
{_metric_table(rows)}
<h2>Per-class IoU of generated images</h2>
{_img(files.get("iou"), "per-class IoU difference chart")}
<details><summary>table</summary>{_iou_table(ious)}</details>
<h2>The same validation maps, both models</h2>
<p>Columns: label map | A | B | real photo. The first {maps} validation maps, style seed {seed}.</p>
{_img(files.get("samples"), "side-by-side samples (needs both generator files and data.out)", upscale=True)}
<h2>Training losses</h2>
<p>A solid, B dashed.</p>
{_img(files.get("losses"), "loss curves")}
</body></html>
"""
