"""Training of segmentation networks on temsynth datasets (see issue: train and fine-tune with Accelerate)."""
