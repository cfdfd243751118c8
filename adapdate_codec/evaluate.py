"""The rate–distortion harness behind `adapdate eval`.

Per image, codec and setting: encode, decode, and measure bpp (from the complete file's bytes), RGB PSNR,
MS-SSIM (also in dB), encoding and decoding seconds, and peak memory. Rows are averaged per setting into
CompressAI-style curves, compared by Bjøntegaard deltas against an anchor codec and published curves, and
rendered as JSON, CSV and a PNG plot (returned as bytes; the CLI writes them through fileio).

Peak memory is the process's peak resident set size during the call above its resident size just before
it: on Linux the kernel's high-water mark (VmHWM) is reset through /proc/self/clear_refs before each call,
so every call gets its own peak and native allocations (x265, libaom, torch) count; elsewhere it falls
back to the growth of getrusage's ru_maxrss, which is 0 unless the call sets a new process-wide peak.
"""

from __future__ import annotations

import csv
import io
import json
import math
import resource
import sys
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from adapdate_codec import metrics
from adapdate_codec.baselines import Codec, CodecError, CodecOptions, Setting, make_codec
from adapdate_codec.bdrate import CurveError, RDCurve, bd_psnr, bd_rate
from adapdate_codec.errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp"})
DEFAULT_ANCHORS = ("bpg", "hevc444")
MEMORY_METHOD = (
    "peak RSS above the pre-call RSS (Linux: VmHWM reset via /proc/self/clear_refs; "
    "elsewhere: ru_maxrss growth)"
)

T = TypeVar("T")


# --- inputs ------------------------------------------------------------------------------------------


def find_images(paths: Iterable[str | Path], limit: int | None = None) -> list[Path]:
    """Image files named directly, plus those inside named folders (recursively, sorted)."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            found.append(p)
        else:
            raise InputError(f"{p}: no such file or directory")
    if not found:
        raise InputError("no images found in " + ", ".join(str(p) for p in paths))
    return found[:limit] if limit is not None else found


def load_rgb(path: Path) -> np.ndarray:
    """8-bit RGB pixels of an image file (EXIF orientation applied, alpha dropped)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(ImageOps.exif_transpose(im).convert("RGB"))  # writable: torch warns on read-only
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: not a readable image ({e})") from None


# --- measurement -------------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def _maxrss_kib() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r  # bytes on macOS, KiB on Linux


def measure(fn: Callable[[], T]) -> tuple[T, float, float]:
    """Run fn(); return its result, wall seconds and peak memory in MiB (see MEMORY_METHOD)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before, use_hwm = _status_kib("VmRSS"), True
    except OSError:
        before, use_hwm = _maxrss_kib(), False
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    after = _status_kib("VmHWM") if use_hwm else _maxrss_kib()
    return value, seconds, max(0, after - before) / 1024.0


# --- one image ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecSpec:
    """A codec to evaluate and its settings (picklable, so worker processes can rebuild the codec)."""

    name: str
    settings: tuple[Setting, ...]
    options: CodecOptions = CodecOptions()


@dataclass
class Row:
    """One image coded by one codec at one setting."""

    image: str
    codec: str
    setting: float
    width: int
    height: int
    bytes: int
    bpp: float
    psnr: float
    ms_ssim: float
    ms_ssim_db: float
    encoding_time: float
    decoding_time: float
    encoding_mem_mib: float
    decoding_mem_mib: float


@dataclass(frozen=True)
class Window:
    """The part of each decoded image that `run` hands back (for `eval --html`): at most max_width x
    max_height pixels, centred. Kept small so that worker processes return crops, not whole photos."""

    max_width: int
    max_height: int

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, top, width, height) of the window inside a height x width image."""
        w, h = min(width, self.max_width), min(height, self.max_height)
        return (width - w) // 2, (height - h) // 2, w, h

    def crop(self, pixels: np.ndarray) -> np.ndarray:
        left, top, w, h = self.box(*pixels.shape[:2])
        return np.ascontiguousarray(pixels[top:top + h, left:left + w])


Decoded = tuple[Row, np.ndarray]  # a row and its decoded pixels (cropped to the Window)


def evaluate_image(rgb: np.ndarray, image: str, codec: Codec, setting: Setting) -> Row:
    return _evaluate(rgb, image, codec, setting)[0]


