"""`adapdate eval --html`: a self-contained comparison page (one index.html and its PNGs, no network).

The page holds the rate–distortion curves (PSNR and MS-SSIM against bpp, inline SVG whose points show
their values on hover), the per-codec and BD-rate tables (plain HTML: readable without JavaScript), and per
image a viewer: the adapdate image at each of its settings next to any other codec at the nearest file
size, with a split slider, zoom 1:1 and 2:1 and a crop that follows the mouse.

The decoded images come from the evaluation itself (`evaluate.run(keep=..., on_decoded=...)`), not from
coding again: `ReportBuilder.add` receives each (image, codec) unit as it finishes, and once all codecs of
an image are in, keeps the pictures the viewer needs as PNG (lossless: what the codec really produced) and
drops the rest. Large images are shown as a centred window (`Window`), and images stop being added when
the folder would pass `max_bytes`; the page says both.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from adapdate_codec.evaluate import Decoded, Evaluation, Row, Window, load_rgb
from adapdate_codec.fileio import check_folder_writable

SUBJECT = "adapdate"
DEFAULT_WINDOW = Window(1024, 1024)
DEFAULT_MAX_MB = 100.0
GENERATOR = "adapdate eval --html"
# zlib level 1: a PNG of a decoded photo is ~10 % larger than at level 6 but is written ~3x faster, and
# the PNGs are written while the evaluation runs (the report must not add more than ~10 % to its time).
PNG_LEVEL = 1
PALETTE = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7f8c", "#57606a",
           "#e16f24", "#4d2d00")


# --- choosing what the viewer shows ------------------------------------------------------------------


def is_subject(codec: str) -> bool:
    """adapdate itself and its variants (a name like "adapdate:e5" or "adapdate@v2")."""
    return codec == SUBJECT or (codec.startswith(SUBJECT) and not codec[len(SUBJECT)].isalnum())


def subject_codecs(codecs: Sequence[str]) -> list[str]:
    """The codecs shown on the left of the viewer: adapdate's, or the first codec when there is none."""
    return [c for c in codecs if is_subject(c)] or list(codecs[:1])


def fmt_setting(setting: float) -> str:
    return str(int(setting)) if float(setting).is_integer() else f"{setting:g}"


def row_key(row: Row) -> str:
    return f"{row.codec}|{fmt_setting(row.setting)}"


def codec_of(key: str) -> str:
    return key.rpartition("|")[0]


def nearest_by_bytes(target: int, rows: Iterable[Row]) -> Row:
    """The row whose file size is closest to `target` bytes (on a tie, the smaller file)."""
    return min(rows, key=lambda r: (abs(r.bytes - target), r.bytes))


@dataclass
class Selection:
    """For one image: the subject rows (left side) and, per subject row, the nearest row of every codec."""

    subjects: list[Row]
    nearest: dict[str, dict[str, Row]]

    def rows(self) -> list[Row]:
        seen: dict[str, Row] = {row_key(r): r for r in self.subjects}
        for per_codec in self.nearest.values():
            for r in per_codec.values():
                seen.setdefault(row_key(r), r)
        return list(seen.values())


def select(rows: Sequence[Row], subjects: Sequence[str]) -> Selection:
    by_codec: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_codec[r.codec].append(r)
    left = sorted((r for r in rows if r.codec in subjects), key=lambda r: (subjects.index(r.codec), r.bytes))
    nearest = {row_key(s): {c: nearest_by_bytes(s.bytes, group) for c, group in by_codec.items()} for s in left}
    return Selection(left, nearest)


# --- labels ------------------------------------------------------------------------------------------


def setting_label(setting_name: str, setting: float) -> str:
    """How a setting reads next to a codec name: q3, QP 30, d 1.8."""
    value = fmt_setting(setting)
    return {"quality": f"q{value}", "qp": f"QP {value}", "distance": f"d {value}"}.get(setting_name,
                                                                                        f"{setting_name} {value}")


def _num(v: float, digits: int) -> str:
    return f"{v:.{digits}f}" if math.isfinite(v) else ("∞" if v == math.inf else "n/a")


