"""adapdate: a learned image codec (cheng2020-anchor) with small, patchable model updates."""

__version__ = "0.1.0"