def _evaluate(rgb: np.ndarray, image: str, codec: Codec, setting: Setting) -> tuple[Row, np.ndarray]:
    codec.prepare(setting)
    data, enc_s, enc_mem = measure(lambda: codec.encode(rgb, setting))
    decoded, dec_s, dec_mem = measure(lambda: codec.decode(data))
    if decoded.shape != rgb.shape or decoded.dtype != np.uint8:
        raise CodecError(f"decoded {decoded.shape} {decoded.dtype}, expected {rgb.shape} uint8")
    height, width = rgb.shape[:2]
    ms = metrics.ms_ssim(rgb, decoded)
    row = Row(
        image=image, codec=codec.name, setting=float(setting), width=width, height=height,
        bytes=len(data), bpp=metrics.bits_per_pixel(len(data), height, width),
        psnr=metrics.psnr(rgb, decoded), ms_ssim=ms, ms_ssim_db=metrics.ms_ssim_db(ms),
        encoding_time=enc_s, decoding_time=dec_s, encoding_mem_mib=enc_mem, decoding_mem_mib=dec_mem,
    )
    return row, decoded


_CODEC_CACHE: dict[CodecSpec, Codec] = {}  # per process: a worker reuses loaded models across images


def _codec_for(spec: CodecSpec) -> Codec:
    if spec not in _CODEC_CACHE:
        _CODEC_CACHE[spec] = make_codec(spec.name, spec.options)
    return _CODEC_CACHE[spec]


@dataclass
class UnitResult:
    """One codec's settings on one image: rows, notes on failed settings, and (with a Window) the
    decoded crops of the rows."""

    rows: list[Row]
    notes: list[str]
    decoded: list[Decoded]


def run_unit(path: Path, spec: CodecSpec, on_row: Callable[[], None] | None = None,
             keep: Window | None = None) -> UnitResult:
    """All settings of one codec on one image; failures become notes, not errors."""
    rgb = load_rgb(path)
    codec = _codec_for(spec)
    out = UnitResult([], [], [])
    for setting in spec.settings:
        try:
            row, decoded = _evaluate(rgb, path.name, codec, setting)
        except CodecError as e:
            out.notes.append(f"{spec.name} {codec.setting_name}={_fmt_setting(setting)} failed on {path.name}: {e}")
        else:
            out.rows.append(row)
            if keep is not None:
                out.decoded.append((row, keep.crop(decoded)))
        if on_row:
            on_row()
    return out


def _one_thread_per_worker() -> None:
    """N worker processes each using every core would oversubscribe the CPU and skew the timings."""
    import os

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def run(images: Sequence[Path], specs: Sequence[CodecSpec], jobs: int = 1,
        advance: Callable[[int], None] | None = None, keep: Window | None = None,
        on_decoded: Callable[[Path, list[Decoded]], None] | None = None) -> tuple[list[Row], list[str]]:
    """Evaluate every spec on every image; `advance(n)` is called as n (image, setting) pairs finish.

    With `keep` and `on_decoded`, on_decoded(image path, [(row, crop), ...]) is called in this process as
    each (image, codec) unit finishes, in completion order, so that a caller can store what it needs and
    let the rest go (memory stays bounded by the units in flight).
    """
    rows: list[Row] = []
    notes: list[str] = []
    units = [(img, spec) for img in images for spec in specs]
    window = keep if on_decoded is not None else None

    def collect(img: Path, result: UnitResult) -> None:
        nonlocal rows, notes
        rows += result.rows
        notes += result.notes
        if on_decoded is not None:
            on_decoded(img, result.decoded)

    if jobs <= 1:
        for img, spec in units:
            collect(img, run_unit(img, spec, (lambda: advance(1)) if advance else None, window))
    else:
        import multiprocessing

        # spawn, not fork: forking a parent that may hold torch / libheif threads can deadlock
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_one_thread_per_worker) as pool:
            pending = {pool.submit(run_unit, img, spec, None, window): (img, spec) for img, spec in units}
            while pending:
                # wait(), not as_completed(): this drops each finished future, and with it its decoded
                # pictures, as soon as it is collected (as_completed holds every one until the end)
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    img, spec = pending.pop(fut)
                    collect(img, fut.result())
                    if advance:
                        advance(len(spec.settings))
    order = {spec.name: i for i, spec in enumerate(specs)}
    rows.sort(key=lambda r: (order[r.codec], r.image, r.setting))
    return rows, notes


# --- curves ------------------------------------------------------------------------------------------


def _nanmean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


