"""`temsynth.errors.TemsynthError`, kept as an import path: the class lives in the leaf `generators.errors`, below
every layer that raises it."""
from generators.errors import TemsynthError

__all__ = ["TemsynthError"]
