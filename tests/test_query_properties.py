"""One meaning per query: random valid queries over the real schema give the same rows on every evaluation path.

Paths: the Arrow mask (`Query.mask`, `select_table`), the per-row matcher (`Query.match`), the Arrow `Expression`
pushed into a Parquet scan, Parquet DNF filters (`pq.read_table(filters=...)`, what named subsets store),
`wds_filter` on WebDataset json and `select` on a `datasets.Dataset`, all against a plain-Python reference that
evaluates the generated tree directly (a comparison with a null cell is False; `not` flips it).
"""
import json
import math
import operator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (after importorskip: skipped without hypothesis)
from hypothesis import strategies as st  # noqa: E402  (after importorskip: skipped without hypothesis)

from generators import micrographs, records  # noqa: E402  (after importorskip: skipped without hypothesis)
from generators.query import Query, QueryError, select, select_table, wds_filter  # noqa: E402  (after importorskip: skipped without hypothesis)

# Real columns of every kind: text, int32, int64, float64, fixed-size int lists, booleans, and per-particle
# (variable-length) lists of floats, text and booleans, queried through any(...) / all(...).
_REAL = {c.name: c for c in records.METADATA_COLUMNS + micrographs.COLUMNS}
NAMES = ["record_id", "detector_type", "n_particles", "image_size_px", "seed", "defocus_nm", "substrate_thickness_A",
         "crop_offset_px", "padded", "particle_radius_A", "particle_defect_type", "particle_cut_by_border"]
SCHEMA = pa.schema([pa.field(n, _REAL[n].arrow) for n in NAMES])
QUERYABLE = [n for n in NAMES if n != "record_id"]

STRINGS = ["none", "twin", "mixed", "", "Twin", "é", "zz"]
INTS = [-3, -1, 0, 1, 2, 3, 7, 2 ** 31 - 1, -2 ** 31, 2 ** 53 + 1, 2 ** 63 - 1, -2 ** 63]
FLOATS = [0.0, -0.0, 0.5, -2.5, 2.5, 1.0, 3.0, 1e-300, 1e300, 2.0 ** 53, math.inf, -math.inf]


def _int_bounds(t):
    info = np.iinfo(t.to_pandas_dtype())
    return int(info.min), int(info.max)


def cell(t):
    """A strategy for one cell of Arrow type t (nulls included)."""
    if pa.types.is_fixed_size_list(t):
        inner = cell(t.value_type)
        return st.one_of(st.none(), st.lists(inner, min_size=t.list_size, max_size=t.list_size))
    if pa.types.is_list(t):
        return st.one_of(st.none(), st.lists(cell(t.value_type), min_size=0, max_size=4))
    if pa.types.is_string(t):
        v = st.one_of(st.sampled_from(STRINGS), st.text(max_size=3))
    elif pa.types.is_boolean(t):
        v = st.booleans()
    elif pa.types.is_integer(t):
        lo, hi = _int_bounds(t)
        v = st.one_of(st.sampled_from([i for i in INTS if lo <= i <= hi]), st.integers(lo, hi))
    else:
        v = st.one_of(st.sampled_from(FLOATS + [math.nan]), st.floats(allow_nan=True, allow_infinity=True))
    return st.one_of(st.none(), v, v, v)


@st.composite
def tables(draw):
    n = draw(st.integers(1, 12))
    cols = {"record_id": [f"r{i:03d}" for i in range(n)]}
    for name in NAMES[1:]:
        cols[name] = draw(st.lists(cell(SCHEMA.field(name).type), min_size=n, max_size=n))
    return pa.table({k: pa.array(v, type=SCHEMA.field(k).type) for k, v in cols.items()}, schema=SCHEMA)


def literal(t):
    """(python value, source text) of a literal valid for a column of type t."""
    if pa.types.is_string(t):
        s = st.one_of(st.sampled_from(STRINGS), st.text(max_size=3))
        return s.map(lambda v: (v, repr(v)))
    if pa.types.is_boolean(t):
        return st.booleans().map(lambda v: (v, repr(v)))
    ints = st.one_of(st.sampled_from(INTS), st.integers(-(2 ** 63), 2 ** 63 - 1))
    if pa.types.is_floating(t):  # larger integers must be written as floats there (a one-line error says so)
        ints = ints.filter(lambda v: abs(v) <= 2 ** 53)
    floats = st.one_of(st.sampled_from(FLOATS), st.floats(allow_nan=False, allow_infinity=True))
    return st.one_of(ints.map(lambda v: (v, str(v))),
                     floats.map(lambda v: (v, "1e999" if v == math.inf else "-1e999" if v == -math.inf else repr(v))))


OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


@st.composite
def comparison(draw):
    """(text, reference predicate) of one comparison, `in`/`not in` or chained comparison."""
    name = draw(st.sampled_from(QUERYABLE))
    t = SCHEMA.field(name).type
    ref, idx = name, None
    if pa.types.is_fixed_size_list(t):
        idx = draw(st.integers(0, t.list_size - 1))
        ref, t = f"{name}[{idx}]", t.value_type
    if pa.types.is_list(t):  # a condition on the elements, under any(...) or all(...)
        quant = draw(st.sampled_from(["any", "all"]))
        text, fn = draw(_element_comparison(name, t.value_type))
        agg = any if quant == "any" else all
        return f"{quant}({text})", lambda r: r[name] is not None and agg(fn({name: v}) for v in r[name])
    return draw(_element_comparison(name, t, ref, idx))


@st.composite
def _element_comparison(draw, name, t, ref=None, idx=None):
    ref = ref or name

    def get(row):
        v = row[name]
        return v[idx] if v is not None and idx is not None else v

    kind = draw(st.sampled_from(["cmp", "cmp", "rev", "in", "notin", "chain"]))
    ops = ["==", "!="] if pa.types.is_boolean(t) else list(OPS)
    if kind in ("in", "notin"):
        lits = draw(st.lists(literal(t), min_size=1, max_size=4))
        vals = tuple(v for v, _ in lits)
        text = f"{ref} {'in' if kind == 'in' else 'not in'} ({', '.join(s for _, s in lits)},)"
        return text, lambda r: (v := get(r)) is not None and ((v in vals) == (kind == "in"))
    if kind == "chain" and not pa.types.is_boolean(t):
        (a, sa), (b, sb) = draw(literal(t)), draw(literal(t))
        o1, o2 = draw(st.sampled_from(list(OPS))), draw(st.sampled_from(list(OPS)))
        return f"{sa} {o1} {ref} {o2} {sb}", lambda r: (v := get(r)) is not None and OPS[o1](a, v) and OPS[o2](v, b)
    op = draw(st.sampled_from(ops))
    lit, s = draw(literal(t))
    if kind == "rev":  # literal OP column
        return f"{s} {op} {ref}", lambda r: (v := get(r)) is not None and OPS[op](lit, v)
    return f"{ref} {op} {s}", lambda r: (v := get(r)) is not None and OPS[op](v, lit)


def _combine(children):
    def both(parts, kind):
        texts = [f"({t})" for t, _ in parts]
        fns = [f for _, f in parts]
        if kind == "and":
            return " and ".join(texts), lambda r: all(f(r) for f in fns)
        return " or ".join(texts), lambda r: any(f(r) for f in fns)

    return st.one_of(
        children.map(lambda c: (f"not ({c[0]})", lambda r, f=c[1]: not f(r))),
        st.lists(children, min_size=2, max_size=3).map(lambda ps: both(ps, "and")),
        st.lists(children, min_size=2, max_size=3).map(lambda ps: both(ps, "or")))


queries = st.recursive(comparison(), _combine, max_leaves=6)


def _null_columns(table):
    return [n for n in table.column_names if table[n].null_count or
            (pa.types.is_fixed_size_list(table[n].type) and pc_flat_nulls(table[n]))]