def caption(r: Row) -> str:
    """Bytes, bpp, PSNR and MS-SSIM of one decoded image, as printed under it."""
    text = f"{r.bytes:,} bytes · {_num(r.bpp, 3)} bpp · PSNR {_num(r.psnr, 2)} dB"
    if math.isfinite(r.ms_ssim):
        text += f" · MS-SSIM {r.ms_ssim:.4f}"
    return text


# --- collecting decoded images -----------------------------------------------------------------------


@dataclass
class Shown:
    """One decoded picture on the page."""

    key: str
    label: str
    caption: str
    src: str
    bytes: int

    def js(self) -> dict:
        return {"label": self.label, "caption": self.caption, "src": self.src, "bytes": self.bytes}


@dataclass
class ImageView:
    """What one image's viewer needs; `box` is the window shown, (left, top, width, height)."""

    index: int
    name: str
    width: int
    height: int
    box: tuple[int, int, int, int]
    original: Shown
    shown: dict[str, Shown]
    subjects: list[str]
    nearest: dict[str, dict[str, str]]

    def js(self) -> dict:
        return {"width": self.box[2], "height": self.box[3], "original": self.original.js(),
                "shown": {k: s.js() for k, s in self.shown.items()}, "nearest": self.nearest}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def write_png(path: Path, pixels: np.ndarray) -> int:
    from PIL import Image

    Image.fromarray(pixels, "RGB").save(path, "PNG", compress_level=PNG_LEVEL)
    return path.stat().st_size


class ReportBuilder:
    """Receives decoded crops during `evaluate.run` and writes the report into `folder` (a staging folder:
    see fileio.staged_folder).

    images and codecs: those of the run, to know when an image is complete; setting_names: codec -> what
    its settings are (quality, qp, distance) for the labels.
    """

    def __init__(self, folder: Path, images: Sequence[Path], codecs: Sequence[str], setting_names: dict[str, str],
                 *, window: Window = DEFAULT_WINDOW, max_mb: float = DEFAULT_MAX_MB) -> None:
        self.folder = Path(folder)
        self.images = list(dict.fromkeys(images))
        self.codecs = list(codecs)
        self.subjects = subject_codecs(self.codecs)
        self.setting_names = setting_names
        self.window = window
        self.max_bytes = int(max_mb * 1e6)
        self.views: list[ImageView] = []
        self.omitted: list[str] = []
        self.bytes_written = 0
        self._pixels_written = 0
        self._pending: dict[Path, list[Decoded]] = defaultdict(list)
        self._units: dict[Path, int] = defaultdict(int)
        self._done: set[Path] = set()
        self._index = {p: i for i, p in enumerate(self.images)}

    @property
    def keep(self) -> Window:
        return self.window

    def add(self, path: Path, decoded: list[Decoded]) -> None:
        """evaluate.run's on_decoded: one (image, codec) unit."""
        if path in self._done:  # an image named twice on the command line is shown once
            return
        self._pending[path].extend(decoded)
        self._units[path] += 1
        if self._units[path] == len(self.codecs):
            self._done.add(path)
            self._store(path, self._pending.pop(path))

    def _label(self, r: Row) -> str:
        return f"{r.codec} {setting_label(self.setting_names.get(r.codec, 'quality'), r.setting)}"

    def _store(self, path: Path, decoded: list[Decoded]) -> None:
        index = self._index[path]
        rows = [r for r, _ in decoded]
        selection = select(rows, [c for c in self.subjects if any(r.codec == c for r in rows)])
        if not selection.subjects:
            self.omitted.append(f"{path.name} (no {', '.join(self.subjects)} result)")
            return
        pixels = {row_key(r): crop for r, crop in decoded}
        keep = selection.rows()
        h, w = next(iter(pixels.values())).shape[:2]
        # Estimated from what earlier images took per pixel; the first image always goes in.
        if self.views and self._pixels_written:
            estimate = (len(keep) + 1) * h * w * self.bytes_written / self._pixels_written
            if self.bytes_written + estimate > self.max_bytes:
                self.omitted.append(path.name)
                return
        sub = self.folder / "img" / f"{index:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        written = 0
        shown: dict[str, Shown] = {}
        for r in keep:
            key = row_key(r)
            name = f"{_slug(r.codec)}-{_slug(fmt_setting(r.setting))}.png"
            written += write_png(sub / name, pixels[key])
            shown[key] = Shown(key, self._label(r), caption(r), f"img/{index:03d}/{name}", r.bytes)
        full = load_rgb(path)
        written += write_png(sub / "original.png", self.window.crop(full))
        fh, fw = full.shape[:2]
        original = Shown("original", "original", f"{fw}×{fh} px, lossless", f"img/{index:03d}/original.png", 0)
        if self.views and self.bytes_written + written > self.max_bytes:  # the estimate was short
            shutil.rmtree(sub)
            self.omitted.append(path.name)
            return
        self.bytes_written += written
        self._pixels_written += (len(keep) + 1) * h * w
        self.views.append(ImageView(
            index, path.name, fw, fh, self.window.box(fh, fw), original, shown,
            [row_key(r) for r in selection.subjects],
            {k: {c: row_key(r) for c, r in per.items()} for k, per in selection.nearest.items()},
        ))

    def write(self, ev: Evaluation, command: str | None = None) -> Path:
        """index.html for the evaluation; returns its path."""
        self.views.sort(key=lambda v: v.index)
        page = render_page(ev, self.views, PageInfo(
            command=command, images=len(self.images), omitted=self.omitted, max_mb=self.max_bytes / 1e6,
            window=self.window, generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        ))
        out = self.folder / "index.html"
        out.write_text(page, encoding="utf-8")
        return out


