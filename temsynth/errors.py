"""The one error base of the project: every error a user can cause (a config field, a query, a folder, a model,
a micrograph) derives from `TemsynthError`, so the command line catches one class and prints its message.

Each subclass keeps its builtin base too (`ConfigError` is still a `ValueError`), so existing `except` clauses hold.
This module imports nothing of the project: `generators/` and `training/` both import it without a cycle.
"""
from __future__ import annotations


class TemsynthError(Exception):
    """A failure with a message meant for the user (exit status 2 on the command line)."""