def pc_flat_nulls(col):
    return col.combine_chunks().flatten().null_count > 0


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(table=tables(), query=queries)
def test_every_path_returns_the_reference_rows(tmp_path_factory, table, query):
    import datasets

    text, ref = query
    rows = table.to_pylist()
    want = sorted(r["record_id"] for r in rows if ref(r))
    q = Query(text, SCHEMA)

    assert sorted(table.filter(q.mask(table))["record_id"].to_pylist()) == want, "Arrow mask"
    assert sorted(select_table(table, text)["record_id"].to_pylist()) == want, "select_table"
    assert sorted(r["record_id"] for r in rows if q.match(r)) == want, "per-row match"
    keep = wds_filter(text, SCHEMA)
    assert sorted(r["record_id"] for r in rows if keep({"json": json.dumps(r).encode()})) == want, "wds_filter"

    path = tmp_path_factory.mktemp("q") / "t.parquet"
    pq.write_table(table, path, row_group_size=4)
    got = q.table(pads.dataset(path, format="parquet"))
    assert sorted(got["record_id"].to_pylist()) == want, "Arrow Expression (or two-pass scan) over Parquet"
    if not q.quantified:
        got = pads.dataset(path, format="parquet").to_table(filter=q.expression)
        assert sorted(got["record_id"].to_pylist()) == want, "Arrow Expression in a Parquet scan"
    dnf = q.dnf_for(_null_columns(table))
    if dnf is not None:
        got = pq.read_table(path, filters=dnf) if dnf else pq.read_table(path)
        assert sorted(got["record_id"].to_pylist()) == want, f"Parquet filters {dnf}"

    ds = datasets.Dataset(table)
    assert sorted(select(ds, text)["record_id"]) == want, "select on a datasets.Dataset"


@pytest.mark.parametrize("text,needle", [
    ("not " * 1000 + "n_particles < 2", "nested"),
    ("(" * 300 + "n_particles < 2" + ")" * 300, "nested"),
    ("n_particles < " + "9" * 24, "out of range"),
    ("defocus_nm == True", "compare it with a number"),
    ("crop_offset_px[True] > 1", "non-negative integer"),
    ("padded < True", "use == or !="),
    ("padded == 1", "True or False"),
    ("n_particles == 1 or " * 3000 + "n_particles == 2", "characters long"),
    ("particle_radius_A > 3", "any(...) or all(...)"),
    ("any(particle_radius_A > 3 and particle_defect_type == 'twin')", "one list column"),
    ("any(any(particle_radius_A > 3))", "cannot be nested"),
    ("any(defocus_nm > 3)", "needs a per-particle list column"),
    ("   ", "empty query"),
])
def test_crafted_queries_get_one_line_errors(text, needle):
    with pytest.raises(QueryError) as err:
        Query(text, SCHEMA)
    assert needle in str(err.value).splitlines()[0]


def test_decimal_literals_on_integer_columns_mean_what_they_say():
    t = pa.table({"n_defects": pa.array([0, 1, 2, 3, 4], pa.int32()),
                  "image_size_px": pa.array([256] * 5, pa.int32())})
    for text, n in [("n_defects < 2.5", 3), ("n_defects <= 2.5", 3), ("n_defects > 2.5", 2), ("n_defects >= 2.5", 2),
                    ("n_defects == 2.0", 1), ("image_size_px == 256.9", 0), ("image_size_px != 256.9", 5),
                    ("n_defects in (2.5, 3.0)", 1), ("n_defects < 1e999", 5), ("n_defects < 3000000000", 5)]:
        assert len(select_table(t, text)) == n, text


@pytest.mark.parametrize("stored", [0.0, -0.0])
@pytest.mark.parametrize("text", ["substrate_thickness_A in (0,)", "substrate_thickness_A in (-0.0, 5)",
                                  "not substrate_thickness_A in (0.0,)"])
def test_signed_zeros_meet_in_every_path(tmp_path, stored, text):
    """Python's 0.0 == -0.0; Arrow's is_in hashed them apart and pyarrow pruned a Parquet row group whose
    statistics are [-0.0, 0.0] from is_in([0.0]) (found by the property test above)."""
    n = 9
    cols = {f.name: pa.nulls(n, f.type) for f in SCHEMA}
    cols["record_id"] = pa.array([f"r{i:03d}" for i in range(n)])
    cols["substrate_thickness_A"] = pa.array([None] * 4 + [7.0] * 4 + [stored], pa.float64())
    table = pa.table(cols, schema=SCHEMA)
    # under `not`, a null cell's comparison (False) flips to True, as in Python
    want = ["r008"] if not text.startswith("not") else [f"r{i:03d}" for i in range(8)]
    q = Query(text, SCHEMA)
    assert sorted(table.filter(q.mask(table))["record_id"].to_pylist()) == want
    assert sorted(r["record_id"] for r in table.to_pylist() if q.match(r)) == want
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=4)
    assert sorted(q.table(pads.dataset(path, format="parquet"))["record_id"].to_pylist()) == want
    dnf = q.dnf_for(_null_columns(table))
    if dnf:
        assert sorted(pq.read_table(path, filters=dnf)["record_id"].to_pylist()) == want
