"""Metadata queries: a small, safe expression language compiled to Arrow compute (and to Parquet DNF filters).

    n_particles >= 2 and any(particle_defect_type in ('twin', 'mixed')) and -20 <= defocus_nm <= 20
    n_particles == 0 or all(particle_radius_A > 20)
    not (dose_e_per_A2 >= 200) or crop_offset_px[0] < 64

Grammar: comparisons (==, !=, <, <=, >, >=, chained), `in` / `not in` with a tuple or list of literals, `and`,
`or`, `not`, parentheses, literals (numbers, quoted strings, True/False), column names, `column[i]` for
fixed-size list columns, and `any(...)` / `all(...)` of a condition on the elements of one per-particle list
column (`any(8 < particle_radius_A < 15)`; all() of an empty list is true, any() false, as in Python). The text is
parsed with Python's `ast` module and translated node by node; nothing is ever evaluated, so a query cannot run code.

Over 400 lines: one language, and the four ways it is evaluated (mask, row, Expression, DNF) must keep one
meaning; `tests/test_query_properties.py` compares them.
"""
from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from .errors import TemsynthError

PIXEL_COLUMNS = ("image", "mask", "instance_mask", "preview")  # records.PIXEL_COLUMNS (query imports no records)


class QueryError(TemsynthError, ValueError):
    pass


MAX_QUERY_CHARS = 10_000
MAX_DEPTH = 64  # nesting of and / or / not / parentheses; deeper queries are refused, not recursed into
INT64 = (-(2 ** 63), 2 ** 63 - 1)
FLOAT_EXACT_INT = 2 ** 53  # larger integers are not all representable as float64


_CMP = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_PY = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_NEG = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<", "in": "not in", "not in": "in"}


@dataclass(frozen=True)
class Cmp:
    column: str
    index: int | None
    op: str  # == != < <= > >= in, not in
    value: Any


@dataclass(frozen=True)
class Quant:
    """any(...) / all(...): the condition `part`, written on one list column's elements, over each row's list."""
    kind: str  # any, all
    column: str
    part: Any


@dataclass(frozen=True)
class And:
    parts: tuple


@dataclass(frozen=True)
class Or:
    parts: tuple


@dataclass(frozen=True)
class Not:
    part: Any


