"""Importing experimental micrographs: every reader against a real writer, resampling and tiling geometry,
the end-to-end folder (splits per source, load_dataset, checksums), and one-line errors naming the file."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dm_files import write_dm  # tests/ has no __init__.py, so pytest puts it on sys.path

from generators.micrographs import (
    MicrographError,
    assign_splits,
    import_folder,
    read_mask,
    read_micrograph,
    resample,
    resample_mask,
    tile,
    tile_starts,
    unit_to_A,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "dataset_scripts" / "import_experimental.py"


def known(dtype=np.float32, shape=(40, 56)):
    """Non-square, so a transposed read fails; values exact in every dtype used."""
    y, x = np.mgrid[:shape[0], :shape[1]]
    return ((7 * y + 3 * x) % 200 + 10).astype(dtype)


# ---------------------------------------------------------------- writers, one per format and calibration
def _tiff_imagej(path, img, unit, per_unit):
    import tifffile

    tifffile.imwrite(path, img, imagej=True, resolution=(per_unit, per_unit), metadata={"unit": unit})


def _rsciio_signal(img, scale, units):
    axes = [{"name": n, "size": s, "scale": scale, "offset": 0.0, "units": units, "navigate": False}
            for n, s in zip("yx", img.shape)]
    return {"data": img, "axes": axes, "metadata": {"General": {"title": "img"}, "Signal": {}},
            "original_metadata": {}}


def w_tiff_imagej_nm(p, img):
    _tiff_imagej(p, img, "nm", 1 / 0.05)  # 0.05 nm/px


def w_tiff_imagej_angstrom(p, img):
    _tiff_imagej(p, img, "\\u00C5", 1 / 0.8)  # as ImageJ writes Å in its description


def w_tiff_imagej_micron(p, img):
    _tiff_imagej(p, img, "micron", 1 / 2e-5)


def w_tiff_rsciio(p, img):
    from rsciio.tiff import file_writer

    file_writer(str(p), _rsciio_signal(img, 0.42, "Å"))


def w_tiff_resolution_cm(p, img):
    import tifffile

    tifffile.imwrite(p, img, resolution=(1e8 / 0.6, 1e8 / 0.6), resolutionunit="CENTIMETER")


def w_tiff_dpi(p, img):
    import tifffile

    tifffile.imwrite(p, img, resolution=(72, 72), resolutionunit="INCH")


def w_png(p, img):
    from PIL import Image

    Image.fromarray(img).save(p)


def w_npy(p, img):
    np.save(p, img)


def w_mrc(p, img, voxel=0.75):
    import mrcfile

    with mrcfile.new(p) as m:
        m.set_data(img)
        if voxel:
            m.voxel_size = voxel


def w_mrc_uncalibrated(p, img):
    w_mrc(p, img, voxel=None)


def w_emd_ncempy(p, img, px_nm=0.05):
    from ncempy.io.emd import fileEMD

    with fileEMD(str(p), readonly=False) as f:
        f.put_emdgroup("img", img, [(np.arange(img.shape[0]) * px_nm, "y", "n_m"),
                                    (np.arange(img.shape[1]) * px_nm, "x", "n_m")])


def w_emd_rsciio(p, img):
    from rsciio.emd import file_writer

    file_writer(str(p), _rsciio_signal(img, 0.05, "nm"))


def w_dm3(p, img):
    write_dm(p, img, 0.0625, "nm", version=3)


def w_dm4(p, img):
    write_dm(p, img, 0.0625, "nm", version=4)


def w_dm4_angstrom(p, img):
    write_dm(p, img, 0.3, "Å", version=4)


def w_dm4_pm(p, img):
    write_dm(p, img, 25.0, "pm", version=4)


ROUND_TRIPS = [  # writer, file name, dtype, expected pixel size (Å), expected format
    (w_tiff_imagej_nm, "a.tif", np.float32, 0.5, "tiff"),
    (w_tiff_imagej_angstrom, "a.tiff", np.uint16, 0.8, "tiff"),
    (w_tiff_imagej_micron, "a.tif", np.float32, 0.2, "tiff"),
    (w_tiff_rsciio, "a.tif", np.float32, 0.42, "tiff"),
    (w_tiff_resolution_cm, "a.tif", np.uint16, 0.6, "tiff"),
    (w_tiff_dpi, "a.tif", np.uint8, None, "tiff"),
    (w_png, "a.png", np.uint8, None, "png"),
    (w_png, "a.png", np.uint16, None, "png"),
    (w_npy, "a.npy", np.float64, None, "npy"),
    (w_mrc, "a.mrc", np.float32, 0.75, "mrc"),
    (w_mrc, "a.mrc", np.int16, 0.75, "mrc"),
    (w_mrc_uncalibrated, "a.mrc", np.float32, None, "mrc"),
    (w_emd_ncempy, "a.emd", np.float32, 0.5, "emd-ncem"),
    (w_emd_rsciio, "a.emd", np.float32, 0.5, "emd-ncem"),
    (w_dm3, "a.dm3", np.float32, 0.625, "dm3"),
    (w_dm4, "a.dm4", np.float32, 0.625, "dm4"),
    (w_dm4, "a.DM4", np.uint16, 0.625, "dm4"),
    (w_dm4_angstrom, "a.dm4", np.int16, 0.3, "dm4"),
    (w_dm4_pm, "a.dm4", np.float32, 0.25, "dm4"),
]


@pytest.mark.parametrize("writer,name,dtype,px,fmt", ROUND_TRIPS,
                         ids=[f"{w.__name__[2:]}-{np.dtype(d).name}" for w, _, d, _, _ in ROUND_TRIPS])
def test_read_micrograph_round_trip(tmp_path, writer, name, dtype, px, fmt):
    img = known(dtype)
    path = tmp_path / name
    writer(path, img)
    data, pixel_size, got_fmt = read_micrograph(path)
    assert data.dtype == np.float32 and data.shape == img.shape
    assert np.array_equal(data, img.astype(np.float32))
    assert got_fmt == fmt
    assert pixel_size == (None if px is None else pytest.approx(px, rel=1e-6))


def test_rgb_png_becomes_luminance_and_jpeg_is_read(tmp_path):
    from PIL import Image

    g = known(np.uint8)
    rgb = np.stack([g, g // 2, 255 - g], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    data, px, _ = read_micrograph(tmp_path / "c.png")
    expect = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert data.shape == g.shape and px is None and np.allclose(data, expect, atol=1e-3)
    Image.fromarray(g).save(tmp_path / "g.jpg", quality=95)
    data, px, fmt = read_micrograph(tmp_path / "g.jpg")
    assert fmt == "jpeg" and data.shape == g.shape and np.abs(data - g).mean() < 3


def test_masks_are_binary_whatever_the_encoding(tmp_path):
    from PIL import Image

    disk = _disk((50, 60), (30, 25), 12)
    Image.fromarray(disk * 255).save(tmp_path / "m255.png")
    Image.fromarray(np.stack([disk * 255] * 3, -1)).save(tmp_path / "mrgb.png")
    Image.fromarray(disk * 255).save(tmp_path / "m.jpg", quality=70)  # lossy: faint values around the edge
    np.save(tmp_path / "m.npy", disk.astype(np.float64))
    np.save(tmp_path / "mb.npy", disk.astype(bool))
    for name in ("m255.png", "mrgb.png", "m.npy", "mb.npy"):
        m = read_mask(tmp_path / name)
        assert m.dtype == np.uint8 and np.array_equal(m, disk), name
    m = read_mask(tmp_path / "m.jpg")
    assert set(np.unique(m)) <= {0, 1} and np.sum(m != disk) < 0.01 * disk.size


@pytest.mark.parametrize("unit,factor", [("nm", 10), ("n_m", 10), ("[n_m]", 10), ("Å", 1), ("\u212b", 1),
                                         ("A", 1), ("pm", 0.01), ("µm", 1e4), ("\u03bcm", 1e4), ("um", 1e4),
                                         ("micron", 1e4), ("m", 1e10), ("px", None), ("", None), (None, None),
                                         ("cm", None), ("inch", None)])
def test_units(unit, factor):
    assert unit_to_A(unit) == factor


# ---------------------------------------------------------------- resampling and tiling
def _disk(shape, center_xy, radius):
    y, x = np.mgrid[:shape[0], :shape[1]]
    return (((x + 0.5 - center_xy[0]) ** 2 + (y + 0.5 - center_xy[1]) ** 2) <= radius ** 2).astype(np.uint8)


def test_resample_area_average_linear_and_identity():
    rng = np.random.default_rng(0)
    a = rng.random((64, 96)).astype(np.float32)
    half = resample(a, 0.1, 0.2)
    assert np.allclose(half, a.reshape(32, 2, 48, 2).mean(axis=(1, 3)), atol=1e-6)
    assert resample(a, 0.3, 0.2).shape == (96, 144)
    same = resample(a, 0.25, 0.25)
    assert np.array_equal(same, a) and same is not a
    assert resample(a, 0.1, 0.3).mean() == pytest.approx(a.mean(), abs=2e-3)  # area averaging keeps the mean


@pytest.mark.parametrize("from_A,to_A", [(0.2, 0.25), (0.35, 0.25), (0.1, 0.3)])
def test_resampled_mask_is_binary_and_scales_the_radius(from_A, to_A):
    r_A, field_A = 9.0, 40.0
    n = int(round(field_A / from_A))
    mask = _disk((n, n), (n / 2, n / 2), r_A / from_A)
    out = resample_mask(mask, from_A, to_A)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    r_px = np.sqrt(out.sum() / np.pi)
    assert r_px == pytest.approx(r_A / to_A, abs=0.6)


def test_tiles_cover_the_image_with_the_last_one_flush():
    assert tile_starts(100, 32) == [0, 32, 64, 68]
    assert tile_starts(64, 32) == [0, 32]
    assert tile_starts(100, 32, overlap=8) == [0, 24, 48, 68]
    assert tile_starts(20, 32) == [0]
    img = np.arange(100 * 70, dtype=np.float32).reshape(100, 70)
    mask = (img % 3 == 0).astype(np.uint8)
    tiles = tile(img, mask, 32)
    assert len(tiles) == 4 * 3 and not any(t.padded for t in tiles)
    covered = np.zeros_like(mask)
    for t in tiles:
        x, y = t.origin_px
        assert np.array_equal(t.image, img[y:y + 32, x:x + 32]) and np.array_equal(t.mask, mask[y:y + 32, x:x + 32])
        covered[y:y + 32, x:x + 32] = 1
    assert covered.all() and tiles[-1].origin_px == (38, 68)


def test_small_image_is_padded_and_recorded():
    img = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    mask = np.ones((20, 30), np.uint8)
    (t,) = tile(img, mask, 32)
    assert t.padded and t.valid_px == (30, 20) and t.image.shape == (32, 32)
    assert np.array_equal(t.image[:20, :30], img) and t.image[20:, :30].min() >= img.min()  # reflected, not 0
    assert t.mask[:20, :30].all() and not t.mask[20:].any() and not t.mask[:, 30:].any()


def test_split_per_source_has_both_splits_and_is_seeded():
    names = [f"m{i}.tif" for i in range(5)]
    s = assign_splits(names, 0.5, seed=3)
    assert set(s.values()) == {"finetune", "benchmark"} and assign_splits(names[::-1], 0.5, seed=3) == s
    assert set(assign_splits(names[:2], 0.05, 0).values()) == {"finetune", "benchmark"}
    assert set(assign_splits(names, 1.0, 0).values()) == {"finetune"}
    assert set(assign_splits(names, 0.0, 0).values()) == {"benchmark"}


def test_stratified_split_halves_every_class():
    classes = {"Au / 2.2": 7, "Au / 5": 4, "Au / 10": 4, "Ag / 5": 1}
    strata = {f"{k.replace(' / ', '_')}_{i}.npy": k for k, n in classes.items() for i in range(n)}
    names = sorted(strata)
    for seed in range(20):
        s = assign_splits(names, 0.5, seed, strata)
        assert sum(v == "finetune" for v in s.values()) == 8
        for k, n in classes.items():
            n_ft = sum(s[name] == "finetune" for name in names if strata[name] == k)
            assert n_ft in (n // 2, (n + 1) // 2), (seed, k, n_ft)   # 7 -> 3 or 4, 4 -> 2, 1 -> 0 or 1
        assert assign_splits(names[::-1], 0.5, seed, strata) == s
    splits = {tuple(sorted(assign_splits(names, 0.5, seed, strata).items())) for seed in range(20)}
    assert len(splits) > 10                                       # seeded, not one fixed assignment
    assert set(assign_splits(names[:2], 0.05, 0, {n: "x" for n in names[:2]}).values()) == {"finetune", "benchmark"}
    # Without strata a random half of these sources can leave a class out of one side; with them it never does.
    unstratified = [assign_splits(names, 0.5, seed) for seed in range(20)]
    assert any(all(s[n] == "benchmark" for n in names if strata[n] == "Au / 10") or
               all(s[n] == "finetune" for n in names if strata[n] == "Au / 10") or
               all(s[n] == "benchmark" for n in names if strata[n] == "Au / 5") for s in unstratified)


def test_stratified_import_reads_the_classes_from_the_csv(folder, tmp_path):
    rows = ["file,pixel_size_A,material,size_nm", "au_01.tif,0.2,Au,2", "au 02.dm4,0.25,Au,2",
            "au_03.mrc,0.35,Au,5", "au_04.emd,0.3,Au,5"]
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    m = import_folder(folder, tmp_path / "out", target_pixel_size_A=TARGET_A, tile_px=TILE, seed=2,
                      pixel_sizes_csv=tmp_path / "index.csv", stratify_by=["material", "size_nm"], log=lambda *a: None)
    by_class = {}
    for s in m["sources"]:
        by_class.setdefault(s["stratum"], []).append(s["split"])
    assert by_class == {"Au / 2": by_class["Au / 2"], "Au / 5": by_class["Au / 5"]}
    assert all(sorted(v) == ["benchmark", "finetune"] for v in by_class.values())
    assert m["import"]["stratify_by"] == ["material", "size_nm"]
    with pytest.raises(MicrographError, match="missing colour"):
        import_folder(folder, tmp_path / "o2", target_pixel_size_A=TARGET_A, tile_px=TILE,
                      pixel_sizes_csv=tmp_path / "index.csv", stratify_by=["colour"], log=lambda *a: None)
    with pytest.raises(MicrographError, match="give --pixel-sizes CSV"):
        import_folder(folder, tmp_path / "o3", target_pixel_size_A=TARGET_A, tile_px=TILE, stratify_by=["material"],
                      log=lambda *a: None)
    (tmp_path / "index.csv").write_text("\n".join(rows[:-1] + ["au_04.emd,0.3,,5"]) + "\n")
    with pytest.raises(MicrographError, match="au_04.emd has no material"):
        import_folder(folder, tmp_path / "o4", target_pixel_size_A=TARGET_A, tile_px=TILE,
                      pixel_sizes_csv=tmp_path / "index.csv", stratify_by=["material"], log=lambda *a: None)
    assert not any((tmp_path / d).exists() for d in ("o2", "o3", "o4"))


# ---------------------------------------------------------------- end to end
FRINGE_A, RADIUS_A, FIELD_A, TARGET_A, TILE = 2.35, 14.0, 48.0, 0.25, 64


def _micrograph(px_A, seed):
    """Lattice fringes inside a disk particle on a noisy background; the mask is the disk."""
    n = int(round(FIELD_A / px_A))
    y, x = (np.mgrid[:n, :n] + 0.5) * px_A
    disk = ((x - FIELD_A / 2) ** 2 + (y - FIELD_A / 2) ** 2 <= RADIUS_A ** 2).astype(np.uint8)
    noise = np.random.default_rng(seed).normal(0, 0.5, (n, n))
    return (100 + 20 * np.cos(2 * np.pi * x / FRINGE_A) * disk + noise).astype(np.float32), disk


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Four calibrated micrographs in four formats and pixel sizes, masks next to them in other formats."""
    from PIL import Image

    d = tmp_path_factory.mktemp("micrographs")
    img, m = _micrograph(0.2, 0)
    _tiff_imagej(d / "au_01.tif", img, "nm", 1 / 0.02)
    Image.fromarray(m * 255).save(d / "au_01_mask.png")
    img, m = _micrograph(0.25, 1)
    write_dm(d / "au 02.dm4", img, 0.025, "nm")
    np.save(d / "au 02_mask.npy", m)
    img, m = _micrograph(0.35, 2)
    w_mrc(d / "au_03.mrc", img, voxel=0.35)
    Image.fromarray(m).save(d / "au_03_mask.tif")
    img, m = _micrograph(0.3, 3)
    w_emd_ncempy(d / "au_04.emd", img, px_nm=0.03)
    Image.fromarray(m * 255).save(d / "au_04_mask.png")
    (d / "notes.txt").write_text("session log")
    return d


