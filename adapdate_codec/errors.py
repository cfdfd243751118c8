"""One exception hierarchy for the library; the CLI maps it to exit status 1 and a one-line message."""

from __future__ import annotations


class AdapdateError(Exception):
    """Base of every error the library reports to a user."""

    exit_code = 1


class InputError(AdapdateError):
    """An input file or image that cannot be used."""


class ImageTooLargeError(InputError):
    """An image (to encode, or declared by a file to decode) above the pixel limit (limits.py)."""


class OutputError(AdapdateError):
    """An output that cannot be written."""


class OutputExistsError(OutputError):
    """The output exists and -f/--force was not given."""


class DeviceError(AdapdateError):
    """The requested device (e.g. "cuda" without CUDA) cannot be used."""


class FormatError(AdapdateError):
    """A compressed file that cannot be decoded faithfully (bad magic, version, checksum, truncation)."""


class ModelError(AdapdateError):
    """A model that is missing, invalid or cannot be installed."""


class ModelNotInstalledError(ModelError):
    """The model (or exact version, by fingerprint) a file needs is not installed."""


class DownloadError(ModelError):
    """A model could not be fetched."""


class UpdateError(AdapdateError):
    """An update (.nnc) file that is invalid or does not apply to the installed base."""


class TrainingError(AdapdateError):
    """Training cannot start or continue."""


class ClusterError(AdapdateError):
    """A Ray cluster that cannot run the job: Ray not installed, no cluster at the address, no room for a
    worker, workers that keep stopping."""