@dataclass
class CodecResult:
    """Means over images per setting, sorted by bpp (CompressAI's `results`)."""

    name: str
    description: str
    setting_name: str
    settings: list[float] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    bpp: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    ms_ssim: list[float] = field(default_factory=list)
    ms_ssim_db: list[float] = field(default_factory=list)
    encoding_time: list[float] = field(default_factory=list)
    decoding_time: list[float] = field(default_factory=list)

    def curve(self) -> RDCurve:
        return RDCurve(self.name, tuple(self.bpp), tuple(self.psnr))

    def compressai(self) -> dict:
        """The object CompressAI's eval writes and its plot tools read; NaN/inf become null."""
        return {
            "name": self.name,
            "description": self.description,
            "results": {
                "bpp": _json_floats(self.bpp),
                "psnr-rgb": _json_floats(self.psnr),
                "ms-ssim-rgb": _json_floats(self.ms_ssim),
                "ms-ssim-db": _json_floats(self.ms_ssim_db),
                "encoding_time": _json_floats(self.encoding_time),
                "decoding_time": _json_floats(self.decoding_time),
            },
            "settings": {"name": self.setting_name, "values": self.settings, "images": self.images},
        }


def summarize(rows: Sequence[Row], codec: Codec) -> CodecResult:
    """Per-setting means of one codec's rows. PSNR is the mean of per-image PSNR (as CompressAI);
    MS-SSIM in dB is taken of the mean MS-SSIM, so it matches dB curves drawn from published JSON."""
    by_setting: dict[float, list[Row]] = defaultdict(list)
    for r in rows:
        if r.codec == codec.name:
            by_setting[r.setting].append(r)
    points = []
    for setting, group in by_setting.items():
        ms = _nanmean(r.ms_ssim for r in group)
        points.append((
            _nanmean(r.bpp for r in group), setting, len(group), _nanmean(r.psnr for r in group), ms,
            metrics.ms_ssim_db(ms), _nanmean(r.encoding_time for r in group),
            _nanmean(r.decoding_time for r in group),
        ))
    points.sort()
    result = CodecResult(codec.name, codec.description, codec.setting_name)
    for bpp, setting, n, psnr, ms, ms_db, enc, dec in points:
        result.settings.append(setting)
        result.images.append(n)
        result.bpp.append(bpp)
        result.psnr.append(psnr)
        result.ms_ssim.append(ms)
        result.ms_ssim_db.append(ms_db)
        result.encoding_time.append(enc)
        result.decoding_time.append(dec)
    return result


# --- Bjøntegaard deltas ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BDEntry:
    """BD-rate (fraction) and BD-PSNR (dB) of `codec` against `against`, or why they are undefined."""

    codec: str
    against: str
    bd_rate: float | None
    bd_psnr: float | None
    error: str | None = None


def choose_anchor(evaluated: Sequence[str], references: Sequence[str], requested: str | None) -> str | None:
    """The anchor: `requested` (an evaluated codec or a reference), else BPG, else HEVC-444, else none."""
    if requested is not None:
        if requested not in evaluated and requested not in references:
            known = ", ".join([*evaluated, *references]) or "none"
            raise InputError(f"anchor {requested!r} is neither an evaluated codec nor a reference (have: {known})")
        return requested
    return next((name for name in DEFAULT_ANCHORS if name in evaluated), None)


def bd_entries(results: Sequence[CodecResult], references: Sequence[RDCurve], anchor: str | None) -> list[BDEntry]:
    """Every codec against the anchor (unless it is the anchor) and against every reference."""
    curves = {r.name: r.curve() for r in results}
    targets = {ref.name: ref for ref in references}
    if anchor is not None:
        targets = {anchor: curves.get(anchor) or targets[anchor], **targets}
    entries = []
    for name, test in curves.items():
        for against, base in targets.items():
            if against == name:
                continue
            try:
                entries.append(BDEntry(name, against, bd_rate(base, test), bd_psnr(base, test)))
            except CurveError as e:
                entries.append(BDEntry(name, against, None, None, str(e)))
    return entries


# --- outputs -----------------------------------------------------------------------------------------


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None  # strict JSON has no NaN / Infinity


def _json_floats(values: Iterable[float]) -> list[float | None]:
    return [_json_float(v) for v in values]


def _fmt_setting(setting: float) -> str:
    return str(int(setting)) if float(setting).is_integer() else f"{setting:g}"


@dataclass
class Evaluation:
    images: list[str]
    results: list[CodecResult]
    rows: list[Row]
    references: list[RDCurve]
    anchor: str | None
    bd: list[BDEntry]
    notes: list[str]


