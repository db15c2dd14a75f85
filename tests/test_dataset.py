"""The built folder: load_dataset, WebDataset shards, manifest checksums, masks, dose, regeneration."""
import json

import numpy as np
import pyarrow.dataset as pads
import pytest

from generators.info import describe, verify
from generators.run import read_record, regenerate_record


def test_load_dataset_splits_and_types(built, tiny_cfg):
    from datasets import Array2D, load_dataset

    ds = load_dataset(str(built))
    assert set(ds) == {"train", "validation", "test"}
    n = tiny_cfg.n_structures * tiny_cfg.conditions_per_structure
    assert sum(len(d) for d in ds.values()) == n
    feats = ds["train"].features
    assert feats["image"] == Array2D((128, 128), "float32") and feats["mask"] == Array2D((128, 128), "uint8")
    assert feats["defocus_nm"].dtype == "float64" and feats["particle_defect_type"].feature.dtype == "string"
    assert feats["instance_mask"] == Array2D((128, 128), "uint8")
    row = ds["train"].with_format("numpy")[0]
    assert row["image"].dtype == np.float32 and row["image"].shape == (128, 128)
    # no structure in two splits; every record once
    sids = {s: set(d["structure_id"]) for s, d in ds.items()}
    assert not (sids["train"] & sids["validation"] or sids["train"] & sids["test"] or sids["validation"] & sids["test"])
    ids = [r for d in ds.values() for r in d["record_id"]]
    assert len(ids) == len(set(ids)) == n
    for split, d in ds.items():
        assert set(d["split"]) == {split}


def test_shard_layout_and_manifest(built, tiny_cfg):
    m = json.loads((built / "manifest.json").read_text())
    assert m["config_sha256"] == tiny_cfg.sha256() and m["versions"]["abtem"] and m["versions"]["czone"]
    names = sorted(p.name for p in (built / "data").iterdir())
    assert all(n.endswith(".parquet") for n in names)
    assert "train-00000-of-00002.parquet" in names  # 4 structures x 2 conditions / 5 per shard
    assert verify(built) == []
    assert not (built / "_work").exists()
    # a flipped byte is caught
    shard = built / m["shards"][0]["path"]
    raw = bytearray(shard.read_bytes())
    copy = raw.copy()
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    try:
        problems = verify(built)
        assert len(problems) == 1 and m["shards"][0]["path"] in problems[0] and "SHA-256" in problems[0]
    finally:
        shard.write_bytes(bytes(copy))
    assert "checksums OK" in describe(built, verify=True)


def test_webdataset_shards_hold_the_same_records(built):
    import webdataset as wds

    urls = sorted(str(p) for p in (built / "wds").glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("l8"))
    assert len(samples) == 16
    s = samples[0]
    assert "." not in s["__key__"]
    meta = s["json"]
    stored = read_record(built, meta["record_id"])
    assert np.array_equal(s["image.npy"], stored["image"])
    mask = np.asarray(s["mask.png"])
    mask = mask[..., 0] if mask.ndim == 3 else mask
    assert mask.dtype == np.uint8 and np.array_equal(mask, stored["mask"])
    assert meta["defocus_nm"] == stored["defocus_nm"] and meta["structure_id"] == stored["structure_id"]


def _meta(built):
    """Rows of the tiny set (one particle per field), with that particle's values unpacked."""
    rows = pads.dataset(built / "data", format="parquet").to_table(
        columns=["record_id", "particle_radius_A", "particle_center_px", "pixel_size_A", "dose_e_per_A2",
                 "mask_area_px", "structure_id", "n_particles"]).to_pylist()
    for m in rows:
        assert m["n_particles"] == 1
        m["particle_radius_A"], m["particle_center_px"] = m["particle_radius_A"][0], m["particle_center_px"][0]
    return rows


def test_mask_geometry_matches_the_particle(built):
    for m in _meta(built):
        rec = read_record(built, m["record_id"])
        mask = rec["mask"].astype(bool)
        p = m["pixel_size_A"]
        r_mask = np.sqrt(mask.sum() / np.pi) * p
        # phase > pi/12 reaches about one atomic radius less than the outermost atom centres
        assert abs(r_mask - m["particle_radius_A"]) < 1.5, (m["record_id"], r_mask, m["particle_radius_A"])
        yy, xx = np.nonzero(mask)
        cx, cy = m["particle_center_px"]
        assert abs(xx.mean() - cx) < 1.2 and abs(yy.mean() - cy) < 1.2, "centroid at particle_center_px (x, y)"
        assert m["mask_area_px"] == mask.sum()
        assert np.array_equal(rec["instance_mask"], mask.astype(np.uint8)), "one particle: label 1 is the mask"
        # one convex-ish blob: the mask fills its own hull almost entirely
        from scipy import ndimage
        assert ndimage.label(mask)[1] == 1


def test_image_counts_follow_the_dose(built):
    for m in _meta(built):
        img = read_record(built, m["record_id"])["image"]
        expected = m["dose_e_per_A2"] * m["pixel_size_A"] ** 2
        # flux is conserved by the multislice; the objective band limit and backscatter-free model lose < 3 %
        assert img.mean() == pytest.approx(expected, rel=0.04)
        assert np.all(img >= 0) and np.all(img == np.round(img))


def test_regenerate_a_record_bit_for_bit(built):
    ids = sorted(m["record_id"] for m in _meta(built))
    for rid in (ids[0], ids[-1]):
        r = regenerate_record(built, rid)
        assert r["image_identical"] and r["mask_identical"], r


def test_structure_files(built):
    from ase.io import read

    for sid in {m["structure_id"] for m in _meta(built)}:
        atoms = read(built / "structures" / f"{sid}.extxyz")
        part = atoms.arrays["is_particle"]
        assert part.any() and (~part).any()
        assert set(atoms.numbers[part]) == {79} and set(atoms.numbers[~part]) == {6}


def test_every_shard_column_explains_itself(built, tmp_path):
    """Unit and description in each column's Arrow field metadata, from the one record schema: what
    `pq.read_schema` (and so datasets' Parquet builder) sees, in the folder's shards and in a subset's."""
    import pyarrow.parquet as pq

    from generators.records import METADATA_COLUMNS
    from generators.subsets import write_subset

    write_subset(built, "n_particles >= 1", tmp_path / "sub")
    for shard in [next((built / "data").glob("*.parquet")), next((tmp_path / "sub" / "data").glob("*.parquet"))]:
        schema = pq.read_schema(shard)
        for field in schema:
            assert field.metadata and field.metadata[b"description"], f"{shard.name}: {field.name} has no description"
        meta = {f.name: {k.decode(): v.decode() for k, v in f.metadata.items()} for f in schema}
        assert meta["defocus_nm"] == {"unit": "nm", "description": "C10; negative = underfocus"}
        assert meta["dose_e_per_A2"]["unit"] == "e⁻/Å²" and meta["particle_radius_A"]["unit"] == "Å"
        assert meta["n_particles"]["unit"] == "" and meta["image"]["unit"] == "counts"
        assert {c.name: c.description for c in METADATA_COLUMNS} == \
            {n: m["description"] for n, m in meta.items() if n in {c.name for c in METADATA_COLUMNS}}