@pytest.fixture(scope="module")
def imported(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "tem_au_exp"
    logs = []
    manifest = import_folder(folder, out, target_pixel_size_A=TARGET_A, tile_px=TILE, seed=1, material="Au",
                             records_per_shard=10, log=logs.append)
    return out, manifest, logs


def _tiles(out):
    import pyarrow.dataset as pads

    return pads.dataset(out / "data", format="parquet").to_table().to_pylist()


def test_import_manifest_and_splits_per_source(imported):
    out, m, logs = imported
    assert m["kind"] == "experimental" and m["n_sources"] == 4
    assert any("notes.txt" in line for line in logs)  # unsupported files are named, not silently dropped
    per_source = int(np.ceil(FIELD_A / TARGET_A / TILE)) ** 2  # 192 px -> 3 x 3 tiles
    assert m["n_records"] == 4 * per_source == sum(m["splits"].values())
    assert all(s["n_tiles"] == per_source for s in m["sources"])
    by_split = {sp: {s["file"] for s in m["sources"] if s["split"] == sp} for sp in ("finetune", "benchmark")}
    assert by_split["finetune"] and by_split["benchmark"] and not by_split["finetune"] & by_split["benchmark"]
    px = {s["file"]: (s["pixel_size_A"], s["pixel_size_source"], s["format"]) for s in m["sources"]}
    assert px == {"au_01.tif": (pytest.approx(0.2), "file", "tiff"), "au 02.dm4": (pytest.approx(0.25), "file", "dm4"),
                  "au_03.mrc": (pytest.approx(0.35), "file", "mrc"),
                  "au_04.emd": (pytest.approx(0.3), "file", "emd-ncem")}
    rows = _tiles(out)
    for split, files in by_split.items():
        assert {r["source_file"] for r in rows if r["split"] == split} == files
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(m))


