"""`adapdate info FILE...`: what an .adpd file holds, from its header, without torch.

The whole file is verified (structure and checksum), so a damaged file is one error line and exit 1; the
model it names is looked up in the store's JSON (installed or not, and how to get it).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from adapdate_codec.cli.report import error_line
from adapdate_codec.cli.planning import ENCODED_SUFFIXES, display, find_inputs, is_single
from adapdate_codec.errors import AdapdateError
from adapdate_codec.fileio import STDIO, read_input
from adapdate_codec.results import one_line


def _describe(path: str, store: Any) -> dict[str, Any]:
    from adapdate_codec.api import model_status, read_file_info

    _, fi = read_file_info(read_input(path))
    status = model_status(fi, store)
    return {"file": path, **asdict(fi), "model_installed": status.installed, "model_version": status.version,
            "model_active": status.active, "model_hint": status.hint, "model_encoders": list(status.encoders),
            "error": None}


def _status_text(row: dict[str, Any]) -> str:
    if not row["model_installed"]:
        return f"not installed: {row['model_hint']}"
    if row["fingerprint_kind"] == "decoder":  # any version with this decoder reads it
        return f"installed (encoders of this decoder: {', '.join(row['model_encoders'])})"
    version = "built-in" if row["model_version"] == 0 else f"version {row['model_version']}"
    return f"installed ({version}{', active' if row['model_active'] else ''})"


def info_lines(row: dict[str, Any]) -> list[str]:
    name = display(row["file"], "<stdin>")
    sections = ", ".join(f"{k} {v:,}" for k, v in row["sections"].items())
    icc = f"{row['icc_profile_bytes']:,} bytes" if row["icc_profile"] else "none"
    return [
        f"{name}: {row['width']}x{row['height']} {row['mode']}, {row['bytes']:,} bytes, {row['bpp']:.3f} bpp",
        f"  format       adapdate .adpd version {row['format_version']}",
        f"  model        {row['model']} q{row['quality']}: {_status_text(row)}",
        # format 2 names the decoder it needs; format 1 (0.1.0) the whole model version that wrote it
        f"  {'decoder' if row['fingerprint_kind'] == 'decoder' else 'fingerprint':<11}  {row['fingerprint']}",
        f"  ICC profile  {icc}",
        f"  padding      {row['padding']}",
        f"  sections     {sections} (bytes)",
    ]


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="FILE...")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout (one object, or a list for several).")
@click.option("-r", "--recursive", is_flag=True, help="Folder inputs: also the .adpd files in their subfolders.")
def info(inputs: tuple[str, ...], as_json: bool, recursive: bool) -> None:
    """Describe .adpd files from their headers (model, size, bpp, sections), without decoding them.

    A FILE may be a folder: its .adpd files are described. Exit status 1 if any file is damaged."""
    from adapdate_codec.store import ModelStore

    if inputs.count(STDIO) > 1:
        raise click.UsageError("'-' (stdin) can be given only once")
    sources = find_inputs(inputs, ENCODED_SUFFIXES, recursive)
    store = ModelStore()
    rows = []
    for n, src in enumerate(sources):
        try:
            row = _describe(src.path, store)
        except AdapdateError as e:
            click.echo(error_line(display(src.path, "<stdin>"), one_line(e)), err=True)
            row = {"file": src.path, "error": one_line(e)}
        rows.append(row)
        if not as_json and row["error"] is None:
            if n:
                click.echo("")
            click.echo("\n".join(info_lines(row)))
    if as_json:
        single = is_single(inputs, [src.path for src in sources])
        click.echo(json.dumps(rows[0] if single else rows, indent=2))
    if any(row["error"] is not None for row in rows):
        raise SystemExit(1)
