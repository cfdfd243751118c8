"""`adapdate model ...`: list, inspect, install, patch and roll back models. Parsing and printing only."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click

if TYPE_CHECKING:
    from adapdate_codec.store import ModelEntry


@click.group()
def model() -> None:
    """List, inspect, install, patch (updates) and roll back models."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(as_json: bool) -> None:
    """List every installed model version (* marks the active one), with its decoder and encoder.

    Versions of one name and quality that share a decoder are that decoder's encoders: files written by any
    of them name the decoder, and decode with any of them."""
    from adapdate_codec.store import DEFAULT_NAME, DEFAULT_QUALITY, ModelStore

    entries = ModelStore().list()
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"no models installed; run `adapdate model install {DEFAULT_NAME}:{DEFAULT_QUALITY}`")
        return
    rows = [("", "name", "quality", "version", "fingerprint", "decoder", "encoder", "source")]
    rows += [("*" if e.active else "", e.name, f"q{e.quality}", _version(e), e.fingerprint[:8],
              _fp(e.decoder_fingerprint, 8), _fp(e.encoder_fingerprint, 8), e.source) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:  # plain columns: the fingerprints must never be cut to fit a narrow terminal
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


@model.command()
@click.argument("name", required=False)
@click.option("--quality", "-q", type=int, help="Quality (default 3).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(name: str | None, quality: int | None, as_json: bool) -> None:
    """Describe the active version of a model: architecture, λ, size, fingerprint, card, history.

    NAME may also be an update file (.nnc): its manifest is shown and nothing is applied.
    """
    from adapdate_codec.store import ModelStore
    from adapdate_codec.update import is_update_file

    if name is not None and is_update_file(name):  # by content: a file may share a model's name
        _update_info(name, as_json)
        return
    d = ModelStore().info(name, quality)
    if as_json:
        click.echo(json.dumps(d, indent=2, default=str))
        return
    for line in info_lines(d):
        click.echo(line)


def info_lines(d: dict[str, Any]) -> list[str]:
    card = d["card"]
    lines = [
        f"{d['name']} q{d['quality']}  ({'built-in' if d['builtin'] else 'version ' + str(d['version'])})",
        f"  architecture  {d['arch']}  N={d['N']} M={d['M']}",
        f"  λ             {d['lmbda']}",
        f"  parameters    {_count(d['parameters'])}",
        f"  size on disk  {_size(d['size_bytes'])}",
        f"  fingerprint   {d['fingerprint']}",
        f"  decoder       {d.get('decoder_fingerprint') or '? (ask `adapdate model list` after a patch)'}",
        f"  encoder       {d.get('encoder_fingerprint') or '?'}",
        f"  encoders      {_encoders(d.get('encoders') or [])}",
        f"  source        {d['source']}",
        f"  file          {d['path']}",
        f"  adapters      {_adapters(d['adapters'])}",
    ]
    if card.get("trained") is not None:
        lines.append(f"  trained       {_plain(card['trained'])}")
    if isinstance(card.get("update"), dict):
        lines.append(f"  update        of {str(card.get('parent_fingerprint'))[:16]}: {_update_brief(card['update'])}")
    shown = {"name", "quality", "arch", "N", "M", "lmbda", "lambda", "parameters", "adapters", "fingerprint",
             "source", "trained", "update", "parent_fingerprint", "decoder_fingerprint", "encoder_fingerprint"}
    lines += [f"  {k:<13} {_plain(v)}" for k, v in card.items() if k not in shown]
    lines.append("  history:")
    for h in d["history"]:
        mark = "*" if h["active"] else " "
        when = h["installed_at"] or ""
        update = f"  update: {_update_brief(h['update'])}" if isinstance(h.get("update"), dict) else ""
        label = "built-in" if h["builtin"] else f"v{h['version']}"
        parts = f"decoder {_fp(h.get('decoder_fingerprint'))} encoder {_fp(h.get('encoder_fingerprint'))}"
        lines.append(f"   {mark} {label:<9} {h['fingerprint'][:16]}  {parts}  {when}  {h['source']}{update}")
    return lines


def _fp(fp: str | None, n: int = 12) -> str:
    return fp[:n] if fp else "?"


def _encoders(encoders: list[dict[str, Any]]) -> str:
    """The versions that share the active decoder: its encoders."""
    if not encoders:
        return "?"
    return ", ".join(("built-in" if e["builtin"] else f"v{e['version']}") + f" {_fp(e.get('encoder_fingerprint'))}"
                     + (" (active)" if e["active"] else "") for e in encoders)


@model.command()
@click.argument("source")
@click.option("--quality", "-q", type=int, help="Quality, when the file name does not say.")
@click.option("--name", help="Install under this name (default: the architecture's).")
def install(source: str, quality: int | None, name: str | None) -> None:
    """Install a model from a CompressAI name (cheng2020-anchor:3), an http(s) URL or a local file.

    Local files may be CompressAI checkpoints (.pth.tar), adapdate models (.pt) or training checkpoints.
    """
    from adapdate_codec.store import ModelStore

    with download_progress() as progress:
        entry = ModelStore().install(source, quality=quality, name=name, progress=progress)
    click.echo(f"installed {entry.name} q{entry.quality} {_version(entry)} ({entry.fingerprint[:16]}), now active")


@model.command()
@click.argument("name", required=False)
@click.option("--quality", "-q", type=int, help="Quality (default 3).")
@click.option("--encoder", "part", flag_value="encoder",
              help="The previous encoder of the active decoder (the decoder stays).")
@click.option("--decoder", "part", flag_value="decoder", help="The latest version with the previous decoder.")
def rollback(name: str | None, quality: int | None, part: str | None) -> None:
    """Make the previous version active again (files coded with any version still decode).

    With --encoder, the previous encoder of the same decoder; with --decoder, the previous decoder."""
    from adapdate_codec.store import ModelStore

    entry = ModelStore().rollback(name, quality, part or "version")
    click.echo(f"{entry.name} q{entry.quality}: {_version(entry)} ({entry.fingerprint[:16]}; decoder "
               f"{_fp(entry.decoder_fingerprint)}, encoder {_fp(entry.encoder_fingerprint)}) is now active")


@model.command("export-update")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Update file to write (- for stdout).")
@click.option("--qp", type=int, default=-38, show_default=True,
              help="NNCodec quantization parameter: lower is finer and larger (e.g. -50, -60).")
@click.option("-f", "--force", is_flag=True, help="Overwrite the output.")
@click.option("--encoder", is_flag=True,
              help="An encoder update of any checkpoint: its g_a and h_a only (its decoder side is not shipped). "
                   "`train encoder` checkpoints are encoder updates without it.")
@click.option("--model", "name", help="Encoder updates: the installed model to code against, when the checkpoint "
                                      "does not name one (its active version).")
@click.option("--quality", "-q", type=int, help="Encoder updates: that model's quality.")
def export_update(checkpoint: str, output: str, qp: int, force: bool, encoder: bool, name: str | None,
                  quality: int | None) -> None:
    """Code a training checkpoint as a small update (.nnc) of its installed base model.

    Adapters (`train adapters`) make a model update; an encoder (`train encoder`, or --encoder) makes an
    encoder update, which leaves the decoder as it is: files written after it decode everywhere."""
    from adapdate_codec.fileio import check_writable, write_output
    from adapdate_codec.store import ModelStore
    from adapdate_codec.update import export_update as export

    check_writable(output, force)  # before the work, not after it
    store = ModelStore()
    base = store.get(name, quality) if (name or quality) else None
    u = export(checkpoint, store, qp=qp, encoder=encoder, base=base)
    data = u.to_bytes()
    write_output(output, data, force)
    m = u.manifest
    if m.scope == "encoder":
        what = ("encoder difference" if m.delta else "encoder adapters") + f", decoder {m.base_decoder_fingerprint[:16]} unchanged"
        ignored = m.training.get("decoder_side_not_shipped")
        if ignored:
            what += (f"; the checkpoint's decoder side ({ignored['tensors']} tensors differ from the base's, at most "
                     f"{ignored['max_abs_difference']:.2g}) is not shipped")
    else:
        adapters = sum(t.name.endswith(".adapter.0.weight") for t in m.tensors)
        what = f"{adapters} adapters" + (", with a retrained entropy bottleneck" if m.bottleneck_changed else "")
    click.echo(f"wrote {output}: {len(data):,} bytes ({_size(len(data))}); {len(m.tensors)} tensors, "
               f"{_count(m.parameters)} parameters, qp {m.qp}; {what}; "
               f"{m.base_name} q{m.base_quality} {m.base_fingerprint[:16]} → {m.patched_fingerprint[:16]}",
               err=output == "-")


@model.command()
@click.argument("update_file", type=click.Path(dir_okay=False))
@click.option("--model", "name", help="Patch this installed model (default: the one the update names).")
def patch(update_file: str, name: str | None) -> None:
    """Apply an update (.nnc) to the active base model; it becomes a new, active version.

    Files coded before the patch still decode; `adapdate model rollback` returns to the base.
    """
    from pathlib import Path

    from adapdate_codec.fileio import read_input
    from adapdate_codec.store import ModelStore
    from adapdate_codec.update import apply_update

    source = update_file if update_file == "-" else str(Path(update_file).resolve())
    r = apply_update(read_input(update_file), ModelStore(), name=name, source=source)
    label = f"{r.new.name} q{r.new.quality}"
    if r.already_applied:
        click.echo(f"{label}: this update is already applied ({_version(r.new)}, {r.new.fingerprint[:16]}); "
                   "nothing to do")
        return
    kind = "now active"
    if r.manifest.scope == "encoder":
        kind = (f"a new encoder of decoder {_fp(r.new.decoder_fingerprint)}, now active (its files decode on every "
                "installation of that decoder)")
    click.echo(f"patched {label}: {r.old.fingerprint[:16]} ({_version(r.old)}) → {r.new.fingerprint[:16]} "
               f"({_version(r.new)}), {kind}")


def _update_info(path: str, as_json: bool) -> None:
    import hashlib

    from adapdate_codec.fileio import read_input
    from adapdate_codec.update import read_manifest

    data = read_input(path)
    m = read_manifest(data)
    d = {**m.to_dict(), "path": path, "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
         "parameters": m.parameters}
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    if m.scope == "encoder":
        scope = [f"  scope         encoder only: decoder {m.base_decoder_fingerprint[:16]} unchanged (files written "
                 "after it decode on every installation of that decoder)",
                 f"  encoder       {'difference to the base' if m.delta else 'new adapters in g_a'}; patched encoder "
                 f"{m.patched_encoder_fingerprint[:16]}"]
    else:
        scope = [f"  scope         model (a new decoder: adapters in g_a and g_s)",
                 f"  bottleneck    {'retrained (tables included)' if m.bottleneck_changed else 'unchanged (base tables)'}"]
    lines = [
        f"update for {m.base_name} q{m.base_quality}  (base {m.base_fingerprint[:16]})",
        *scope,
        f"  adapters      {_adapters(m.adapters)}",
        f"  tensors       {len(m.tensors)} ({_count(m.parameters)} parameters)",
        f"  qp            {m.qp}",
        f"  size          {len(data):,} bytes ({_size(len(data))}; NNCodec payload {m.payload_bytes:,} bytes)",
        f"  patched       {m.patched_fingerprint}",
        f"  created       {m.created_at} by adapdate {m.adapdate_version}",
    ]
    if m.training:
        lines.append(f"  trained       {_plain(m.training)}")
    for line in lines:
        click.echo(line)


@contextlib.contextmanager
def download_progress() -> Iterator[Callable[[int, int | None], None]]:
    """A rich progress bar on stderr that appears with the first downloaded bytes."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress("downloading", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    task: list[Any] = []

    def update(done: int, total: int | None) -> None:
        if not task:
            bar.start()
            task.append(bar.add_task("download", total=total))
        bar.update(task[0], completed=done)

    try:
        yield update
    finally:
        if task:
            bar.stop()


def _update_brief(u: dict[str, Any]) -> str:
    """One line about an applied update (the store's history keeps the full record; see --json)."""
    parts = [f"qp {u.get('qp')}", f"{u.get('tensors')} tensors", _size(u.get("size_bytes"))]
    if u.get("bottleneck_changed"):
        parts.append("new entropy bottleneck")
    if u.get("sha256"):
        parts.append(f"sha256 {str(u['sha256'])[:12]}")
    return ", ".join(parts)


def _version(e: ModelEntry) -> str:
    return "built-in" if e.builtin else f"v{e.version}"


def _adapters(a: dict | None) -> str:
    return "none" if not a else ", ".join(f"{k}={v}" for k, v in a.items())


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _size(n: int | None) -> str:
    if n is None:
        return "missing"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _plain(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, (dict, list)) else str(v)
