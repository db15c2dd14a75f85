"""temsynth: synthetic HRTEM nanoparticle datasets (structure -> exit waves -> images -> records -> dataset)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("temsynth")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+src"
