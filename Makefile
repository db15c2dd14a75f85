# Two entry points for a fresh clone: `make demo` and `make test` (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo study test test-slow bench clean

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	# czone==2022.9.20 declares `pymatgen>=2022.x.x`; pip >= 24.1 rejects that metadata and falls back to
	# czone 2022.9.19, which fails on import. Pin pip inside our own venv so the real release installs.
	$(PY) -m pip install -q 'pip<24.1'
	# Install the CPU wheel first: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) dataset_scripts/build_tem_au_np.py --preset demo --out tem_au_np
	HF_HUB_OFFLINE=1 $(VENV)/bin/temsynth info tem_au_np
	# A small U-Net for a few minutes on CPU; prints Dice per benchmark and where the model and metrics are.
	HF_HUB_OFFLINE=1 $(PY) -m training.train --config training/examples/demo.yaml

# The example study (docs in README): 4 data subsets x 5 seeds, fine-tuned on a domain-shifted set; ~15 min on 2 cores.
study: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) dataset_scripts/build_tem_au_np.py --preset demo --out tem_au_np --quiet
	HF_HUB_OFFLINE=1 $(VENV)/bin/temsynth generate --preset shifted --out tem_au_shifted --quiet
	HF_HUB_OFFLINE=1 $(VENV)/bin/temsynth study run training/examples/study_demo.yaml
	$(VENV)/bin/temsynth study report runs/study_demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/bench_simulation.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_study.py

clean:
	rm -rf tem_au_np tem_au_shifted runs bench_out