class Query:
    """A parsed, schema-checked query."""

    def __init__(self, text: str, schema: pa.Schema):
        self.text = text
        self.schema = schema
        self._quant = None  # [kind, list column] while parsing inside any(...) / all(...)
        if not isinstance(text, str) or not text.strip():
            self._fail("empty query: write e.g. defect_type == 'twin'")
        if len(text) > MAX_QUERY_CHARS:
            self._fail(f"query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as err:
            self._fail(f"query syntax error at column {err.offset}: {err.msg}")
        except (RecursionError, MemoryError):
            self._fail(f"query nested too deeply (the limit is {MAX_DEPTH} levels); simplify it")
        depth = _depth(tree.body)
        if depth > MAX_DEPTH:
            self._fail(f"query nested {depth} levels deep; the limit is {MAX_DEPTH}: simplify it "
                       "(e.g. `not not x` is `x`)")
        self.tree = self._node(tree.body)
        self.columns = sorted({c.column for c in _leaves(self.tree)})
        self.quantified = any(True for _ in _quants(self.tree))

    # ------------------------------------------------------------ parsing
    def _fail(self, msg: str):
        cols = ", ".join(n for n in self.schema.names if n not in PIXEL_COLUMNS)
        text = self.text if isinstance(self.text, str) else repr(self.text)
        text = text if len(text) <= 200 else text[:200] + f"… ({len(text)} characters)"
        raise QueryError(f"{msg}\n  query: {text}\n  columns: {cols}")

    def _column(self, node) -> tuple[str, int | None]:
        if isinstance(node, ast.Name):
            name, index = node.id, None
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and isinstance(node.slice, ast.Constant) and type(node.slice.value) is int:
            name, index = node.value.id, node.slice.value
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            self._fail(f"index a list column with a non-negative integer, e.g. {node.value.id}[0], "
                       f"not {ast.unparse(node)!r}")
        else:
            return None
        if name not in self.schema.names:
            self._fail(f"unknown column {name!r}")
        if name in PIXEL_COLUMNS:
            self._fail(f"column {name!r} holds pixels; queries select on metadata only")
        t = self.schema.field(name).type
        if self._quant is not None and index is None:
            if self._quant[1] is None and pa.types.is_list(t):
                self._quant[1] = name
            if self._quant[1] is None:
                self._fail(f"{self._quant[0]}(...) needs a per-particle list column inside, e.g. "
                           f"{self._quant[0]}(particle_radius_A < 15); {name!r} holds one value per record")
            if name != self._quant[1]:
                self._fail(f"{self._quant[0]}(...) takes the elements of one list column, e.g. "
                           f"{self._quant[0]}(particle_radius_A < 15); {name!r} is not it")
            return name, None
        if index is not None and not (pa.types.is_list(t) or pa.types.is_fixed_size_list(t)):
            self._fail(f"column {name!r} is not a list; drop the [{index}]")
        if index is None and pa.types.is_list(t):
            self._fail(f"column {name!r} holds one value per particle; ask about its elements with any(...) or "
                       f"all(...), e.g. any({name} > 10)")
        if index is None and pa.types.is_fixed_size_list(t):
            self._fail(f"column {name!r} is a list; compare one element, e.g. {name}[0]")
        if index is not None and pa.types.is_fixed_size_list(t) and not 0 <= index < t.list_size:
            self._fail(f"{name}[{index}] is out of range: {name} has {t.list_size} elements")
        return name, index

    def _literal(self, node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            return self._in_range(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
                and isinstance(node.operand.value, (int, float)) and not isinstance(node.operand.value, bool):
            return self._in_range(-node.operand.value)
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self._literal(e) for e in node.elts)
        self._fail(f"expected a literal (number, 'string', True/False or a tuple of them), got {ast.unparse(node)!r}")

    def _in_range(self, v):
        if type(v) is int and not INT64[0] <= v <= INT64[1]:
            self._fail(f"integer literal with {len(str(abs(v)))} digits is out of range (64-bit integers end at "
                       f"{INT64[1]}); write it as a float, e.g. {float(v):.3g}")
        return v

    def _check_type(self, name, index, value):
        t = self._type(name, index)
        values = value if isinstance(value, tuple) else (value,)
        is_str = pa.types.is_string(t) or pa.types.is_large_string(t)
        is_bool = pa.types.is_boolean(t)
        for v in values:
            if is_str and not isinstance(v, str):
                self._fail(f"column {name!r} holds text; quote the value: {name} == '{v}'")
            if is_bool and not isinstance(v, bool):
                self._fail(f"column {name!r} is true/false; compare it with True or False, not {v!r}")
            if not is_str and not is_bool and isinstance(v, (str, bool)):
                self._fail(f"column {name!r} is {t}; compare it with a number, not {v!r}")
            if pa.types.is_floating(t) and type(v) is int and abs(v) > FLOAT_EXACT_INT:
                self._fail(f"column {name!r} holds floats; write the integer {v} as a float, e.g. {float(v):.17g}")

    def _node(self, node):
        if isinstance(node, ast.BoolOp):
            parts = tuple(self._node(v) for v in node.values)
            return And(parts) if isinstance(node.op, ast.And) else Or(parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return Not(self._node(node.operand))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("any", "all"):
            kind = node.func.id
            if self._quant is not None:
                self._fail(f"{kind}(...) cannot be nested inside {self._quant[0]}(...)")
            if len(node.args) != 1 or node.keywords:
                self._fail(f"{kind}(...) takes one condition on a list column, e.g. {kind}(particle_radius_A < 15)")
            self._quant = [kind, None]
            try:
                part = self._node(node.args[0])
                column = self._quant[1]
            finally:
                self._quant = None
            if column is None:
                self._fail(f"{kind}(...) needs a per-particle list column inside, e.g. {kind}(particle_radius_A < 15)")
            return Quant(kind, column, part)
        if isinstance(node, ast.Compare):
            terms = [node.left, *node.comparators]
            out = []
            for left, op, right in zip(terms[:-1], node.ops, terms[1:]):
                out.append(self._compare(left, op, right))
            return out[0] if len(out) == 1 else And(tuple(out))
        self._fail(f"unsupported expression {ast.unparse(node)!r}: use comparisons joined by and / or / not, "
                   "and any(...) / all(...) over per-particle columns")

    def _compare(self, left, op, right) -> Cmp:
        if isinstance(op, (ast.In, ast.NotIn)):
            col = self._column(left)
            if col is None:
                self._fail(f"left of 'in' must be a column, got {ast.unparse(left)!r}")
            value = self._literal(right)
            if not isinstance(value, tuple):
                self._fail("right of 'in' must be a tuple or list, e.g. ('twin', 'mixed')")
            self._check_type(*col, value)
            return Cmp(col[0], col[1], "in" if isinstance(op, ast.In) else "not in", self._value_set(*col, value))
        if type(op) not in _CMP:
            self._fail(f"unsupported operator {type(op).__name__}")
        sym = _CMP[type(op)]
        lc, rc = self._column(left), self._column(right)
        if lc and not rc:
            value = self._literal(right)
        elif rc and not lc:
            # literal OP column  ==  column OP' literal
            lc, value, sym = rc, self._literal(left), {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(sym, sym)
        else:
            self._fail(f"compare a column with a literal: {ast.unparse(left)} {sym} {ast.unparse(right)}")
        if isinstance(value, tuple):
            self._fail("use 'in' to compare with a tuple")
        self._check_type(*lc, value)
        if sym not in ("==", "!=") and pa.types.is_boolean(self._type(*lc)):
            self._fail(f"column {lc[0]!r} is true/false: use == or != with True or False")
        return self._normalise(lc[0], lc[1], sym, value)

    # ------------------------------------------------------------ one meaning for every evaluation path
    def _type(self, name, index):
        t = self.schema.field(name).type
        elementwise = self._quant is not None and name == self._quant[1] and index is None
        return t.value_type if index is not None or elementwise else t

    def _value_set(self, name, index, values: tuple) -> tuple:
        """The literals of `in` that a cell of this column can equal, in the column's own type, so that every
        engine (Arrow's value sets are cast to the column type, Python compares exactly) agrees."""
        t = self._type(name, index)
        if pa.types.is_integer(t):
            lo, hi = _int_bounds(t)
            return tuple(dict.fromkeys(int(v) for v in values if math.isfinite(v) and float(v).is_integer()
                                       and lo <= v <= hi))
        if pa.types.is_float32(t) or pa.types.is_float16(t):
            import numpy as np

            np_t = np.float32 if pa.types.is_float32(t) else np.float16
            return _signed_zeros(float(v) for v in values if float(np_t(v)) == v)
        if pa.types.is_floating(t):
            return _signed_zeros(float(v) for v in values)
        return tuple(dict.fromkeys(values))

    def _normalise(self, name, index, op, v) -> "Cmp":
        """An integer column compared with a float (or an integer beyond its type) becomes the equivalent
        comparison with an integer of the column's type: `n < 2.5` is `n <= 2`, never `n < 2`."""
        t = self._type(name, index)
        if not pa.types.is_integer(t) or (type(v) is int and _int_bounds(t)[0] <= v <= _int_bounds(t)[1]):
            return Cmp(name, index, op, float(v) if pa.types.is_floating(t) else v)
        lo, hi = _int_bounds(t)
        true, false = Cmp(name, index, ">=", lo), Cmp(name, index, "<", lo)  # for every non-null cell
        if op in ("==", "!="):
            exact = math.isfinite(v) and float(v).is_integer() and lo <= v <= hi
            if exact:
                return Cmp(name, index, op, int(v))
            return false if op == "==" else true
        if not math.isfinite(v):
            below = op in ("<", "<=")  # x < +inf, x <= +inf: all; x < -inf: none
            return (true if v > 0 else false) if below else (false if v > 0 else true)
        if op in ("<", "<="):  # x <= m
            m = math.ceil(v) - 1 if op == "<" else math.floor(v)
            return true if m >= hi else false if m < lo else Cmp(name, index, "<=", m)
        m = math.floor(v) + 1 if op == ">" else math.ceil(v)  # x >= m
        return true if m <= lo else false if m > hi else Cmp(name, index, ">=", m)

    # ------------------------------------------------------------ compiling
    @property
    def expression(self) -> pads.Expression:
        """A pyarrow dataset filter; not for any(...) / all(...) (Arrow expressions cannot reduce lists):
        use `table`, which takes either kind."""
        if self.quantified:
            raise QueryError("any(...) / all(...) queries have no pyarrow dataset Expression; use Query.table")
        return _expr(self.tree)

    def table(self, dataset: pads.Dataset, columns=None, extra: pads.Expression | None = None) -> pa.Table:
        """The matching rows of a pyarrow dataset (and `extra`), with `columns` (None: all). Plain queries are
        pushed into the scan; any(...) / all(...) queries read their metadata columns first, then only the
        matching records' `columns`."""
        if not self.quantified:
            expr = self.expression if extra is None else self.expression & extra
            return dataset.to_table(columns=columns, filter=expr)
        meta = dataset.to_table(columns=list(dict.fromkeys(["record_id", *self.columns])), filter=extra)
        ids = meta.filter(self.mask(meta))["record_id"].combine_chunks()  # typed even when empty
        expr = pads.field("record_id").isin(ids)
        return dataset.to_table(columns=columns, filter=expr if extra is None else expr & extra)

    def mask(self, table: pa.Table | pa.RecordBatch) -> pa.Array:
        """Boolean selection over a table holding (at least) the query's columns; nulls count as False."""
        out = pc.fill_null(_eval(self.tree, table), False)
        return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out

    def match(self, row: dict) -> bool:
        """One row (a dict), for streams that arrive row by row (WebDataset json)."""
        return bool(_match(self.tree, row))

    @property
    def dnf(self) -> list | None:
        """Parquet DNF filters [[(col, op, value), ...], ...] for columns without nulls (see `dnf_for`)."""
        return self.dnf_for(())

    def dnf_for(self, null_columns) -> list | None:
        """Parquet DNF filters, or None where no DNF has this query's meaning: list indexing; `not` over an
        ordering (NaN); a negation (`not`, `!=` from `not ==`, `not in`) over a column in `null_columns`,
        as a comparison with a null cell is false whichever the operator, and DNF cannot test for null."""
        if self.quantified or any(c.index is not None for c in _leaves(self.tree)):
            return None
        try:
            conjunctions = _to_dnf(self.tree)
        except _NoDNF:
            return None
        nulls = set(null_columns)
        if any(c.op in ("not in",) and c.column in nulls for conj in conjunctions for c in conj) or \
                any(c.column in nulls for c in _negated_leaves(self.tree)):
            return None
        return [[[c.column, c.op, list(c.value) if isinstance(c.value, tuple) else c.value] for c in conj]
                for conj in conjunctions]


def _depth(node) -> int:
    """Nesting depth of an ast, without recursion (a crafted query must not exhaust the stack)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((c, d + 1) for c in ast.iter_child_nodes(n))
    return deepest


def _int_bounds(t: pa.DataType) -> tuple[int, int]:
    import numpy as np

    info = np.iinfo(t.to_pandas_dtype())
    return int(info.min), int(info.max)


def _negated_leaves(node, negated=False):
    if isinstance(node, Cmp):
        if negated:
            yield node
    elif isinstance(node, Not):
        yield from _negated_leaves(node.part, not negated)
    else:
        for p in node.parts:
            yield from _negated_leaves(p, negated)


def _quants(node):
    if isinstance(node, Quant):
        yield node
    elif isinstance(node, Not):
        yield from _quants(node.part)
    elif not isinstance(node, Cmp):
        for p in node.parts:
            yield from _quants(p)


def _leaves(node):
    if isinstance(node, Cmp):
        yield node
    elif isinstance(node, (Not, Quant)):
        yield from _leaves(node.part)
    else:
        for p in node.parts:
            yield from _leaves(p)


def _field_expr(c: Cmp):
    f = pads.field(c.column)
    return pc.list_element(f, c.index) if c.index is not None else f


def _signed_zeros(values) -> tuple:
    """A float value set with both zeros when it has either: Python's 0.0 == -0.0, but Arrow's is_in hashes
    them apart, and pyarrow prunes a Parquet row group whose statistics are [-0.0, 0.0] from is_in([0.0])."""
    out = list(dict.fromkeys(values))  # a dict holds one of the two zeros at most: they compare equal
    if 0.0 in out:
        out = [v for v in out if v != 0.0] + [0.0, -0.0]
    return tuple(out)


def _expr(node):
    if isinstance(node, Cmp):
        # A comparison with a null cell is False (never null), so that `not` flips it as in Python.
        f = _field_expr(node)
        if node.op == "in":
            return f.is_valid() & f.isin(list(node.value))
        if node.op == "not in":
            return f.is_valid() & ~f.isin(list(node.value))
        value = pa.scalar(node.value)
        cmp = {"==": f.__eq__, "!=": f.__ne__, "<": f.__lt__, "<=": f.__le__, ">": f.__gt__,
               ">=": f.__ge__}[node.op](value)
        return f.is_valid() & cmp
    if isinstance(node, Not):
        return ~_expr(node.part)
    parts = [_expr(p) for p in node.parts]
    out = parts[0]
    for p in parts[1:]:
        out = (out & p) if isinstance(node, And) else (out | p)
    return out


def _eval(node, table):
    if isinstance(node, Quant):
        import numpy as np

        col = table.column(node.column) if isinstance(table, pa.Table) else table[node.column]
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        flat = pa.table({node.column: pc.list_flatten(col)})
        hit = pc.fill_null(_eval(node.part, flat), False).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
        hits = np.bincount(parents, weights=hit, minlength=len(col))
        size = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        # all() of an empty list is True, any() False, as in Python; a null list matches neither.
        out = hits > 0 if node.kind == "any" else hits == size
        return pa.array(out & col.is_valid().to_numpy(zero_copy_only=False))
    if isinstance(node, Cmp):
        col = table.column(node.column) if isinstance(table, pa.Table) else table[node.column]
        if node.index is not None:
            col = pc.list_element(col, node.index)
        if node.op in ("in", "not in"):
            hit = pc.is_in(col, value_set=pa.array(list(node.value), type=col.type))
            return hit if node.op == "in" else pc.and_(pc.is_valid(col), pc.invert(hit))
        fn = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
              ">=": pc.greater_equal}[node.op]
        # Literals were normalised to the column's kind at parse time; float32 columns widen to float64.
        return fn(col, pa.scalar(node.value))
    if isinstance(node, Not):
        return pc.invert(pc.fill_null(_eval(node.part, table), False))
    parts = [pc.fill_null(_eval(p, table), False) for p in node.parts]
    out = parts[0]
    for p in parts[1:]:
        out = pc.and_(out, p) if isinstance(node, And) else pc.or_(out, p)
    return out


def _match(node, row) -> bool:
    if isinstance(node, Quant):
        values = row.get(node.column)
        if values is None:
            return False
        hits = (_match(node.part, {node.column: v}) for v in values)
        return any(hits) if node.kind == "any" else all(hits)
    if isinstance(node, Cmp):
        v = row.get(node.column)
        if v is not None and node.index is not None:
            v = v[node.index] if node.index < len(v) else None
        if v is None:
            return False
        if node.op == "in":
            return v in node.value
        if node.op == "not in":
            return v not in node.value
        return _PY[node.op](v, node.value)
    if isinstance(node, Not):
        return not _match(node.part, row)
    res = (_match(p, row) for p in node.parts)
    return all(res) if isinstance(node, And) else any(res)


class _NoDNF(Exception):
    pass


def _to_dnf(node) -> list[list[Cmp]]:
    """Push negations into the comparisons and distribute `and` over `or`."""
    if isinstance(node, Cmp):
        return [[node]]
    if isinstance(node, Not):
        p = node.part
        if isinstance(p, Cmp):
            if p.op in ("<", "<=", ">", ">="):
                raise _NoDNF  # not (x < v) is True for NaN, x >= v is not: no NaN-exact DNF form
            return [[Cmp(p.column, p.index, _NEG[p.op], p.value)]]
        if isinstance(p, Not):
            return _to_dnf(p.part)
        flipped = tuple(Not(q) for q in p.parts)
        return _to_dnf(Or(flipped) if isinstance(p, And) else And(flipped))
    if isinstance(node, Or):
        return [conj for p in node.parts for conj in _to_dnf(p)]
    out = [[]]
    for p in node.parts:
        out = [a + b for a in out for b in _to_dnf(p)]
    return out


# ---------------------------------------------------------------- applying queries
def _schema_of(ds) -> pa.Schema:
    feats = ds.features
    return feats.arrow_schema if hasattr(feats, "arrow_schema") else pa.schema(
        [pa.field(k, v.pa_type if hasattr(v, "pa_type") else pa.null()) for k, v in feats.items()])


def select(ds, text: str):
    """Subset of a `datasets` Dataset / DatasetDict / IterableDataset by a metadata query.

    Runs through `filter` in Arrow batches over the query's columns only: one vectorised Arrow compute call
    per batch, no Python per row, no image decoding.
    """
    from datasets import DatasetDict, IterableDataset, IterableDatasetDict

    if isinstance(ds, (DatasetDict, IterableDatasetDict)):
        return type(ds)({k: select(v, text) for k, v in ds.items()})
    q = Query(text, _schema_of(ds))
    if isinstance(ds, IterableDataset):
        def keep(*cols):
            table = pa.table(dict(zip(q.columns, cols)), schema=pa.schema([_schema_of(ds).field(c) for c in q.columns]))
            return q.mask(table).to_pylist()

        return ds.filter(keep, input_columns=q.columns, batched=True, batch_size=1000)
    fmt = ds.format
    out = ds.with_format("arrow").filter(
        lambda *cols: q.mask(pa.table(dict(zip(q.columns, cols)))), input_columns=q.columns, batched=True,
        batch_size=100_000, keep_in_memory=True)
    return out.with_format(fmt["type"], columns=fmt["columns"], output_all_columns=fmt["output_all_columns"],
                           **fmt["format_kwargs"])


def select_table(table: pa.Table, text: str) -> pa.Table:
    return table.filter(Query(text, table.schema).mask(table))


def wds_filter(text: str, schema: pa.Schema):
    """A predicate for `webdataset.WebDataset(...).select(...)` that reads only the raw json, before decoding."""
    import json

    q = Query(text, schema)
    return lambda sample: q.match(json.loads(sample["json"]))
