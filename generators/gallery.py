"""`temsynth gallery DIR [QUERY] --out page/`: a static HTML page of a dataset folder's records, to look at.

Each record is a thumbnail (its `preview` PNG: the image with the mask's outline; rendered from image and mask
for folders without the column, such as imported ones) and its metadata. The page filters client-side by every
metadata column (the query language's columns): a range for numbers, a value for text and true/false, "any
element" for per-particle lists. The records' metadata sits in the page itself and the thumbnails in `img/` beside
it, so it works from a file:// URL with no server. QUERY (the query language) narrows the records first; a URL
fragment sets filters on load (index.html#split=test&defocus_nm=-10..10), so a filtered view can be linked.
"""
from __future__ import annotations

import html
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from .folder import RunError
from .preview import preview_png
from .query import Query
from .records import PIXEL_COLUMNS
from .subsets import metadata, schema

DEFAULT_LIMIT = 500
# Shown on every card (when the folder has them); the rest of the metadata is one click away.
CARD_COLUMNS = ("split", "n_particles", "material", "particle_material", "defocus_nm", "dose_e_per_A2",
                "detector_type", "pixel_size_A", "source_file")


def _jsonable(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return None
    return v


def _filters(table: pa.Table) -> list[dict]:
    """One filter per metadata column: numeric range, or the distinct values of a text/bool column (<= 40)."""
    out = []
    for field in table.schema:
        if field.name == "record_id" or field.name.endswith("_seed"):
            continue  # one value per record: nothing to filter by
        t = field.type
        inner = t.value_type if pa.types.is_list(t) else t
        if pa.types.is_list(inner) or pa.types.is_fixed_size_list(inner) or pa.types.is_fixed_size_list(t):
            continue  # vectors (centres, offsets): shown, not filtered
        values = table.column(field.name).to_pylist()
        flat = [x for v in values for x in (v if isinstance(v, list) else [v]) if x is not None]
        if not flat:
            continue
        if pa.types.is_integer(inner) or pa.types.is_floating(inner):
            finite = [x for x in flat if math.isfinite(x)]
            if finite and min(finite) != max(finite):
                out.append({"column": field.name, "kind": "range", "min": min(finite), "max": max(finite),
                            "list": pa.types.is_list(t)})
        elif pa.types.is_string(inner) or pa.types.is_boolean(inner):
            distinct = sorted({str(x) for x in flat})
            if 1 < len(distinct) <= 40:
                out.append({"column": field.name, "kind": "value", "values": distinct, "list": pa.types.is_list(t)})
    return out


def write_gallery(dataset_dir: str | Path, out_dir: str | Path, query: str | None = None,
                  limit: int = DEFAULT_LIMIT) -> dict:
    """Write out_dir/index.html and out_dir/img/*.png for (at most `limit` of) the records `query` selects."""
    src, out = Path(dataset_dir), Path(out_dir)
    if not isinstance(limit, int) or limit < 1:
        raise RunError(f"--limit must be a positive number of records, got {limit}")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "index.html").is_file())):
        raise RunError(f"{out} exists and is not a gallery folder; choose a new --out")
    names = schema(src).names
    q = Query(query, schema(src)) if query else None
    meta_cols = [n for n in names if n not in PIXEL_COLUMNS]
    pixels = ["preview"] if "preview" in names else ["image", "mask"]
    table = metadata(src, columns=meta_cols + pixels, query=q).sort_by("record_id")
    total = len(table)
    table = table.slice(0, limit)
    # Written beside the target and renamed: an interrupted run leaves the previous page (or nothing) behind.
    staging = out.parent / f".{out.name}.gallery-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "img").mkdir(parents=True)
    try:
        records = []
        rows = table.select(meta_cols).to_pylist()
        for i, row in enumerate(rows):
            if "preview" in pixels:
                png = table.column("preview")[i].as_py()["bytes"]
            else:
                # nested lists: as_py() gives the 2-D arrays directly
                png = preview_png(np.asarray(table.column("image")[i].as_py(), np.float32),
                                  np.asarray(table.column("mask")[i].as_py()))
            name = f"img/{row['record_id']}.png"
            (staging / name).write_bytes(png)
            records.append({"img": name, **{k: _jsonable(v) for k, v in row.items()}})
        page = _page(src, query, records, _filters(table.select(meta_cols)), total)
        (staging / "index.html").write_text(page, encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"out": str(out / "index.html"), "records": len(records), "selected": total, "query": query}


def _page(src: Path, query: str | None, records: list[dict], filters: list[dict], total: int) -> str:
    data = json.dumps({"records": records, "filters": filters, "card": list(CARD_COLUMNS)})
    data = data.replace("</", "<\\/")  # nothing in the data can close the script element
    title = f"{src.name}: {len(records)} records" + (f" where {query}" if query else "")
    note = f" (the first {len(records)} of {total}; --limit raises it)" if total > len(records) else ""
    return _TEMPLATE.replace("{{TITLE}}", html.escape(title)).replace("{{NOTE}}", html.escape(note)) \
        .replace("{{DATA}}", data)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}}</title>
