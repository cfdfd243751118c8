"""The `adapdate` command line. Only argument parsing and printing live here.

Subcommand modules import torch / compressai inside their functions, never at module level, so that
`adapdate --help` stays fast.
"""

from __future__ import annotations

import logging
import sys
import warnings

import click

from adapdate_codec import __version__
from adapdate_codec.errors import AdapdateError


# Printed by torch when compressai (through torch_geometric) is imported: noise nobody running adapdate can act on.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"adapdate: error: {message}", err=True)
    sys.exit(code)


class AdapdateGroup(click.Group):
    """Maps library errors to exit status 1 and one line on stderr; Ctrl-C to 130."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AdapdateError as e:
            fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            click.echo("adapdate: interrupted", err=True)
            sys.exit(130)
        except MemoryError:
            fail("out of memory (try a smaller image or --device cpu)")


@click.group(cls=AdapdateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="adapdate")
def main() -> None:
    """adapdate: a learned image codec with small, patchable model updates."""
    _notices_to_stderr()


class _Notice(logging.Handler):
    """The library's notices (logger "adapdate", e.g. a built-in model unpacked on first use) as
    `adapdate: ...` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"adapdate: {record.getMessage()}", err=True)


def _notices_to_stderr() -> None:
    log = logging.getLogger("adapdate")
    if not any(isinstance(h, _Notice) for h in log.handlers):
        log.addHandler(_Notice())
    log.setLevel(logging.INFO)
    log.propagate = False


from adapdate_codec.cli import decode, encode, evaluate, info, model, training  # noqa: E402  (registers commands)

main.add_command(encode.encode)
main.add_command(decode.decode)
main.add_command(info.info)
main.add_command(model.model)
main.add_command(training.train)
main.add_command(evaluate.eval_command)
