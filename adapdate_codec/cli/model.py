"""`adapdate model ...`: list, inspect, install and roll back models. Parsing and printing only."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click

if TYPE_CHECKING:
    from adapdate_codec.store import ModelEntry


@click.group()
def model() -> None:
    """List, inspect, install and roll back models."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(as_json: bool) -> None:
    """List every installed model version (* marks the active one)."""
    from adapdate_codec.store import DEFAULT_NAME, DEFAULT_QUALITY, ModelStore

    entries = ModelStore().list()
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"no models installed; run `adapdate model install {DEFAULT_NAME}:{DEFAULT_QUALITY}`")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("", "name", "quality", "version", "fingerprint", "source"):
        table.add_column(col)
    for e in entries:
        table.add_row("*" if e.active else "", e.name, f"q{e.quality}", _version(e), e.fingerprint[:16], e.source)
    Console().print(table)


@model.command()
@click.argument("name", required=False)
@click.option("--quality", "-q", type=int, help="Quality (default 3).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(name: str | None, quality: int | None, as_json: bool) -> None:
    """Describe the active version of a model: architecture, λ, size, fingerprint, card, history."""
    from adapdate_codec.store import ModelStore

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
        f"  source        {d['source']}",
        f"  file          {d['path']}",
        f"  adapters      {_adapters(d['adapters'])}",
    ]
    if card.get("trained") is not None:
        lines.append(f"  trained       {_plain(card['trained'])}")
    shown = {"name", "quality", "arch", "N", "M", "lmbda", "lambda", "parameters", "adapters", "fingerprint",
             "source", "trained"}
    lines += [f"  {k:<13} {_plain(v)}" for k, v in card.items() if k not in shown]
    lines.append("  history:")
    for h in d["history"]:
        mark = "*" if h["active"] else " "
        when = h["installed_at"] or ""
        update = f"  update {_plain(h['update'])}" if h.get("update") else ""
        label = "built-in" if h["builtin"] else f"v{h['version']}"
        lines.append(f"   {mark} {label:<9} {h['fingerprint'][:16]}  {when}  {h['source']}{update}")
    return lines


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
def rollback(name: str | None, quality: int | None) -> None:
    """Make the previous version active again (files coded with any version still decode)."""
    from adapdate_codec.store import ModelStore

    entry = ModelStore().rollback(name, quality)
    click.echo(f"{entry.name} q{entry.quality}: {_version(entry)} ({entry.fingerprint[:16]}) is now active")


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
