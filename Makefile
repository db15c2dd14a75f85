# Two entry points for a fresh clone: `make demo` and `make test` (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Only verbs are phony; folders are made through the file their maker writes last (manifest.json), so an
# interrupted run is not taken for a finished one.
.PHONY: demo realistic study test test-slow bench clean prismatic prismatic-optional FORCE
# The real micrographs bundled with the package (temsynth/data/real/README.md); any folder with the same index.csv.
REAL ?= temsynth/data/real/hrtem_generalization

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
	HF_HUB_OFFLINE=1 $(VENV)/bin/temsynth train --config training/examples/demo.yaml

# The real, hand-labelled micrographs at the realistic preset's 0.7 A pixel, split in halves by source panel,
# every class (material, nominal size) in both halves.
REAL_EXP_FLAGS = $(REAL) --pixel-sizes $(REAL)/index.csv --target-pixel-size-A 0.7 --tile-px 144 \
	--finetune-fraction 0.5 --seed 0 --stratify-by material,nominal_diameter_nm

# The flags real_exp was made with; rewritten (and so newer than real_exp) only when they change.
.real_exp.flags: FORCE
	@echo '$(REAL_EXP_FLAGS)' | cmp -s - $@ || echo '$(REAL_EXP_FLAGS)' > $@

real_exp/manifest.json: .real_exp.flags $(REAL)/index.csv | $(STAMP)
	rm -rf real_exp
	$(VENV)/bin/temsynth import $(REAL_EXP_FLAGS) --out real_exp

tem_np_realistic/manifest.json: | $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/temsynth generate --preset realistic --out tem_np_realistic

# Simulation only -> real micrographs (README "Simulation to real micrographs"): generate, train, score on the
# real set; then fine-tune on its finetune half and score the other half.
realistic: tem_np_realistic/manifest.json real_exp/manifest.json
	HF_HUB_OFFLINE=1 $(VENV)/bin/temsynth train --config training/examples/realistic.yaml
	$(VENV)/bin/temsynth score runs/realistic/model --real $(REAL) --out runs/realistic/real_scores.json
	HF_HUB_OFFLINE=1 $(VENV)/bin/temsynth finetune --config training/examples/realistic_finetune.yaml
	$(VENV)/bin/temsynth score runs/realistic_ft/model --real $(REAL) --fields benchmark --split-from real_exp \
		--out runs/realistic_ft/real_scores.json

# The example study (docs in README): 4 data subsets x 3 seeds, fine-tuned and scored on the real micrographs; ~30 min on 2 cores.
study: tem_np_realistic/manifest.json real_exp/manifest.json
	HF_HUB_OFFLINE=1 $(VENV)/bin/temsynth study run training/examples/study_demo.yaml
	$(VENV)/bin/temsynth study report runs/study_demo

# Optional second simulator (README, "Prismatic backend"): Debian packages + a source build of pyprismatic into
# $(VENV). Idempotent. `make test` tries it once (`--optional`: on failure it records why and the Prismatic
# cross-check tests skip with that reason); `make demo` does not need it.
prismatic: $(STAMP)
	bash scripts/install_prismatic.sh $(VENV)

prismatic-optional: $(STAMP)
	bash scripts/install_prismatic.sh $(VENV) --optional

# Lint first (seconds): import order, unused and undefined names, line length (pyproject.toml [tool.ruff]).
test: $(STAMP) prismatic-optional
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -rs

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/bench_simulation.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_study.py

clean:
	rm -rf tem_au_np tem_au_shifted tem_np_realistic real_exp .real_exp.flags runs bench_out
