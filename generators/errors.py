"""The one error base of the project: every error a user can cause (a config field, a query, a folder, a model,
a micrograph) derives from `TemsynthError`, so each command line catches one class and prints its message.

It sits in the lowest layer because every layer raises it: `generators/` imports it from beside itself,
`training/` and `temsynth/` from below, so no module imports upwards for it. It imports nothing.
Each subclass keeps its builtin base too (`ConfigError` is still a `ValueError`), so existing `except` clauses hold.
"""
from __future__ import annotations


class TemsynthError(Exception):
    """A failure with a message meant for the user (exit status 2 on the command line)."""


def exit_status(prog: str, call) -> int:
    """What every command line's `main` does around its work: `call()`'s exit status, or, for an error the user
    can fix (a `TemsynthError`), its message as one line on stderr (`{prog}: {message}`) and status 2."""
    import sys

    try:
        return call()
    except TemsynthError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