def looks_like_report(folder: Path) -> bool:
    """A folder this command wrote: its index.html names the generator (so --force may replace it)."""
    try:
        with open(folder / "index.html", encoding="utf-8", errors="replace") as f:
            return f'<meta name="generator" content="{GENERATOR}' in f.read(4096)
    except OSError:
        return False


def check_output(folder: str | Path, force: bool) -> None:
    check_folder_writable(folder, force, looks_like_report)


# --- charts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    tip: str


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    points: tuple[Point, ...]
    dashed: bool = False


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values covering [lo, hi], about `count` of them (steps of 1, 2, 2.5 or 5 × 10^k)."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks = []
    t = first
    while t < hi + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _tick_text(v: float, ticks: Sequence[float]) -> str:
    """As many decimals as the step needs (0.25 -> 2, 0.5 -> 1, 5 -> 0)."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    digits = next((d for d in range(7) if abs(round(step, d) - step) < 1e-9 * max(1.0, step)), 6)
    return f"{v:.{digits}f}"


def svg_chart(series: Sequence[Series], x_label: str, y_label: str, title: str,
              width: int = 560, height: int = 380) -> str:
    """A line chart as inline SVG; each point carries a <title> (the browser shows it on hover)."""
    pts = [p for s in series for p in s.points if math.isfinite(p.x) and math.isfinite(p.y)]
    if not pts:
        return ""
    left, right, top, bottom = 56, 14, 28, 44
    xt = nice_ticks(0.0, max(p.x for p in pts))
    yt = nice_ticks(min(p.y for p in pts), max(p.y for p in pts))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{e(title)}">', f"<title>{e(title)}</title>"]
    for x in xt:
        out.append(f'<line class="grid" x1="{sx(x):.1f}" y1="{top}" x2="{sx(x):.1f}" y2="{top + ph}"/>')
        out.append(f'<text class="tick" x="{sx(x):.1f}" y="{top + ph + 16}" text-anchor="middle">'
                   f"{_tick_text(x, xt)}</text>")
    for y in yt:
        out.append(f'<line class="grid" x1="{left}" y1="{sy(y):.1f}" x2="{left + pw}" y2="{sy(y):.1f}"/>')
        out.append(f'<text class="tick" x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">'
                   f"{_tick_text(y, yt)}</text>")
    out.append(f'<path class="axis" d="M{left},{top}V{top + ph}H{left + pw}" fill="none"/>')
    out.append(f'<text class="label" x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">{e(x_label)}</text>')
    out.append(f'<text class="label" transform="translate(14,{top + ph / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{e(y_label)}</text>')
    out.append(f'<text class="label" x="{left}" y="{top - 10}">{e(title)}</text>')
    for s in series:
        good = sorted((p for p in s.points if math.isfinite(p.x) and math.isfinite(p.y)), key=lambda p: p.x)
        if not good:
            continue
        cls = "series reference" if s.dashed else "series"
        out.append(f'<g class="{cls}" data-name="{e(s.name)}">')
        d = "M" + "L".join(f"{sx(p.x):.1f},{sy(p.y):.1f}" for p in good)
        out.append(f'<path d="{d}" stroke="{s.color}"/>')
        if not s.dashed:
            for p in good:
                out.append(f'<circle cx="{sx(p.x):.1f}" cy="{sy(p.y):.1f}" r="4" fill="{s.color}" tabindex="0">'
                           f"<title>{e(p.tip)}</title></circle>")
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def _colors(ev: Evaluation) -> dict[str, str]:
    names = [r.name for r in ev.results] + [c.name for c in ev.references]
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def charts(ev: Evaluation) -> tuple[str, str]:
    """(PSNR chart, MS-SSIM chart) as SVG; the MS-SSIM one is empty when no image was large enough."""
    colors = _colors(ev)
    psnr, msssim = [], []
    for r in ev.results:
        label = lambda s: setting_label(r.setting_name, s)  # noqa: E731
        psnr.append(Series(r.name, colors[r.name], tuple(
            Point(b, p, f"{r.name} {label(s)}: {b:.3f} bpp, PSNR {p:.2f} dB")
            for b, p, s in zip(r.bpp, r.psnr, r.settings))))
        msssim.append(Series(r.name, colors[r.name], tuple(
            Point(b, d, f"{r.name} {label(s)}: {b:.3f} bpp, MS-SSIM {m:.4f} ({d:.2f} dB)")
            for b, d, m, s in zip(r.bpp, r.ms_ssim_db, r.ms_ssim, r.settings))))
    for c in ev.references:
        psnr.append(Series(c.name, colors[c.name], tuple(Point(b, p, "") for b, p in zip(c.bpp, c.psnr)), dashed=True))
    n = len(ev.images)
    return (svg_chart(psnr, "bits per pixel", "PSNR-RGB (dB)", f"PSNR against rate, mean of {n} image(s)"),
            svg_chart(msssim, "bits per pixel", "MS-SSIM (dB)", f"MS-SSIM against rate, mean of {n} image(s)"))


# --- the page ----------------------------------------------------------------------------------------


@dataclass
class PageInfo:
    command: str | None
    images: int
    omitted: list[str] = field(default_factory=list)
    max_mb: float = DEFAULT_MAX_MB
    window: Window = DEFAULT_WINDOW
    generated: str = ""


def _asset(name: str) -> str:
    return resources.files("adapdate_codec").joinpath("report_assets", name).read_text(encoding="utf-8")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:+.1f} %"


def _db(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.2f} dB"


def results_table(ev: Evaluation) -> str:
    e = html.escape
    out = ['<table class="results"><caption>Means over the images, per setting</caption><thead><tr>'
           "<th>codec</th><th>setting</th><th>images</th><th>bpp</th><th>PSNR (dB)</th><th>MS-SSIM</th>"
           "<th>MS-SSIM (dB)</th><th>encode (s)</th><th>decode (s)</th></tr></thead><tbody>"]
    for r in ev.results:
        for i, s in enumerate(r.settings):
            out.append(f"<tr><td>{e(r.name)}</td><td>{e(setting_label(r.setting_name, s))}</td><td>{r.images[i]}</td>"
                       f"<td>{_num(r.bpp[i], 3)}</td><td>{_num(r.psnr[i], 2)}</td><td>{_num(r.ms_ssim[i], 4)}</td>"
                       f"<td>{_num(r.ms_ssim_db[i], 2)}</td><td>{_num(r.encoding_time[i], 3)}</td>"
                       f"<td>{_num(r.decoding_time[i], 3)}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def bd_table(ev: Evaluation) -> str:
    """One row per codec, one column per anchor/reference: BD-rate and BD-PSNR (PSNR-RGB)."""
    e = html.escape
    targets = list(dict.fromkeys([*([ev.anchor] if ev.anchor else []), *(b.against for b in ev.bd)]))
    if not targets:
        return "<p>No BD figures: no anchor or reference in this run (<code>--anchor</code>, <code>--reference</code>).</p>"
    by_pair = {(b.codec, b.against): b for b in ev.bd}
    out = ['<p class="muted">BD-rate / BD-PSNR on PSNR-RGB (a negative rate: fewer bits for the same quality; '
           "over the PSNR range both curves cover).</p><table class=\"bd\"><thead><tr><th>codec</th>"]
    out += [f"<th>vs {e(t)}{' (anchor)' if t == ev.anchor else ''}</th>" for t in targets]
    out.append("</tr></thead><tbody>")
    for r in ev.results:
        out.append(f"<tr><td>{e(r.name)}</td>")
        for t in targets:
            b = by_pair.get((r.name, t))
            if b is None:
                out.append("<td>–</td>")
            elif b.error:
                out.append(f'<td title="{e(b.error)}">n/a</td>')
            else:
                cls = "better" if (b.bd_rate or 0) < 0 else "worse"
                out.append(f'<td class="{cls}">{_pct(b.bd_rate)} / {_db(b.bd_psnr)}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _legend(ev: Evaluation) -> str:
    e = html.escape
    colors = _colors(ev)
    items = [f'<li><span class="swatch" style="background:{colors[r.name]}"></span>{e(r.name)} '
             f'<span class="muted">{e(r.description)}</span></li>' for r in ev.results]
    items += [f'<li><span class="swatch dashed" style="color:{colors[c.name]}"></span>{e(c.name)} '
              f'<span class="muted">(published)</span></li>' for c in ev.references]
    return '<ul class="legend">' + "".join(items) + "</ul>"


def _viewer(v: ImageView) -> str:
    """One image's viewer; its initial pair is in the HTML, so it shows without JavaScript."""
    e = html.escape
    single = len({codec_of(k) for k in v.subjects}) == 1
    left_key = v.subjects[len(v.subjects) // 2] if single else v.subjects[0]  # a middle setting when it can
    left_codec = codec_of(left_key)
    others = [c for c in v.nearest[left_key] if c != left_codec]
    right_codec = others[0] if others else "original"
    right = v.original if right_codec == "original" else v.shown[v.nearest[left_key][right_codec]]
    left = v.shown[left_key]
    groups: dict[str, list[str]] = defaultdict(list)
    for k in v.subjects:
        groups[codec_of(k)].append(k)
    options = []
    for codec, keys in groups.items():
        options.append(f'<optgroup label="{e(codec)}">')
        options += [f'<option value="{e(k)}"{" selected" if k == left_key else ""}>'
                    f"{e(v.shown[k].label)} · {v.shown[k].bytes:,} bytes</option>" for k in keys]
        options.append("</optgroup>")
    right_options = [f'<option value="{e(c)}"{" selected" if c == right_codec else ""}>{e(c)} (nearest size)</option>'
                     for c in others] + [f'<option value="original"{" selected" if right_codec == "original" else ""}>'
                                         "original</option>"]
    bw, bh = v.box[2], v.box[3]
    shown_as = "whole image" if (bw, bh) == (v.width, v.height) else f"centre {bw}×{bh} crop"
    zoom = "".join(f'<button type="button" data-zoom="{z}" aria-pressed="{str(z == 0).lower()}">{t}</button>'
                   for z, t in ((0, "fit"), (1, "1:1"), (2, "2:1")))
    return f"""<section class="viewer" id="image-{v.index}" data-image="{v.index}" aria-labelledby="image-{v.index}-title">
<h3 id="image-{v.index}-title">{e(v.name)} <small>{v.width}×{v.height} px, {shown_as}</small></h3>
<div class="controls">
<label>left <select class="left">{''.join(options)}</select></label>
<label>right <select class="right">{''.join(right_options)}</select></label>
<span class="zoom js-only" role="group" aria-label="zoom">{zoom}</span>
</div>
<div class="frame">
<div class="stage" tabindex="0" aria-label="comparison of {e(v.name)}; when zoomed, the mouse or the arrow keys move the view">
<div class="layer a"><img class="a" src="{e(left.src)}" alt="{e(left.label)}" width="{bw}" height="{bh}" loading="lazy"></div>
<div class="layer b"><img class="b" src="{e(right.src)}" alt="{e(right.label)}" width="{bw}" height="{bh}" loading="lazy"></div>
<div class="divider"></div><span class="tag a"></span><span class="tag b"></span>
</div>
<input type="range" class="split" min="0" max="100" step="1" value="50" aria-label="split between the left and the right image">
<div class="captions"><p class="cap-a"><b>{e(left.label)}</b> {e(left.caption)}</p><p class="cap-b"><b>{e(right.label)}</b> {e(right.caption)}</p></div>
</div>
</section>"""


def render_page(ev: Evaluation, views: Sequence[ImageView], info: PageInfo) -> str:
    """The whole index.html (CSS and script inline; image files beside it)."""
    e = html.escape
    psnr_svg, ms_svg = charts(ev)
    codecs = ", ".join(r.name for r in ev.results)
    notes = list(ev.notes)
    if info.omitted:
        notes.append(f"Viewers for {len(views)} of {info.images} images: the page is kept under {info.max_mb:g} MB "
                     f"(--html-max-mb); left out: {', '.join(info.omitted[:10])}"
                     f"{' ...' if len(info.omitted) > 10 else ''}. Their results are in the curves and tables.")
    w = info.window
    if any((v.box[2], v.box[3]) != (v.width, v.height) for v in views):
        notes.append(f"Images larger than {w.max_width}×{w.max_height} px are shown as their centre crop "
                     "(the metrics are of the whole image).")
    data = {"images": {str(v.index): v.js() for v in views}}
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # cannot end the <script>
    toc = "".join(f'<a href="#image-{v.index}">{e(v.name)}</a>' for v in views)
    ms_block = (f'<figure class="chart">{ms_svg}</figure>' if ms_svg else
                '<p class="chart muted">MS-SSIM is undefined for images under 161 px on a side.</p>')
    command = f'<pre class="command"><code>{e(info.command)}</code></pre>' if info.command else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="{GENERATOR}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>adapdate: {e(codecs)} on {len(ev.images)} image(s)</title>
<link rel="icon" href="data:,">
<style>
{_asset("report.css")}
</style>
</head>
<body>
<header>
<h1>Rate–distortion: {e(codecs)}</h1>
<p class="muted">{len(ev.images)} image(s){f", generated {e(info.generated)}" if info.generated else ""}. bpp from the
complete files' bytes; PSNR on RGB; MS-SSIM on RGB (in dB: −10·log10(1 − MS-SSIM)).</p>
{command}
{('<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>") if notes else ""}
</header>
<main>
<h2 id="curves">Curves</h2>
<p class="muted">Hover over (or focus) a point for its values.</p>
<div class="charts"><figure class="chart">{psnr_svg}</figure>{ms_block}</div>
{_legend(ev)}
<h2 id="bd">BD-rate</h2>
{bd_table(ev)}
<details open><summary>Every setting</summary>{results_table(ev)}</details>
<h2 id="images">Images</h2>
<p class="muted">Left: {e(", ".join(dict.fromkeys(codec_of(k) for v in views for k in v.subjects)) or "–")} at each
of its settings; right: another codec at the setting whose file is nearest in size on that image. Drag the slider
(or use the arrow keys on it) to move the split; in 1:1 and 2:1 the view follows the mouse. Pictures are stored
losslessly (PNG), as each codec decoded them.</p>
<nav class="toc">{toc}</nav>
{"".join(_viewer(v) for v in views)}
</main>
<script type="application/json" id="report-data">{payload}</script>
<script>
{_asset("report.js")}
</script>
</body>
</html>
"""