<style>
body{font:13px system-ui,sans-serif;margin:0;background:#f4f4f4;color:#222}
header{padding:10px 16px;background:#222;color:#eee}header h1{font-size:16px;margin:0 0 4px}
#filters{display:flex;flex-wrap:wrap;gap:6px 14px;padding:10px 16px;background:#fff;border-bottom:1px solid #ccc}
#filters label{display:flex;flex-direction:column;font-size:11px;color:#555}
#filters input{width:80px}#filters select{max-width:160px}
#grid{display:flex;flex-wrap:wrap;gap:10px;padding:12px 16px}
.card{background:#fff;border:1px solid #ccc;border-radius:4px;width:196px;padding:6px}
.card img{width:196px;height:196px;image-rendering:pixelated;display:block;background:#000}
.card b{display:block;margin:4px 0 2px;font-family:monospace}.card .m{color:#444;font-size:11px;word-break:break-word}
details table{font-size:11px;border-collapse:collapse}
details td{border-top:1px solid #eee;padding:1px 3px;vertical-align:top;word-break:break-all}
</style></head><body>
<header><h1>{{TITLE}}</h1><span id="count"></span>{{NOTE}}. Orange: the mask's outline.</header>
<div id="filters"></div><div id="grid"></div>
<script id="data" type="application/json">{{DATA}}</script>
<script>
const D = JSON.parse(document.getElementById("data").textContent);
const fmt = v => v === null ? "null" : Array.isArray(v) ? "[" + v.map(fmt).join(", ") + "]" :
  typeof v === "number" && !Number.isInteger(v) ? (+v.toPrecision(4)).toString() : String(v);
const box = document.getElementById("filters"), grid = document.getElementById("grid");
const controls = [];
for (const f of D.filters) {
  const label = document.createElement("label");
  label.textContent = f.column + (f.list ? " (any)" : "");
  if (f.kind === "range") {
    const lo = document.createElement("input"), hi = document.createElement("input");
    lo.type = hi.type = "number"; lo.step = hi.step = "any";
    lo.placeholder = fmt(f.min); hi.placeholder = fmt(f.max);
    lo.dataset.column = hi.dataset.column = f.column;
    lo.className = "min"; hi.className = "max";
    const row = document.createElement("span"); row.append(lo, " – ", hi); label.append(row);
    controls.push({f, test: v => (lo.value === "" || v >= +lo.value) && (hi.value === "" || v <= +hi.value)});
    lo.oninput = hi.oninput = render;
  } else {
    const sel = document.createElement("select"); sel.dataset.column = f.column;
    sel.append(new Option("(all)", ""));
    for (const v of f.values) sel.append(new Option(v, v));
    label.append(sel);
    controls.push({f, test: v => sel.value === "" || String(v) === sel.value});
    sel.onchange = render;
  }
  box.append(label);
}
const cards = D.records.map(r => {
  const c = document.createElement("div"); c.className = "card";
  const img = document.createElement("img"); img.src = r.img; img.alt = r.record_id; img.loading = "lazy";
  const b = document.createElement("b"); b.textContent = r.record_id;
  const m = document.createElement("div"); m.className = "m";
  m.textContent = D.card.filter(k => k in r).map(k => k + " " + fmt(r[k])).join(" · ");
  const det = document.createElement("details"); const sum = document.createElement("summary");
  sum.textContent = "metadata"; const t = document.createElement("table");
  for (const [k, v] of Object.entries(r)) { if (k === "img") continue;
    const tr = t.insertRow(); tr.insertCell().textContent = k; tr.insertCell().textContent = fmt(v); }
  det.append(sum, t); c.append(img, b, m, det); grid.append(c); return c;
});
// A per-particle list passes when any element does; a missing value (or an empty list) only while its filter is unset.
function isDefault(f) {
  return [...box.querySelectorAll('[data-column="' + f.column + '"]')].every(e => e.value === "");
}
function passes(f, test, v) {
  if (f.list) return Array.isArray(v) && v.length ? v.some(test) : isDefault(f);
  return v === null || v === undefined ? isDefault(f) : test(v);
}
function keep(r) { return controls.every(({f, test}) => passes(f, test, r[f.column])); }
function render() {
  let n = 0;
  D.records.forEach((r, i) => { const on = keep(r); cards[i].style.display = on ? "" : "none"; n += on; });
  document.getElementById("count").textContent = n + " of " + D.records.length + " shown";
}
// A filtered view can be linked: index.html#split=test&defocus_nm=-10..10 sets those filters on load.
for (const part of decodeURIComponent(location.hash.slice(1)).split("&").filter(Boolean)) {
  const [col, val] = part.split("=");
  const els = box.querySelectorAll('[data-column="' + col + '"]');
  if (els.length === 1) els[0].value = val;
  else if (els.length === 2) { const [lo, hi] = val.split(".."); els[0].value = lo || ""; els[1].value = hi || ""; }
}
render();
</script></body></html>
"""
