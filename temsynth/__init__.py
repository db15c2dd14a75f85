"""temsynth: the command line above both halves of the project.

Layers import one way: `temsynth.cli` -> `training/` -> `generators/` -> `generators.errors` (a leaf).
This package's `__init__` imports nothing, so `generators/` can import `temsynth.resources` without pulling the CLI.
See docs/architecture.md.
"""
