"""Score a model on the real, hand-labelled micrographs: `temsynth score`, printing its JSON (kept so that
existing commands and scripts keep working; the logic is `training/score.py`).

    python benchmarks/bench_real.py runs/realistic/model
    python benchmarks/bench_real.py runs/realistic_ft/model --fields benchmark --split-from real_exp
    python benchmarks/bench_real.py MODEL --figure docs/real/predictions.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generators.errors import TemsynthError  # noqa: E402  (after the sys.path line above: runs from a checkout)
from training.score import (  # noqa: E402,F401  (after sys.path; names kept for callers)
    BARE_FRACTION,
    add_arguments,
    default_real_dir,
    draw,
    draw_scenes,
    fields,
    predict_field,
    run,
    score,
    split_of,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p)
    try:
        result = run(p.parse_args(argv))
    except TemsynthError as err:
        print(f"bench_real.py: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))  # the JSON, whatever --json says: what scripts read from it
    return 0


if __name__ == "__main__":
    sys.exit(main())
