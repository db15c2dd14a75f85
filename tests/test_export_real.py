"""benchmarks/export_real.py: a simulated split written out as a real set that `score` and `calibrate` read."""
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_a_split_exported_as_a_real_set_reads_back_record_for_record(built, tmp_path):
    from generators.regenerate import read_record
    from training.score import fields, read_pair

    out = tmp_path / "as_real"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "export_real.py"), str(built), str(out),
                        "--split", "train"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = fields(out)
    assert rows
    for row in rows:
        image, mask = read_pair(out, row)
        rec = read_record(built, row["file"].removesuffix(".npy"))
        np.testing.assert_array_equal(image, rec["image"])
        np.testing.assert_array_equal(mask, rec["mask"].astype(bool))
        assert float(row["pixel_size_A"]) == rec["pixel_size_A"]
        # the nominal diameter is the record's median particle diameter (0 for bare carbon)
        radii = rec["particle_radius_A"] or [0.0]
        assert float(row["nominal_diameter_nm"]) == round(2 * float(np.median(radii)) / 10, 1)
