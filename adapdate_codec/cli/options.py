"""Options that `adapdate encode` and `adapdate decode` share."""

from __future__ import annotations

import logging
from typing import Callable

import click
from click.core import ParameterSource

from adapdate_codec.cli.report import Verbosity

_common_options = [
    click.option("-o", "--output", metavar="OUT", help="Output file, or folder for several inputs ('-' = stdout)."),
    click.option("--max-pixels", type=click.IntRange(min=0), metavar="N",
                 help="Refuse images above N pixels (default 89,478,485 or $ADAPDATE_MAX_PIXELS; 0: no limit)."),
    click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
    click.option("--threads", type=click.IntRange(min=1), metavar="N",
                 help="CPU threads per file (default: every core; with -j, the cores shared out). Any count "
                      "gives the same files."),
    click.option("-j", "--jobs", "workers", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
                 help="Code N files at once, in N processes that each load the model (up to ~1.5 GB each)."),
    click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs."),
    click.option("--skip-existing", "skip_existing_outputs", is_flag=True,
                 help="Leave inputs whose output exists (counted as skipped): rerun a stopped batch to finish it."),
    click.option("--ray", "ray_address", metavar="ADDRESS",
                 help="Code on a Ray cluster: 'local' (started for this run), 'auto' (started here with `ray "
                      "start`, or $RAY_ADDRESS), or ray://HOST:PORT. Inputs and -o DIR may then be URLs "
                      "(s3://, gs://, file://), read and written by the workers. Needs adapdate[ray]."),
    click.option("--json", "as_json", is_flag=True, help="Print per-file results as JSON on stdout."),
    click.option("-r", "--recursive", is_flag=True, help="Folder inputs: also the files in their subfolders."),
    # no -q: it is encode's --quality, as in cwebp and avifenc
    click.option("--quiet", is_flag=True, help="No progress and no summary; errors and warnings only."),
    click.option("-v", "--verbose", is_flag=True, help="Also set-up times, per-file details and a total."),
]


def verbosity(quiet: bool, verbose: bool) -> Verbosity:
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose cannot be used together")
    if quiet:  # the library's notices too (e.g. a built-in model unpacked on first use)
        logging.getLogger("adapdate").setLevel(logging.WARNING)
    return Verbosity.QUIET if quiet else Verbosity.VERBOSE if verbose else Verbosity.NORMAL


def given_workers(workers: int) -> int | None:
    """-j as given, None when left at its default: with --ray, -j N caps the workers (default: as many as the
    cluster has room for)."""
    source = click.get_current_context().get_parameter_source("workers")
    return None if source is ParameterSource.DEFAULT else workers


def check_existing_options(force: bool, skip_existing: bool) -> None:
    if force and skip_existing:
        raise click.UsageError("--force and --skip-existing cannot be used together")


def pixel_limit(option: int | None) -> int:
    """--max-pixels, else $ADAPDATE_MAX_PIXELS, else the default, resolved once per run (a bad variable is
    one error, not one per file); 0 means no limit, as the library takes it."""
    from adapdate_codec.limits import max_pixels

    return max_pixels(option) or 0


def coding_options(f: Callable) -> Callable:
    for option in reversed(_common_options):
        f = option(f)
    return f
