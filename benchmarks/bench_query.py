"""Query speed: 1,000,000 synthetic metadata records (realistic columns, no images), vectorised query vs
`Dataset.filter` with a per-row Python lambda, both timed in one run; plus a query on a dataset folder.

    python benchmarks/bench_query.py [--rows 1000000] [--dataset tem_au_np]
"""
import argparse
import time

import numpy as np
import pyarrow as pa

QUERY = "any(particle_defect_type in ('twin', 'mixed')) and any(particle_radius_A > 20) and -20 <= defocus_nm <= 20"


def synthetic(n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({
        "record_id": pa.array([f"s{i // 11:06d}-c{i % 11:03d}" for i in range(n)]),
        # per-particle lists of 0-3 particles, as in scene records
        "particle_defect_type": pa.ListArray.from_arrays(
            offsets := np.r_[0, np.cumsum(counts := rng.integers(0, 4, n))],
                                                         rng.choice(["none", "twin", "multiple_twins",
                                                                     "stacking_fault", "mixed"], offsets[-1])),
        "particle_radius_A": pa.ListArray.from_arrays(offsets, rng.uniform(7.5, 50, offsets[-1])),
        "n_particles": pa.array(counts, pa.int32()), "defocus_nm": rng.uniform(-50, 50, n),
        "dose_e_per_A2": rng.uniform(100, 1200, n), "cs_mm": np.full(n, -0.0019),
        "n_defects": pa.array(rng.integers(0, 4, n), pa.int32()),
        "particle_center_px": pa.array(list(rng.uniform(0, 512, (n, 2))), pa.list_(pa.float64(), 2)),
        "substrate_thickness_A": rng.uniform(20, 80, n),
    })


def replicate(src, n):
    """A folder of n records made by tiling src's records with fresh ids (benchmark-only data)."""
    import tempfile
    from pathlib import Path

    import pyarrow.dataset as pads

    from generators.run import config_of
    from generators.writers import write_card, write_parquet

    base = pads.dataset(Path(src) / "data", format="parquet").to_table()
    reps = -(-n // len(base))
    table = pa.concat_tables([base] * reps).slice(0, n)
    ids = pa.array([f"s{i // 4:06d}-c{i % 4:03d}" for i in range(n)])
    table = table.set_column(table.schema.get_field_index("record_id"), "record_id", ids)
    table = table.set_column(table.schema.get_field_index("split"), "split", pa.array(["train"] * n))
    out = Path(tempfile.mkdtemp()) / "replicated"
    shards = -(-n // 1000)
    for k in range(shards):
        write_parquet(table.slice(k * 1000, 1000), out / f"data/train-{k:05d}-of-{shards:05d}.parquet")
    write_card(out, config_of(src), {"train": n})
    return out


def main():
    from datasets import Dataset, load_dataset

    from generators.query import select

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dataset", default=None, help="a built folder, e.g. tem_au_np")
    ap.add_argument("--replicate", type=int, default=10_000,
                    help="tile the folder's records (images included) to this many rows in a temporary folder")
    args = ap.parse_args()
    ds = Dataset(synthetic(args.rows))
    t = time.perf_counter()
    fast = select(ds, QUERY)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow = ds.filter(lambda r: any(d in ("twin", "mixed") for d in r["particle_defect_type"])
                     and any(x > 20 for x in r["particle_radius_A"]) and -20 <= r["defocus_nm"] <= 20)
    t_slow = time.perf_counter() - t
    assert len(fast) == len(slow)
    print(f"{args.rows} records: query {t_fast:.3f} s, per-row lambda filter {t_slow:.2f} s -> "
          f"{t_slow / t_fast:.0f}x faster; {len(fast)} selected")
    if args.dataset:
        folder = replicate(args.dataset, args.replicate) if args.replicate else args.dataset
        t = time.perf_counter()
        d = load_dataset(str(folder))
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        sub = select(d, QUERY.replace("> 20", "> 12"))  # the demo's radii stop at 18 Å
        t_q = time.perf_counter() - t
        print(f"{folder}: {sum(len(x) for x in d.values())} records with images: query {t_q:.3f} s "
              f"(load {t_load:.1f} s), {sum(len(x) for x in sub.values())} selected")


if __name__ == "__main__":
    main()