def to_json(ev: Evaluation) -> bytes:
    """`codecs` holds one CompressAI-style object per codec; per-image rows and BD figures sit beside it."""
    doc = {
        "codecs": [r.compressai() for r in ev.results],
        "images": [{k: (_json_float(v) if isinstance(v, float) else v) for k, v in asdict(r).items()}
                   for r in ev.rows],
        "bd": {
            "anchor": ev.anchor,
            "metric": "psnr-rgb",
            "method": "Bjontegaard, PCHIP over the overlapping interval; bd_rate is a fraction",
            "entries": [{k: (_json_float(v) if isinstance(v, float) else v) for k, v in asdict(e).items()}
                        for e in ev.bd],
        },
        "references": [{"name": c.name, "bpp": list(c.bpp), "psnr-rgb": _json_floats(c.psnr)} for c in ev.references],
        "memory": MEMORY_METHOD,
        "notes": ev.notes,
    }
    return (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode()


def to_csv(rows: Sequence[Row]) -> bytes:
    buf = io.StringIO()
    names = list(Row.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()})
    return buf.getvalue().encode()


def plot_rd(results: Sequence[CodecResult], references: Sequence[RDCurve], title: str = "",
            max_bpp: float | None = None) -> bytes:
    """PSNR vs bpp as PNG: a solid line per evaluated codec, published references dashed.
    max_bpp: show only 0..max_bpp (PSNR axis fitted to what is visible), e.g. to see low-rate curves."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    try:
        for r in results:
            ax.plot(r.bpp, r.psnr, "o-", markersize=3, label=r.name)
        for ref in references:
            ax.plot(ref.bpp, ref.psnr, "--", label=f"{ref.name} (published)")
        if max_bpp:
            seen = [p for c in (*results, *references) for b, p in zip(c.bpp, c.psnr) if b <= max_bpp and math.isfinite(p)]
            ax.set_xlim(0, max_bpp)
            if seen:
                ax.set_ylim(min(seen) - 0.5, max(seen) + 0.5)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel("PSNR-RGB [dB]")
        ax.set_title(title or "Rate–distortion")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close(fig)


# --- orchestration -----------------------------------------------------------------------------------


def parse_settings(values: Sequence[str]) -> tuple[tuple[Setting, ...] | None, dict[str, tuple[Setting, ...]]]:
    """`--quality` values: "10,20" applies to every codec, "jpeg=10,20" to one (repeatable)."""
    common: list[Setting] = []
    per_codec: dict[str, list[Setting]] = defaultdict(list)
    for value in values:
        name, sep, numbers = value.rpartition("=")
        target = per_codec[name.strip()] if sep else common
        for item in numbers.split(","):
            try:
                number = float(item)
            except ValueError:
                raise InputError(f"--quality {value!r}: {item.strip()!r} is not a number") from None
            target.append(int(number) if number.is_integer() else number)
    return (tuple(common) or None), {k: tuple(v) for k, v in per_codec.items()}


@dataclass
class Plan:
    specs: list[CodecSpec]
    codecs: list[Codec]
    notes: list[str]


def plan_codecs(names: Sequence[str], quality: Sequence[str] = (), options: CodecOptions = CodecOptions()) -> Plan:
    """Build the requested codecs; unavailable ones are skipped with a note."""
    common, per_codec = parse_settings(quality)
    unknown = set(per_codec) - set(names)
    if unknown:
        raise InputError(f"--quality names codecs that are not evaluated: {', '.join(sorted(unknown))}")
    plan = Plan([], [], [])
    for name in dict.fromkeys(names):  # keep order, drop repeats
        codec = make_codec(name, options)
        status = codec.available()
        if not status:
            plan.notes.append(f"{name} skipped: {status.reason}")
            continue
        settings = per_codec.get(name) or common or codec.default_sweep()
        plan.specs.append(CodecSpec(name, tuple(settings), options))
        plan.codecs.append(codec)
    return plan


def finish(images: Sequence[Path], plan: Plan, rows: list[Row], notes: list[str],
           references: Sequence[RDCurve] = (), anchor: str | None = None) -> Evaluation:
    """Curves, anchor and BD figures from the rows of `run`."""
    notes = [*plan.notes, *notes]
    small = sorted({r.image for r in rows if not metrics.ms_ssim_defined((r.height, r.width))})
    if small:
        notes.append(f"MS-SSIM is undefined below {metrics.MS_SSIM_MIN_SIDE} px on a side; reported as null "
                     f"for {len(small)} image(s): {', '.join(small[:5])}{' ...' if len(small) > 5 else ''}")
    results = [summarize(rows, c) for c in plan.codecs]
    chosen = choose_anchor([r.name for r in results], [c.name for c in references], anchor)
    if chosen is None:
        notes.append("no anchor: neither bpg nor hevc444 was evaluated (use --anchor); BD vs references only")
    return Evaluation([p.name for p in images], results, rows, list(references), chosen,
                      bd_entries(results, references, chosen), notes)