def test_imported_shards_explain_their_columns(imported):
    import pyarrow.parquet as pq

    schema = pq.read_schema(next((imported[0] / "data").glob("*.parquet")))
    meta = {f.name: {k.decode(): v.decode() for k, v in f.metadata.items()} for f in schema}
    assert meta["source_pixel_size_A"] == {"unit": "Å", "description": "pixel size of the source micrograph as used "
                                                                     "for resampling"}
    assert meta["tile_index"]["unit"] == "" and meta["mask"]["description"].startswith("rows of pixels")


def test_tiles_are_at_the_target_pixel_size(imported):
    out, m, _ = imported
    rows = _tiles(out)
    assert all(r["pixel_size_A"] == TARGET_A and r["experimental"] and r["material"] == "Au" for r in rows)
    assert all("." not in r["record_id"] for r in rows)
    assert {r["record_id"] for r in rows if r["source_file"] == "au 02.dm4"} >= {"au_02-t0000", "au_02-t0008"}
    for source in m["sources"]:
        full = _reassemble([r for r in rows if r["source_file"] == source["file"]])
        image, mask = full
        assert set(np.unique(mask)) == {0, 1}
        assert np.sqrt(mask.sum() / np.pi) == pytest.approx(RADIUS_A / TARGET_A, abs=1.0)  # 56 px
        assert _fringe_period_px(image, mask) == pytest.approx(FRINGE_A / TARGET_A, rel=0.04)


