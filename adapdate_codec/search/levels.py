"""Effort levels: how long the encoder searches, and with which schedule.

Level 0 is the plain encoder (no search). Higher levels take more steps; each step costs about one
forward and backward pass of g_s over the image (see the README for seconds per megapixel). The step
sizes and the annealing were tuned on ../shared/data/val crops (benchmarks/effort.py --tune), never on
Kodak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_EFFORT = 9


@dataclass(frozen=True)
class Level:
    steps: int
    lr: float  # Adam's step size, in latent units
    tau_start: float = 0.5  # SGA temperature: held for the first `hold` of the steps ...
    tau_end: float = 0.05  # ... then decayed exponentially to this at the last step
    hold: float = 0.2

    def tau(self, step: int) -> float:
        held = self.hold * self.steps
        if step < held or self.steps <= 1:
            return self.tau_start
        frac = min(1.0, (step - held) / max(1.0, self.steps - 1 - held))
        return self.tau_start * math.exp(frac * math.log(self.tau_end / self.tau_start))


# Step sizes: the multipliers x0.25 .. x2 of a first guess were tried on 512² val crops at q2 and q4 (real RD
# cost J at each model's λ, benchmarks/effort.py --tune on an H200; benchmarks/results/effort-h200-2026-12-04.json):
# levels 1-2 kept x1, levels 3 and 5 took x2; 6-9 were not reached by the tuning run's time limit.
LEVELS: dict[int, Level] = {
    1: Level(steps=6, lr=0.06, tau_start=0.4, hold=0.0),
    2: Level(steps=10, lr=0.05, tau_start=0.4, hold=0.0),
    3: Level(steps=16, lr=0.08, hold=0.1),  # tuned: x2 of 0.04 (val, H200 run of 2026-12-04)
    4: Level(steps=24, lr=0.06, hold=0.1),  # between its tuned neighbours (not tuned itself)
    5: Level(steps=36, lr=0.05),  # tuned: x2 of 0.025
    6: Level(steps=50, lr=0.02),
    7: Level(steps=80, lr=0.015),
    8: Level(steps=130, lr=0.012),
    9: Level(steps=200, lr=0.01),
}


def level(effort: int) -> Level | None:
    """The schedule of an effort level (None for 0: no search); ValueError outside 0..MAX_EFFORT."""
    if not isinstance(effort, int) or isinstance(effort, bool) or not 0 <= effort <= MAX_EFFORT:
        raise ValueError(f"effort must be an integer from 0 to {MAX_EFFORT}, got {effort!r}")
    return LEVELS.get(effort)
