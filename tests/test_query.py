"""Metadata queries: equal to a plain-Python reference, refuse code and bad input, named configs, subsets, trace."""
import json

import numpy as np
import pyarrow as pa
import pytest

from generators.query import Query, QueryError, select
from generators.records import arrow_schema

QUERIES = [
    ("defect_type in ('twin', 'mixed') and particle_radius_A > 20 and -20 <= defocus_nm <= 20",
     lambda r: r["defect_type"] in ("twin", "mixed") and r["particle_radius_A"] > 20 and -20 <= r["defocus_nm"] <= 20),
    ("not (dose_e_per_A2 >= 200) or particle_center_px[0] < 64",
     lambda r: not (r["dose_e_per_A2"] >= 200) or r["particle_center_px"][0] < 64),
    ("defect_type not in ('none',) and n_defects != 2", lambda r: r["defect_type"] != "none" and r["n_defects"] != 2),
    ("10 < particle_radius_A", lambda r: r["particle_radius_A"] > 10),
    ("defocus_nm > 1e9", lambda r: False),  # empty result
    ("defocus_nm != 3 and not defocus_nm < -1000", lambda r: r["defocus_nm"] != 3 and not r["defocus_nm"] < -1000),
]


def random_meta(n, seed=0):
    rng = np.random.default_rng(seed)
    defocus = rng.uniform(-50, 50, n)
    defocus[rng.random(n) < 0.05] = np.nan  # NaN must behave as in Python: every comparison but != is False
    return pa.table({
        "defect_type": pa.array(rng.choice(["none", "twin", "multiple_twins", "stacking_fault", "mixed"], n)),
        "particle_radius_A": rng.uniform(5, 50, n), "defocus_nm": defocus,
        "dose_e_per_A2": rng.uniform(10, 1000, n), "n_defects": pa.array(rng.integers(0, 4, n), pa.int32()),
        "particle_center_px": pa.array(list(rng.uniform(0, 128, (n, 2))), pa.list_(pa.float64(), 2)),
    })


@pytest.mark.parametrize("text,ref", QUERIES)
def test_query_equals_python_reference(text, ref):
    t = random_meta(5000)
    rows = t.to_pylist()
    want = [i for i, r in enumerate(rows) if ref(r)]
    q = Query(text, t.schema)
    got = np.nonzero(np.asarray(q.mask(t)))[0].tolist()
    assert got == want
    assert [i for i, r in enumerate(rows) if q.match(r)] == want  # the row-wise path (WebDataset) agrees
    if q.dnf is not None:  # and the Parquet DNF form
        import pyarrow.parquet as pq

        assert len(t.filter(pq.filters_to_expression(q.dnf))) == len(want)


@pytest.mark.parametrize("text,needle", [
    ("__import__('os').system('echo hacked')", "unsupported expression"),
    ("defect_typ == 'twin'", "unknown column 'defect_typ'"),
    ("dose_e_per_A2 > 'high'", "compare it with a number"),
    ("detector_type == 3", "quote the value"),
    ("defocus_nm >", "syntax error"),
    ("image > 3", "holds pixels"),
    ("crop_offset_px > 3", "is a list"),
    ("crop_offset_px[5] > 3", "out of range"),
    ("defocus_nm.real > 0", "compare a column with a literal"),
    ("[x for x in ()]", "unsupported expression"),
])
def test_bad_queries_are_refused_with_the_columns_listed(text, needle):
    with pytest.raises(QueryError) as err:
        Query(text, arrow_schema())
    assert needle in str(err.value) and "columns: record_id" in str(err.value)


def test_select_on_load_dataset_is_batched_and_skips_images(built):
    from datasets import load_dataset

    ds = load_dataset(str(built), split="train")
    text = "any(particle_defect_type in ('twin', 'mixed', 'none')) and dose_e_per_A2 > 500"
    sub = select(ds, text)
    ref = [r for r in ds.select_columns(["record_id", "particle_defect_type", "dose_e_per_A2"])
           if any(d in ("twin", "mixed", "none") for d in r["particle_defect_type"]) and r["dose_e_per_A2"] > 500]
    assert sorted(sub["record_id"]) == sorted(r["record_id"] for r in ref)
    assert sub.features == ds.features
    streamed = select(load_dataset(str(built), split="train", streaming=True), text)
    assert sorted(r["record_id"] for r in streamed) == sorted(sub["record_id"])


def test_named_subset_loads_and_card_names_the_query(built, tmp_path):
    import shutil

    from datasets import load_dataset

    from generators.subsets import save_named_subset, write_subset

    work = tmp_path / "ds"
    shutil.copytree(built, work)
    text = "n_particles >= 1 and dose_e_per_A2 < 650"
    save_named_subset(work, "defected_low_dose", text)
    sub = load_dataset(str(work), "defected_low_dose")
    full = load_dataset(str(work))
    for split, d in sub.items():
        ref = select(full[split], text)
        assert sorted(d["record_id"]) == sorted(ref["record_id"]) and len(d) > 0
    assert text in (work / "README.md").read_text()
    out = tmp_path / "subset"
    m = write_subset(work, text, out)
    assert m["parent"]["query"] == text and len(m["parent"]["fingerprint"]) == 64
    loaded = load_dataset(str(out))
    assert sum(len(d) for d in loaded.values()) == m["n_records"] == sum(len(d) for d in sub.values())
    assert text in (out / "README.md").read_text()


def test_webdataset_stream_filter(built):
    import webdataset as wds

    from generators.query import wds_filter

    urls = sorted(str(p) for p in (built / "wds").glob("*.tar"))
    keep = wds_filter("dose_e_per_A2 > 500", arrow_schema())
    got = [json.loads(s["json"])["dose_e_per_A2"] for s in wds.WebDataset(urls, shardshuffle=False).select(keep)]
    allv = [json.loads(s["json"])["dose_e_per_A2"] for s in wds.WebDataset(urls, shardshuffle=False)]
    assert sorted(got) == sorted(v for v in allv if v > 500) and 0 < len(got) < len(allv)


def test_trace_shows_every_stage(built):
    from generators.subsets import trace

    rid = "s000001-c001"
    t = trace(built, rid)
    assert set(t["stages"]) == {"structure", "simulation", "imaging", "mask"}
    assert t["record"]["record_id"] == rid and t["structure_file"].endswith("s000001.extxyz")
    assert {"root", "structure", "czone", "frozen_phonons", "imaging_condition", "noise"} <= set(t["seeds"])
    assert t["versions"]["abtem"] and t["config_sha256"]
    from generators.records import METADATA_NAMES
    per_particle = {n for n in METADATA_NAMES if n.startswith("particle_")}
    assert set(METADATA_NAMES) - per_particle <= set(t["record"])
    assert len(t["particles"]) == t["record"]["n_particles"] == 1
    assert {n.removeprefix("particle_") for n in per_particle} == set(t["particles"][0])
    assert t["seeds"]["czone"] == [t["particles"][0]["czone_seed"]]