def _reassemble(rows):
    w, h = (max(r["tile_origin_px"][i] for r in rows) + TILE for i in (0, 1))
    image, mask = np.zeros((h, w), np.float32), np.zeros((h, w), np.uint8)
    for r in rows:
        x, y = r["tile_origin_px"]
        tile_mask = np.asarray(r["mask"], np.uint8)
        assert r["mask_area_px"] == tile_mask.sum()
        image[y:y + TILE, x:x + TILE] = np.asarray(r["image"], np.float32)
        mask[y:y + TILE, x:x + TILE] = tile_mask
    return image, mask


def _fringe_period_px(image, mask):
    profile = ((image - image.mean()) * mask).sum(axis=0)
    spectrum = np.abs(np.fft.rfft(profile, n=8 * len(profile)))
    freqs = np.fft.rfftfreq(8 * len(profile))
    k = np.argmax(spectrum[1:]) + 1
    return 1 / freqs[k]


def test_load_dataset_webdataset_checksums_and_fingerprint(imported):
    import webdataset as wds
    from datasets import Array2D, load_dataset

    from generators.info import describe, verify
    from generators.subsets import fingerprint
    from generators.writers import sha256_file

    out, m, _ = imported
    ds = load_dataset(str(out))
    assert set(ds) == {"finetune", "benchmark"}
    assert {k: len(v) for k, v in ds.items()} == m["splits"]
    feats = ds["finetune"].features
    assert feats["image"] == Array2D((TILE, TILE), "float32") and feats["mask"] == Array2D((TILE, TILE), "uint8")
    row = ds["benchmark"].with_format("numpy")[0]
    assert row["image"].shape == (TILE, TILE) and set(np.unique(row["mask"])) <= {0, 1}
    assert {s["format"] for s in m["shards"]} == {"parquet", "webdataset"}
    assert "finetune-00000-of-00002.parquet" in {Path(s["path"]).name for s in m["shards"]}  # 18 tiles, 10 per shard
    for s in m["shards"]:
        assert sha256_file(out / s["path"]) == s["sha256"] and (out / s["path"]).stat().st_size == s["bytes"]
    assert verify(out) == [] and len(fingerprint(out)) == 64
    summary = describe(out, verify=True)
    assert "experimental" in summary and f"{m['n_records']} tiles" in summary and "checksums OK" in summary
    samples = list(wds.WebDataset(sorted(str(p) for p in (out / "wds").glob("*.tar")), shardshuffle=False)
                   .decode("l8"))
    assert len(samples) == m["n_records"] and samples[0]["json"]["experimental"] is True
    assert samples[0]["image.npy"].shape == (TILE, TILE)
    card = (out / "README.md").read_text()
    assert "split: benchmark" in card and "au_03.mrc" in card


