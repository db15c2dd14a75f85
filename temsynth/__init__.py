"""temsynth: the command line above both halves of the project.

Layers import one way: `temsynth.cli` -> `training/` -> `generators/` -> `temsynth.errors` (a leaf).
This package's `__init__` imports nothing, so `generators/` can import `temsynth.errors` without pulling the CLI.
See docs/architecture.md.
"""
