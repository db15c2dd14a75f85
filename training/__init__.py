"""Segmentation training on temsynth dataset folders: data → model → Accelerate loop → metrics and model cards."""
from .models import load_model  # noqa: F401  (re-exported: `from training import load_model`)