def test_query_checks_names_against_the_folders_own_schema(imported, capsys):
    """Issue #9: `temsynth query` on an imported folder used the simulated-record schema (unknown column
    'source_format'; KeyError 'structure_id' for split == 'benchmark'). It now reads the folder's own."""
    from generators.subsets import query_summary
    from temsynth.cli import main

    out, m, _ = imported
    rows = _tiles(out)
    s = query_summary(out, "split == 'benchmark' and source_format in ('mrc', 'emd-ncem')")
    want = [r for r in rows if r["split"] == "benchmark" and r["source_format"] in ("mrc", "emd-ncem")]
    assert s["records"] == len(want) > 0
    assert s["micrographs"] == len({r["source_file"] for r in want})
    assert s["split"] == {"benchmark": len(want)} and "structures" not in s
    assert sum(s["source_format"].values()) == len(want)
    assert main(["query", str(out), "split == 'benchmark'"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == m["splits"]["benchmark"]
    # a simulated-record column is unknown here, and the error lists this folder's columns
    assert main(["query", str(out), "defocus_nm < 0"]) == 2
    err = capsys.readouterr().err
    assert "unknown column 'defocus_nm'" in err and "source_format" in err and "particle_radius_A" not in err
    # named subsets and subset folders need a generation config: one line naming why, not a KeyError
    before = {f: (out / f).read_bytes() for f in ("README.md", "manifest.json")}
    for extra in (["--save-as", "bench"], ["--out", str(out.parent / "sub")]):
        assert main(["query", str(out), "split == 'benchmark'", *extra]) == 2
        assert "kind: experimental" in capsys.readouterr().err
    assert not (out.parent / "sub").exists()
    assert {f: (out / f).read_bytes() for f in before} == before


def test_rerun_into_the_same_folder_refuses(imported, folder):
    out, _, _ = imported
    with pytest.raises(MicrographError, match="not empty"):
        import_folder(folder, out, target_pixel_size_A=TARGET_A, tile_px=TILE, log=lambda *_: None)


def test_masks_in_their_own_folder_and_a_micrograph_smaller_than_a_tile_refused(tmp_path):
    from PIL import Image

    imgs, masks = tmp_path / "img", tmp_path / "lbl"
    imgs.mkdir(), masks.mkdir()
    for i in range(3):
        img, m = _micrograph(0.5, i)  # 96 px -> 48 px at 1 Å/px
        np.save(imgs / f"s{i}.npy", img)
        Image.fromarray(m * 255).save(masks / f"s{i}.png")
    # Smaller than a 64 px tile: refused (padding it up would make a record of mostly invented pixels).
    with pytest.raises(MicrographError, match=r"s0.npy: 96 x 96 px \(48 x 48 px at the target 1 Å/px\) is smaller "
                       "than one 64-px tile"):
        import_folder(imgs, tmp_path / "small", masks_dir=masks, pixel_size_A=0.5, target_pixel_size_A=1.0,
                      tile_px=TILE, finetune_fraction=0.34, log=lambda *_: None)
    assert not (tmp_path / "small").exists()
    m = import_folder(imgs, tmp_path / "out", masks_dir=masks, pixel_size_A=0.5, target_pixel_size_A=1.0,
                      tile_px=48, finetune_fraction=0.34, log=lambda *_: None)
    assert m["n_records"] == 3 and m["splits"] == {"finetune": 1, "benchmark": 2}
    rows = _tiles(tmp_path / "out")
    assert all(not r["padded"] and r["tile_valid_size_px"] == [48, 48] for r in rows)
    assert all(r["pixel_size_source"] == "command line" and r["source_format"] == "npy" for r in rows)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("name", ["bad.dm4", "bad.dm3", "bad.tif", "bad.mrc", "bad.emd", "bad.png", "bad.npy"])
def test_corrupt_file_names_the_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00\x01not a micrograph" * 7)
    with pytest.raises(MicrographError, match=name) as e:
        read_micrograph(tmp_path / name)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("writer,name", [(w_dm4, "cut.dm4"), (w_dm3, "cut.dm3"), (w_tiff_imagej_nm, "cut.tif"),
                                         (w_mrc, "cut.mrc"), (w_emd_ncempy, "cut.emd")])
def test_truncated_file_names_the_file(tmp_path, writer, name):
    path = tmp_path / name
    writer(path, known(np.float32, (64, 64)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # an interrupted copy
    with pytest.raises(MicrographError, match=name):
        read_micrograph(path)


def test_unknown_extension_missing_file_and_stack(tmp_path):
    import tifffile

    (tmp_path / "x.ser").write_bytes(b"\x00" * 64)
    with pytest.raises(MicrographError, match=r"x\.ser.*supported: .*\.dm4"):
        read_micrograph(tmp_path / "x.ser")
    with pytest.raises(MicrographError, match="gone.tif: no such file"):
        read_micrograph(tmp_path / "gone.tif")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 16, 16), np.float32), photometric="minisblack")
    with pytest.raises(MicrographError, match=r"stack\.tif: holds 5 x 16 x 16, not a 2-D image"):
        read_micrograph(tmp_path / "stack.tif")


def _pair(d, stem, shape=(40, 40), mask_shape=None, px=0.5):
    d.mkdir(exist_ok=True)
    write_dm(d / f"{stem}.dm4", known(np.float32, shape), px / 10)
    np.save(d / f"{stem}_mask.npy", np.ones(mask_shape or shape, np.uint8))


def _import(images, out, **kw):
    kw = {"target_pixel_size_A": 0.5, "tile_px": 16, "log": lambda *_: None, **kw}
    return import_folder(images, out, **kw)


def test_missing_mask_is_an_error_unless_allowed(tmp_path):
    d = tmp_path / "in"
    _pair(d, "good")
    _pair(d, "other")
    write_dm(d / "lonely.dm4", known(), 0.05)
    with pytest.raises(MicrographError, match=r"no mask for 1 micrograph\(s\): lonely\.dm4.*--allow-unlabelled"):
        _import(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    logs = []
    m = _import(d, tmp_path / "out", allow_unlabelled=True, log=logs.append)
    assert m["n_sources"] == 2 and any("lonely.dm4" in line for line in logs)


def test_mask_shape_mismatch_names_both_files(tmp_path):
    _pair(tmp_path / "in", "a", shape=(40, 48), mask_shape=(48, 40))
    with pytest.raises(MicrographError, match=r"a_mask\.npy: mask is 40 x 48 px but a\.dm4 is 48 x 40 px"):
        _import(tmp_path / "in", tmp_path / "out")


def test_no_pixel_size_names_the_file_and_the_option(tmp_path):
    d = tmp_path / "in"
    _pair(d, "calibrated")
    np.save(d / "raw.npy", known())
    np.save(d / "raw_mask.npy", np.ones((40, 56), np.uint8))
    with pytest.raises(MicrographError, match=r"raw\.npy: .*--pixel-size-A"):
        _import(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_errors_are_one_line_with_exit_2(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "raw.npy", known())
    np.save(d / "raw_mask.npy", np.ones((40, 56), np.uint8))
    base = [sys.executable, str(SCRIPT), str(d), "--out", str(tmp_path / "out")]
    for extra, needle in ((["--target-pixel-size-A", "0.5", "--tile-px", "16"], "raw.npy"),
                          (["--target-pixel-size-A", "0.5"], "--tile-px")):
        r = subprocess.run(base + extra, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr and "Traceback" not in r.stderr


def test_cli_success_prints_one_line(tmp_path, capsys):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from import_experimental import main
    finally:
        sys.path.remove(str(SCRIPT.parent))
    _pair(tmp_path / "in", "a")  # 40 px at 0.5 Å -> 20 px at 1 Å -> 2 x 2 tiles of 16 px
    _pair(tmp_path / "in", "b")
    rc = main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--target-pixel-size-A", "1.0",
               "--tile-px", "16", "--material", "Pt"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 1 and "imported 2 micrographs as 8 tiles" in out[0]


def test_score_split_from_reads_the_imported_folder_through_its_manifest(imported, built, tmp_path, monkeypatch):
    """`temsynth score --split-from`: the source files of each split, as the records say, from the shards the
    manifest lists (read once); a folder that is not an import, or not a folder, is one line."""
    import generators.folder as folder_mod
    from training.score import ScoreError, fields_of_split, split_of

    out, manifest, _ = imported
    reads = []
    real = folder_mod.read_manifest_json
    monkeypatch.setattr(folder_mod, "read_manifest_json", lambda p: reads.append(p) or real(p))
    splits = split_of(out)
    assert len(reads) == 1
    assert {r["source_file"]: r["split"] for r in _tiles(out)} == splits
    assert set(splits) == {s["file"] for s in manifest["sources"]} and set(splits.values()) <= {"finetune",
                                                                                              "benchmark"}
    assert fields_of_split(out, "benchmark") == {f for f, s in splits.items() if s == "benchmark"}
    with pytest.raises(ScoreError, match="a generated folder, not an imported one"):
        split_of(built)
    with pytest.raises(ScoreError, match="--split-from .*nowhere: no such dataset folder"):
        split_of(tmp_path / "nowhere")


def test_load_micrograph_reads_the_recorded_beam_energy_with_the_image(tmp_path):
    # one read gives image, pixel size and the voltage a DM file records; formats without one give None
    from generators.micrographs import load_micrograph

    img = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    write_dm(tmp_path / "a.dm4", img, 0.0625, "nm", voltage_V=80e3)
    write_dm(tmp_path / "b.dm4", img, 0.0625, "nm")
    a, b = load_micrograph(tmp_path / "a.dm4"), load_micrograph(tmp_path / "b.dm4")
    assert a.energy_keV == pytest.approx(80.0) and b.energy_keV is None
    assert a.pixel_size_A == pytest.approx(0.625) and np.array_equal(a.image, img) and a.format == "dm4"
    np.save(tmp_path / "c.npy", img)
    assert load_micrograph(tmp_path / "c.npy").energy_keV is None
