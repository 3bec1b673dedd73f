"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (bad id, bad data, bad option); the message says what and how."""


class DatasetNotFound(UserError):
    """A dataset id could not be resolved locally or remotely."""


class DataError(UserError):
    """Input data is malformed, non-finite, empty or inconsistent with its environment."""
