"""benchmarks/particle_contrast.py: how visible particles are against their carbon, the same way for real labels
and simulated masks."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from particle_contrast import main, particle_contrast  # noqa: E402


def _field(rng, fringes: float = 0.0):
    """White 'carbon' of unit spread, a disc 0.5 darker on average (optionally with fringes of amplitude
    `fringes`), and a second disc cut by the border."""
    n = 160
    y, x = np.mgrid[:n, :n]
    image = rng.normal(0.0, 1.0, (n, n))
    disc = (y - 70) ** 2 + (x - 80) ** 2 < 20**2
    image[disc] += -0.5 + fringes * np.sin(2 * np.pi * x[disc] / 4.0)
    cut = (y - 150) ** 2 + (x - 20) ** 2 < 15**2
    image[cut] -= 3.0
    return image, disc | cut


def test_contrast_is_the_mean_offset_in_units_of_the_carbons_spread_and_border_cuts_are_left_out():
    rng = np.random.default_rng(0)
    image, mask = _field(rng)
    rows = particle_contrast(image, mask, pixel_size_A=0.5)
    assert rows.shape == (1, 3)                     # the border-cut disc is not measured
    contrast, texture, diameter_nm = rows[0]
    assert abs(contrast - 0.5) < 0.1
    assert abs(texture - 1.0) < 0.1                 # no fringes: the core is as rough as the carbon
    assert abs(diameter_nm - 2.0) < 0.05            # 40 px at 0.5 Å
    # grey levels of a display rendering (any offset and scale) do not change either figure
    again = particle_contrast(17.0 + 40.0 * image, mask, pixel_size_A=0.5)
    np.testing.assert_allclose(again, rows, rtol=1e-9)


def test_lattice_fringes_raise_the_texture_not_the_contrast():
    rng = np.random.default_rng(1)
    image, mask = _field(rng, fringes=2.0)
    contrast, texture, _ = particle_contrast(image, mask, pixel_size_A=0.5)[0]
    assert abs(contrast - 0.5) < 0.15
    assert abs(texture - np.sqrt(1 + 2.0**2 / 2)) < 0.15   # sine of amplitude 2: variance 2 on top of the noise's 1


def test_runs_on_a_dataset_against_the_bundled_real_set_and_refuses_a_folder_that_is_none(built, tmp_path, capsys):
    assert main([str(built), "--max-records", "6"]) == 0
    out = capsys.readouterr().out
    assert "at 0.25 Å per pixel" in out and "| Au 2.2 nm |" in out
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("particle_contrast: ")


def test_particles_split_by_a_record_column_carry_their_records_value(built, capsys):
    """--by: each simulated particle carries its record's value of the column (here the dose), so a config's
    conditions can be read against the real particles; a column the records lack is refused in one line."""
    import pyarrow.dataset as pads
    from particle_contrast import simulated

    from generators.dataset import DatasetFolder

    rows, _ = simulated(built, 6, by="dose_e_per_A2")
    folder = DatasetFolder.open(built)
    with folder.reading():
        doses = pads.dataset(folder.files("parquet"), format="parquet").to_table(
            columns=["dose_e_per_A2"]).slice(0, 6).column(0).to_pylist()
    assert rows.shape[1] == 4 and len(rows) > 0
    assert set(np.round(rows[:, 3], 6)) <= set(np.round(doses, 6))
    assert main([str(built), "--max-records", "6", "--by", "no_such_column"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--by no_such_column" in err and "dose_e_per_A2" in err
    assert main([str(built), "--max-records", "6", "--by", "detector_type"]) == 2  # text, not a number
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--by detector_type" in err
