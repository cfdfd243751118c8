"""What a cluster job reports as it runs (runner.py yields them; the CLI and adapdate_codec.ray read them).
No Ray here, so that reading them needs no Ray either."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from adapdate_codec.cluster.listing import Skipped
from adapdate_codec.cluster.work import Outcome


@dataclass(frozen=True)
class Found:
    total: int  # files (and listing problems) found so far: the progress bar's total


@dataclass(frozen=True)
class Lost:
    files: int  # a worker stopped; these files of its are coded again (0: it stopped while starting)


Event = Union[Outcome, Skipped, Found, Lost]
