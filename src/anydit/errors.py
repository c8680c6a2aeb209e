"""The errors anydit raises for bad input: each names the field, file or sample at fault."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


class DataError(ValueError):
    """A problem with one sample or one file; ``kind`` groups problems in reports
    (``anydit data check`` counts them by kind)."""

    def __init__(self, message: str, kind: str = "invalid value"):
        super().__init__(message)
        self.kind = kind


def problem_kind(err: Exception) -> str:
    """A short category for a reading error: the rows of ``anydit data check``'s counts."""
    if isinstance(err, DataError):
        return err.kind
    if isinstance(err, FileNotFoundError):
        return "missing file"
    text = str(err)
    for needle, kind in (
        ("NaN or inf", "not finite"),
        ("unknown label", "unknown label"),
        ("more than the maximum length", "over-long text"),
        ("cannot read", "unreadable file"),
        ("not a readable", "unreadable file"),
        ("holds no samples", "unreadable file"),
        ("too large", "too large"),
        ("outside", "out of range"),
        ("expected shape", "wrong shape"),
        ("pixels", "wrong shape"),
        ("channels", "wrong shape"),
    ):
        if needle in text:
            return kind
    return "invalid value"


class Failed:
    """A sample that could not be read in a DataLoader worker: carried to the training process,
    which raises it there with the original one-line message (a worker's traceback would bury
    it)."""

    def __init__(self, err: Exception):
        self.message, self.kind = str(err), problem_kind(err)

    def raise_(self):
        raise DataError(self.message, self.kind)


# What bad input raises; the CLI and the web page show these as one line.
EXPECTED_ERRORS = (ValueError, FileNotFoundError, OSError, FloatingPointError, KeyError)
