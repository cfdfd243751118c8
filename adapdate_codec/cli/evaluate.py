"""`adapdate eval`: rate–distortion of adapdate and conventional codecs, BD-rate, JSON/CSV/plot/HTML.

Parses and prints only; the work is in adapdate_codec.evaluate. The harness (and with it numpy, scipy,
matplotlib, torch) is imported inside the command so that `adapdate --help` stays fast.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import sys
from pathlib import Path

import click

from adapdate_codec.errors import InputError

# Kept in step with adapdate_codec.baselines.CODEC_NAMES (tests check); not imported, to keep numpy out
# of CLI start-up.
CODECS = ("adapdate", "bpg", "hevc444", "jpeg", "jpeg444", "webp", "avif", "jpegxl")


def _parse_reference(value: str):
    from adapdate_codec.bdrate import load_reference

    name, sep, path = value.partition("=")
    if not sep:
        return load_reference(value)
    if not name or not path:
        raise InputError(f"--reference {value!r}: expected NAME=PATH")
    return load_reference(path, name)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:+.1f}%"


def _db(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.2f}dB"


def _print_table(ev) -> None:
    """One row per codec; per anchor/reference one column holding "BD-rate / BD-PSNR"."""
    from rich.console import Console
    from rich.table import Table

    targets = list(dict.fromkeys([*([ev.anchor] if ev.anchor else []), *(e.against for e in ev.bd)]))
    table = Table(title="PSNR-RGB; cells: BD-rate / BD-PSNR (negative rate = fewer bits)")
    table.add_column("codec", no_wrap=True)
    table.add_column("pts", justify="right", no_wrap=True)
    table.add_column("bpp", justify="right", no_wrap=True)
    table.add_column("PSNR dB", justify="right", no_wrap=True)
    for t in targets:
        table.add_column(f"vs {t}" + (" (anchor)" if t == ev.anchor else ""), justify="right", no_wrap=True)
    by_pair = {(e.codec, e.against): e for e in ev.bd}
    for r in ev.results:
        bpp = f"{min(r.bpp):.2f}–{max(r.bpp):.2f}" if r.bpp else "-"
        finite = [p for p in r.psnr if math.isfinite(p)]
        psnr = f"{min(finite):.1f}–{max(finite):.1f}" if finite else "-"
        cells = []
        for t in targets:
            e = by_pair.get((r.name, t))
            cells.append("-" if e is None else f"{_pct(e.bd_rate)} / {_db(e.bd_psnr)}")
        table.add_row(r.name, str(len(r.bpp)), bpp, psnr, *cells)
    Console().print(table)


@click.command("eval")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--codec", "-c", "codecs", multiple=True, type=click.Choice(CODECS),
              help="Codec to evaluate (repeatable; default: all, unavailable ones skipped with a note).")
@click.option("--quality", "-q", multiple=True, metavar="[CODEC=]V,V,...",
              help="Settings to sweep instead of the defaults: for every codec, or CODEC=... for one "
                   "(quality; QP for bpg/hevc444; distance for jpegxl; installed quality for adapdate).")
@click.option("--model", "-m", default=None, help="adapdate model to evaluate (default: the store's default).")
@click.option("--device", default="cpu", show_default=True, help="Device for the adapdate codec.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write results as JSON here.")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), help="Write per-image rows as CSV here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), help="Write a PSNR–bpp plot (PNG) here.")
@click.option("--plot-max-bpp", type=click.FloatRange(min=0, min_open=True), help="Plot only rates up to this bpp.")
@click.option("--html", "html_out", type=click.Path(file_okay=False),
              help="Write a comparison page here: a folder with index.html (curves, tables, and each image "
                   "next to the other codecs at the nearest file size) and its images.")
@click.option("--html-max-mb", default=100.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Size limit of the --html folder: images past it get no viewer (the page says which).")
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(min=1),
              help="Images evaluated in parallel processes.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N images.")
@click.option("--reference", "references", multiple=True, metavar="[NAME=]PATH",
              help="Published curve (CompressAI-style JSON) to compare against and plot dashed (repeatable).")
@click.option("--anchor", help="Codec or reference for BD figures (default: bpg, else hevc444).")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
def eval_command(paths, codecs, quality, model, device, json_out, csv_out, plot_out, plot_max_bpp, html_out,
                 html_max_mb, jobs, limit, references, anchor, force) -> None:
    """Rate–distortion of PATHS (images or folders) for adapdate and conventional codecs.

    Prints BD-rate / BD-PSNR of every codec against the anchor and each reference.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from adapdate_codec import evaluate as ev_mod
    from adapdate_codec.baselines import CodecOptions
    from adapdate_codec.fileio import atomic_write, check_writable

    outputs = [p for p in (json_out, csv_out, plot_out) if p]
    for p in outputs:
        check_writable(p, force)  # fail before minutes of work, not after
    if html_out:
        from adapdate_codec import report as report_mod

        report_mod.check_output(html_out, force)
    refs = [_parse_reference(r) for r in references]
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise InputError("two --reference curves share a name; give them names with NAME=PATH")

    images = ev_mod.find_images(paths, limit)
    plan = ev_mod.plan_codecs(codecs or CODECS, quality, CodecOptions(model=model, device=device))
    err = Console(stderr=True)
    for note in plan.notes:
        err.print(f"note: {note}", highlight=False)
    if not plan.specs:
        raise InputError("none of the requested codecs is available here")

    total = len(images) * sum(len(s.settings) for s in plan.specs)
    with _html_stage(html_out, force) as stage:
        builder = None
        if stage is not None:
            builder = report_mod.ReportBuilder(stage, images, [s.name for s in plan.specs],
                                               {c.name: c.setting_name for c in plan.codecs}, max_mb=html_max_mb)
        with Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err) as bar:
            task = bar.add_task("eval", total=total)
            rows, notes = ev_mod.run(images, plan.specs, jobs, lambda n: bar.advance(task, n),
                                     keep=builder.keep if builder else None,
                                     on_decoded=builder.add if builder else None)
        ev = ev_mod.finish(images, plan, rows, notes, refs, anchor)

        for note in ev.notes[len(plan.notes):]:
            err.print(f"note: {note}", highlight=False)
        for e in ev.bd:
            if e.error:
                err.print(f"note: BD {e.codec} vs {e.against}: {e.error}", highlight=False)
        _print_table(ev)

        if json_out:
            atomic_write(Path(json_out), ev_mod.to_json(ev))
        if csv_out:
            atomic_write(Path(csv_out), ev_mod.to_csv(ev.rows))
        if plot_out:
            title = f"{len(images)} image(s)" + (f", anchor {ev.anchor}" if ev.anchor else "")
            atomic_write(Path(plot_out), ev_mod.plot_rd(ev.results, ev.references, title, plot_max_bpp))
        if builder is not None:
            builder.write(ev, _command_line())
            if builder.omitted:
                err.print(f"note: --html: {len(builder.omitted)} image(s) without a viewer (over --html-max-mb "
                          f"{html_max_mb:g})", highlight=False)
    if html_out:
        err.print(f"report: {Path(html_out) / 'index.html'}", highlight=False)


def _html_stage(html_out: str | None, force: bool):
    """The staging folder that becomes --html's folder once everything is written (nothing without --html)."""
    if not html_out:
        return contextlib.nullcontext(None)
    from adapdate_codec.fileio import staged_folder

    return staged_folder(html_out, force)


def _command_line() -> str | None:
    """This command as typed, for the page (None when not run as `adapdate`, e.g. from a test)."""
    if Path(sys.argv[0]).name not in ("adapdate", "__main__.py"):
        return None
    return shlex.join(["adapdate", *sys.argv[1:]])
