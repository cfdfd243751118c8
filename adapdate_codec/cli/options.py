"""Options that `adapdate encode` and `adapdate decode` share."""

from __future__ import annotations

from typing import Callable

import click

_common_options = [
    click.option("-o", "--output", metavar="OUT", help="Output file, or folder for several inputs ('-' = stdout)."),
    click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
    click.option("--threads", type=click.IntRange(min=1), metavar="N", help="CPU threads for torch."),
    click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs."),
    click.option("--json", "as_json", is_flag=True, help="Print per-file results as JSON on stdout."),
]


def coding_options(f: Callable) -> Callable:
    for option in reversed(_common_options):
        f = option(f)
    return f
