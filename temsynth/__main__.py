"""`python -m temsynth ...` is the `temsynth` command."""
import sys

from .cli import main

sys.exit(main())
