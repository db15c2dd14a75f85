"""Particles from masks: instance labels, per-particle measurements, and particle-level scores.

Pure numpy/scipy (scikit-image is not a dependency of the package): labels by `scipy.ndimage.label`, a seeded
watershed by descending levels of a distance map (`_flood`, built on `distance_transform_edt`), outlines and
perimeters by contourpy's marching squares (the library matplotlib draws its contours with).

Conventions, used everywhere in the package:
- An instance is a 4-connected set of pixels with one label; 0 is background.
- A particle "touches the border" when one of its pixels lies in the field's outermost row or column: its true
  size is unknown, so size statistics leave it out (as microscopists do), and the particle scores ignore it
  (see `match`).
- The equivalent-circle diameter is that of the disc of the particle's area: 2 sqrt(area / pi).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# The seeds of the watershed: where the predicted distance to the particle's edge, as a fraction of its largest
# value inside that particle, passes this. 0.5 keeps one seed per convex particle and splits two touching discs
# whose neck is narrower than half their radius (see `split_touching`).
SEED_THRESHOLD = 0.5
# A seed smaller than this many pixels is noise in the distance channel, not a particle's core.
MIN_SEED_PX = 4
# A piece of mask whose predicted distance never reaches this holds no core to split by.
MIN_PEAK = 0.1
# For a model's predicted distance map (`particles_from_logits`): the seed threshold and the smallest particle
# (pixels at the model's pixel size; smaller ones join a touching particle or go, `merge_small`), chosen on the
# simulated VALIDATION split of tem_np_realistic with benchmarks/tune_instances.py, as the best mean particle F1
# of two trainings of realistic_instances.yaml (seeds 0 and 1, 720 steps each) with the neck join below:
# 0.5 / 0.6 / 0.7 gave 0.774 / 0.810 / 0.784 (2026-12-03). Trainings differ: alone, seed 0 peaked at 0.6 and an
# earlier one at 0.7. The smallest particle stays at the earlier grid's choice (0-400 px): 200 px at 0.7 Å is a
# particle of 1.1 nm (the presets' smallest: 1.6 nm).
MODEL_SEED_THRESHOLD = 0.6
MIN_PARTICLE_PX = 200
# Two pieces of a watershed are one particle when the line they share is at least this many times the smaller
# piece's equivalent-circle diameter (`merge_wide_necks`). Particles are convex in projection: a cut through one
# convex particle is a chord of at least sqrt(2) = 1.41 times the smaller piece's diameter (a disc cut through its
# centre; more off it), while two touching convex particles meet at a neck narrower than either (equal discs whose
# centres are 1.5 radii apart: 0.68; one radius apart, overlapping by half: 0.97). 1.2 lies between the two; a
# rod of aspect 2 cut across its middle (1.0) stays two.
NECK_RATIO = 1.2
# A predicted particle whose mean particle probability (the mask channel's sigmoid over its pixels) stays under
# this is dropped (`drop_unsure`): the mask still holds its pixels, the particle tables do not. Chosen on the
# simulated VALIDATION split with benchmarks/tune_instances.py, as the best mean particle F1 of the two trainings
# above: none / 0.6 / 0.7 / 0.8 / 0.85 / 0.9 gave 0.810 / 0.820 / 0.822 / 0.824 / 0.824 / 0.819 (2026-12-03);
# of the tied 0.8 and 0.85, the one that drops fewer (with a third training: 0.826 and 0.831, still within what
# one training changes; docs/particles.md).
MIN_CONFIDENCE = 0.8
# Matching: a predicted and a true particle are the same particle when their IoU reaches this (the usual 0.5,
# at which a match is unique: two predictions cannot both overlap one particle by more than half their union).
IOU_MATCH = 0.5


# ---------------------------------------------------------------- labels
def relabel(labels: np.ndarray) -> np.ndarray:
    """int32 labels 1..n, each a 4-connected piece: a label value split in two pieces (a particle cut by the
    periodic cell's edge shows on two sides of the field) becomes two instances, as it would to a microscopist."""
    labels = np.asarray(labels)
    if labels.dtype == bool or labels.max(initial=0) <= 1:
        out, _ = ndimage.label(labels > 0)
        return out.astype(np.int32, copy=False)
    out = np.zeros(labels.shape, np.int32)
    n = 0
    for k, sl in enumerate(ndimage.find_objects(labels.astype(np.int32, copy=False)), start=1):
        if sl is None:
            continue
        part, m = ndimage.label(labels[sl] == k)
        out[sl][part > 0] = part[part > 0] + n
        n += m
    return out


def largest_pieces(labels: np.ndarray) -> np.ndarray:
    """Labels 1..n keeping, of each label value, only its largest 4-connected piece. For labels carried to
    another pixel grid (nearest neighbour) and cut to a resampled mask: a particle that was one piece where it
    was found can shed a sliver of a few pixels there, which is a resampling artefact, not a particle."""
    pieces = relabel(labels)
    n = int(pieces.max(initial=0))
    if n == 0:
        return pieces
    flat_pieces, flat_labels = pieces.ravel(), np.asarray(labels).ravel()
    area = np.bincount(flat_pieces, minlength=n + 1)
    owner = np.zeros(n + 1, np.int64)
    owner[flat_pieces] = flat_labels                      # every pixel of a piece carries the same label
    order = np.lexsort((-area[1:], owner[1:])) + 1        # by label, the largest piece first
    first = np.r_[True, owner[order][1:] != owner[order][:-1]]
    keep = np.zeros(n + 1, bool)
    keep[order[first]] = True
    return relabel(np.where(keep[pieces], pieces, 0))


def connected_components(mask: np.ndarray) -> np.ndarray:
    """The binary models' instances: 4-connected components of the mask."""
    out, _ = ndimage.label(np.asarray(mask) > 0)
    return out.astype(np.int32, copy=False)


def split_touching(mask: np.ndarray, distance: np.ndarray, seed_threshold: float = SEED_THRESHOLD,
                   min_seed_px: int = MIN_SEED_PX) -> np.ndarray:
    """Instances of a mask from a predicted distance-to-edge map in [0, 1] (1 at each particle's core).

    The map is first divided by its largest value in each connected piece of the mask: the target is 1 at every
    particle's core, so a network that has not yet learnt its full amplitude (cores at 0.4, not 1) still marks
    them, and touching particles of one piece keep their relative heights. Seeds are the connected regions where
    that passes seed_threshold; a watershed on the inverted map grows them to fill the mask (`_flood`). A piece of
    mask holding one seed or none stays one particle (the distance channel may miss a small particle the mask
    holds), as does one whose map peaks below MIN_PEAK (no core at all: nothing to split by)."""
    mask = np.asarray(mask) > 0
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    comps, n_comp = ndimage.label(mask)
    distance = np.clip(np.asarray(distance, np.float32), 0, None)
    peak = np.asarray(ndimage.maximum(distance, comps, np.arange(n_comp + 1)), np.float32)
    peak[0] = 1.0
    scale = np.where(peak >= MIN_PEAK, 1.0 / np.maximum(peak, 1e-6), 0.0).astype(np.float32)
    distance = distance * scale[comps]
    seeds, n = ndimage.label(mask & (distance > seed_threshold))
    if n and min_seed_px > 1:
        sizes = np.bincount(seeds.ravel(), minlength=n + 1)
        small = sizes < min_seed_px
        small[0] = False
        seeds[small[seeds]] = 0
        seeds, n = ndimage.label(seeds > 0)
    # Each connected piece of the mask on its own: a piece with one seed or none is one particle (the distance
    # channel may miss a small particle the mask holds); one with several is flooded from them, never taking
    # labels from a neighbouring piece.
    out = np.zeros(mask.shape, np.int32)
    n = 0
    for c, sl in enumerate(ndimage.find_objects(comps), start=1):
        own = comps[sl] == c
        ids = np.unique(seeds[sl][own])
        ids = ids[ids > 0]
        if len(ids) <= 1:
            n += 1
            out[sl][own] = n
            continue
        lut = np.zeros(int(seeds[sl].max()) + 1, np.int32)
        lut[ids] = np.arange(1, len(ids) + 1)
        part = _flood(lut[np.where(own, seeds[sl], 0)], own, distance[sl], seed_threshold)
        out[sl][own] = part[own] + n
        n += len(ids)
    return relabel(out)  # a flooded label may reach a pixel only through another's: keep pieces apart


def _flood(markers: np.ndarray, mask: np.ndarray, distance: np.ndarray, top: float, step: float = 0.05) -> np.ndarray:
    """A watershed by descending levels: at each level of the distance map the labels grow into the newly
    uncovered mask pixels, each taking its nearest labelled pixel's label, so two particles meet where their
    distance maps fall to the neck between them. (scipy's watershed_ift breaks the ties of such monotone
    landscapes in queue order, which put the boundary of two equal touching discs a fifth of a radius off.)"""
    labels = markers.copy()
    for level in list(np.arange(top - step, 0, -step)) + [-1.0]:
        grow = mask & (distance > level) & (labels == 0)
        if not grow.any():
            continue
        _, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
        labels[grow] = labels[iy[grow], ix[grow]]
    return labels


def distance_target(instance_mask: np.ndarray) -> np.ndarray:
    """The distance channel's training target: for each particle, the distance of its pixels to its own edge
    (the background or another particle), divided by its largest value in that particle; 0 on background. Scale
    free, so that one seed threshold serves 1 nm and 14 nm particles alike."""
    labels = relabel(instance_mask)
    out = np.zeros(labels.shape, np.float32)
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        own = labels[sl] == k
        d = _edge_distance(own, sl, labels.shape)
        top = d.max()
        if top > 0:
            out[sl][own] = (d / top)[own]
    return out


def _edge_distance(own: np.ndarray, sl, shape) -> np.ndarray:
    """Distance of a particle's pixels (`own`, its bounding box `sl`) to its edge. Where the box lies on the
    field's border the particle is taken to go on beyond it (its edge there is unknown, and the field's border
    is no edge to learn); elsewhere one pixel of background closes the box."""
    h, w = shape
    on = ((sl[0].start == 0, sl[0].stop == h), (sl[1].start == 0, sl[1].stop == w))
    padded = np.pad(own, [(0 if a else 1, 0 if b else 1) for a, b in on])
    padded = np.pad(padded, [(1 if a else 0, 1 if b else 0) for a, b in on], mode="edge")
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


# ---------------------------------------------------------------- measurements
PARTICLE_COLUMNS = ("particle", "area_px", "area_nm2", "diameter_nm", "centroid_x_px", "centroid_y_px",
                    "major_axis_nm", "minor_axis_nm", "circularity", "touches_border", "mean_confidence")


def touching_border(labels: np.ndarray) -> np.ndarray:
    """Bool per label 1..n: whether it has a pixel in the field's outermost rows or columns."""
    n = int(labels.max(initial=0))
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    out = np.zeros(n + 1, bool)
    out[edge] = True
    return out[1:]


def diameters_nm(labels: np.ndarray, pixel_size_A: float, include_border: bool = False) -> np.ndarray:
    """Equivalent-circle diameters (nm) of the instances, border-touching ones left out unless asked."""
    n = int(labels.max(initial=0))
    return _diameters_kept(labels, pixel_size_A, np.ones(n, bool) if include_border else ~touching_border(labels))


def _perimeter_px(own: np.ndarray) -> float:
    """Length of the particle's outline by marching squares at half height (contourpy): a digital disc of radius
    r gets 2 pi r, not the 8 r of counting pixel edges."""
    import contourpy

    # the pixel staircase smoothed by one pixel first: marching squares on the raw 0/1 steps measures a disc
    # about 7 % long (circularity 0.87); smoothed, within 1 % for radii of 5 px and more.
    z = ndimage.gaussian_filter(np.pad(own.astype(np.float32), 3), 1.0)
    lines = contourpy.contour_generator(z=z, line_type=contourpy.LineType.Separate).lines(0.5)
    return float(sum(np.hypot(*np.diff(seg, axis=0).T).sum() for seg in lines))


def measure(labels: np.ndarray, pixel_size_A: float, confidence: np.ndarray | None = None,
            origin_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Per-particle columns (PARTICLE_COLUMNS) of a label image at `pixel_size_A`.

    confidence: the model's particle probability per pixel (its mean over the particle is reported; NaN without).
    origin_scale: centroids are reported in pixels of another grid (a file's pixels when the labels are at the
    model's pixel size): multiply by this."""
    labels = np.asarray(labels, np.int32)
    n = int(labels.max(initial=0))
    px_nm = pixel_size_A / 10
    cols: dict[str, list] = {c: [] for c in PARTICLE_COLUMNS}
    border = touching_border(labels) if n else np.zeros(0, bool)
    objects = ndimage.find_objects(labels)
    for k, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        own = labels[sl] == k
        area = int(own.sum())
        yy, xx = np.nonzero(own)
        yy = yy + sl[0].start
        xx = xx + sl[1].start
        cy, cx = yy.mean(), xx.mean()
        # axes of the ellipse with the same second moments (the 4 sqrt(eigenvalue) of regionprops)
        cov = np.cov(np.vstack([xx, yy]), bias=True) if area > 1 else np.zeros((2, 2))
        ev = np.sort(np.linalg.eigvalsh(cov + np.eye(2) / 12))[::-1]  # + 1/12: a pixel's own extent
        perim = _perimeter_px(own)
        cols["particle"].append(k)
        cols["area_px"].append(area)
        cols["area_nm2"].append(area * px_nm ** 2)
        cols["diameter_nm"].append(2 * np.sqrt(area / np.pi) * px_nm)
        cols["centroid_x_px"].append((cx + 0.5) * origin_scale - 0.5)
        cols["centroid_y_px"].append((cy + 0.5) * origin_scale - 0.5)
        cols["major_axis_nm"].append(4 * np.sqrt(ev[0]) * px_nm)
        cols["minor_axis_nm"].append(4 * np.sqrt(ev[1]) * px_nm)
        # capped at 1 (a disc): below ~5 px radius the smoothed outline runs a little short of the pixels' area
        cols["circularity"].append(min(1.0, 4 * np.pi * area / perim ** 2) if perim > 0 else np.nan)
        cols["touches_border"].append(bool(border[k - 1]))
        cols["mean_confidence"].append(float(confidence[sl][own].mean()) if confidence is not None else np.nan)
    types = {"particle": np.int32, "area_px": np.int64, "touches_border": bool}
    return {c: np.asarray(v, dtype=types.get(c, np.float64)) for c, v in cols.items()}


def summary(table: dict[str, np.ndarray], field_px: int, include_border: bool = False) -> dict:
    """Count, coverage and the size statistics of one field's (or several fields') particle table.
    field_px: pixels of the field(s), for the coverage (all particles' area, border ones included)."""
    d = table["diameter_nm"] if include_border else table["diameter_nm"][~table["touches_border"]]
    stats = {"n_particles": int(len(table["particle"])), "n_touching_border": int(table["touches_border"].sum()),
             "n_measured": int(len(d)), "coverage": float(table["area_px"].sum() / field_px) if field_px else 0.0}
    if len(d):
        q1, med, q3 = np.percentile(d, [25, 50, 75])
        stats.update(mean_diameter_nm=float(d.mean()), median_diameter_nm=float(med),
                     std_diameter_nm=float(d.std(ddof=1)) if len(d) > 1 else 0.0, iqr_diameter_nm=float(q3 - q1))
    else:
        stats.update(mean_diameter_nm=None, median_diameter_nm=None, std_diameter_nm=None, iqr_diameter_nm=None,
                     note="no particle away from the border: no size statistics")
    return stats


# ---------------------------------------------------------------- particle-level scores
# Per image, what `aggregate` sums: matched, false, missed, predicted, true (both away from the border), touching
# true pairs, of them separated.
COUNT_FIELDS = ("tp", "fp", "fn", "n_pred", "n_true", "touching_pairs", "pairs_separated")


def _overlaps(pred: np.ndarray, true: np.ndarray):
    """(true label, pred label, IoU) for every overlapping pair."""
    n_p, n_t = int(pred.max(initial=0)), int(true.max(initial=0))
    area_p = np.bincount(pred.ravel(), minlength=n_p + 1)
    area_t = np.bincount(true.ravel(), minlength=n_t + 1)
    both = (pred > 0) & (true > 0)
    pair = true[both].astype(np.int64) * (n_p + 1) + pred[both]
    keys, inter = np.unique(pair, return_counts=True)
    t, p = keys // (n_p + 1), keys % (n_p + 1)
    iou = inter / (area_t[t] + area_p[p] - inter)
    return t, p, iou


def _neighbour_edges(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every 4-neighbour edge between two different labels (both > 0): (lower label, higher label, y, x of the
    edge's midpoint)."""
    lo, hi, ys, xs = [], [], [], []
    for a, b, dy, dx in ((labels[:, :-1], labels[:, 1:], 0.0, 0.5), (labels[:-1], labels[1:], 0.5, 0.0)):
        diff = (a != b) & (a > 0) & (b > 0)
        iy, ix = np.nonzero(diff)
        lo.append(np.minimum(a[diff], b[diff]))
        hi.append(np.maximum(a[diff], b[diff]))
        ys.append(iy + dy)
        xs.append(ix + dx)
    return np.concatenate(lo), np.concatenate(hi), np.concatenate(ys), np.concatenate(xs)


def touching_pairs(labels: np.ndarray) -> np.ndarray:
    """(k, 2) label pairs (a < b) that share an edge (4-neighbours)."""
    lo, hi, _, _ = _neighbour_edges(labels)
    return np.unique(np.c_[lo, hi], axis=0) if len(lo) else np.zeros((0, 2), np.int32)


def match(pred: np.ndarray, true: np.ndarray, pixel_size_A: float = 1.0, ignore_border: bool = True) -> dict:
    """Particle-level comparison of two label images of one field.

    Matched: IoU >= 0.5 (unique). Particles touching the border are ignored on both sides: a true one (matched or
    not) counts neither as found nor as missed, and the prediction matched to it neither as right nor as false;
    an unmatched prediction touching the border is ignored too (its particle's extent is unknown). So
    tp + fn = true particles away from the border, tp + fp = predictions away from it or matched to one away
    from it. Touching pairs: true particles that share an edge, away from the border; separated when both are
    matched (each then to its own prediction). Diameters: the non-border particles of each side.
    Both label images are renumbered by `relabel` (pass relabelled ones to keep their numbers).
    ignore_border=False: every particle counts, border ones with their cut sizes (fields whose particles all
    touch the border have nothing else to compare)."""
    pred, true = relabel(pred), relabel(true)
    n_p, n_t = int(pred.max(initial=0)), int(true.max(initial=0))
    b_p, b_t = touching_border(pred), touching_border(true)
    if not ignore_border:
        b_p[:], b_t[:] = False, False
    t, p, iou = _overlaps(pred, true)
    ok = iou >= IOU_MATCH
    mt, mp = t[ok], p[ok]
    t_match = np.zeros(n_t + 1, np.int64)
    t_match[mt] = mp
    p_match = np.zeros(n_p + 1, np.int64)
    p_match[mp] = mt
    tp = int((~b_t[mt - 1]).sum()) if len(mt) else 0
    fn = int(((t_match[1:] == 0) & ~b_t).sum())
    fp = int(((p_match[1:] == 0) & ~b_p).sum())
    pairs = touching_pairs(true)
    if len(pairs):
        pairs = pairs[~b_t[pairs[:, 0] - 1] & ~b_t[pairs[:, 1] - 1]]
    separated = int(((t_match[pairs[:, 0]] > 0) & (t_match[pairs[:, 1]] > 0)).sum()) if len(pairs) else 0
    # a prediction matched to a true particle on the border is that particle (cut by the border, its size unknown)
    # even where its own outline stops short of the edge: left out of the count and the sizes, as of tp and fp
    b_p = b_p | np.r_[False, b_t][p_match[1:]]
    counts = {"tp": tp, "fp": fp, "fn": fn, "n_pred": int((~b_p).sum()), "n_true": int((~b_t).sum()),
              "touching_pairs": int(len(pairs)), "pairs_separated": separated}
    return {"counts": counts, "pred_diameters_nm": _diameters_kept(pred, pixel_size_A, ~b_p),
            "true_diameters_nm": _diameters_kept(true, pixel_size_A, ~b_t),
            # per particle 1..n of each side (as `relabel` numbers them): its match's label on the other, 0: none
            "pred_match": p_match[1:], "true_match": t_match[1:]}


def _diameters_kept(labels: np.ndarray, pixel_size_A: float, keep: np.ndarray) -> np.ndarray:
    """Equivalent-circle diameters (nm) of the labels 1..n where `keep`."""
    n = int(labels.max(initial=0))
    if n == 0 or not np.isfinite(pixel_size_A):  # no pixel size: no sizes (not sizes in pixels called nm)
        return np.zeros(0)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    return 2 * np.sqrt(area[keep & (area > 0)] / np.pi) * pixel_size_A / 10


def _rel(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else float((a - b) / b)


def aggregate(results: list[dict]) -> dict:
    """Particle scores over many fields (each a `match` result): counts summed, diameters pooled.

    precision, recall, F1 from the summed matches; count_error: (predicted - true) / true non-border particles;
    median_diameter_error: relative error of the predicted diameters' median; wasserstein_nm: the earth mover's
    distance between the two diameter distributions (nm). None where a side has no particle."""
    from scipy.stats import wasserstein_distance

    c = {k: sum(r["counts"][k] for r in results) for k in COUNT_FIELDS}
    dp = np.concatenate([r["pred_diameters_nm"] for r in results]) if results else np.zeros(0)
    dt = np.concatenate([r["true_diameters_nm"] for r in results]) if results else np.zeros(0)
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    med_p = float(np.median(dp)) if len(dp) else None
    med_t = float(np.median(dt)) if len(dt) else None
    return {
        "particle_precision": tp / (tp + fp) if tp + fp else None,
        "particle_recall": tp / (tp + fn) if tp + fn else None,
        "particle_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        "count_pred": c["n_pred"], "count_true": c["n_true"], "count_error": _rel(c["n_pred"], c["n_true"]),
        "median_diameter_pred_nm": med_p, "median_diameter_true_nm": med_t,
        "median_diameter_error": _rel(med_p, med_t),
        "wasserstein_nm": float(wasserstein_distance(dp, dt)) if len(dp) and len(dt) else None,
        "touching_pairs": c["touching_pairs"],
        "touching_pairs_separated": (c["pairs_separated"] / c["touching_pairs"]) if c["touching_pairs"] else None,
        **{f"n_{k}": c[k] for k in ("tp", "fp", "fn")},
    }


def merge_small(labels: np.ndarray, min_px: int) -> np.ndarray:
    """Particles of fewer than `min_px` pixels joined to the particle they touch (within 1.5 px; the nearest), or
    dropped when they touch none: slivers of a split and specks of the mask are no particles."""
    if min_px <= 1 or not labels.any():
        return labels
    n = int(labels.max())
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = (sizes < min_px) & (sizes > 0)
    small[0] = False
    if not small.any():
        return labels
    big = np.where(small[labels], 0, labels)
    if big.any():
        dist, (iy, ix) = ndimage.distance_transform_edt(big == 0, return_indices=True)
    else:
        dist, iy, ix = np.full(labels.shape, np.inf), None, None
    out = big.copy()
    pix = small[labels]
    ids = labels[pix]
    d = dist[pix]
    # each small particle goes whole to the big one nearest to it, if that is within 1.5 px
    order = np.lexsort((d, ids))
    first = np.r_[True, ids[order][1:] != ids[order][:-1]]
    near_d = np.full(n + 1, np.inf)
    near_label = np.zeros(n + 1, labels.dtype)
    near_d[ids[order][first]] = d[order][first]
    if iy is not None:
        yy, xx = np.nonzero(pix)
        y, x = yy[order][first], xx[order][first]
        near_label[ids[order][first]] = big[iy[y, x], ix[y, x]]
    target = np.where(near_d <= 1.5, near_label, 0)
    out[pix] = target[ids]
    return relabel(out)


def _line_lengths(lo: np.ndarray, hi: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> dict[tuple[int, int], float]:
    """For each pair (lo, hi) of the edges: the length (px) of the line between them, the extent of its edge
    midpoints along their principal axis (a straight run of n midpoints 1 px apart: n; a diagonal staircase: its
    length, not its number of steps)."""
    keys = lo.astype(np.int64) * (int(hi.max(initial=0)) + 1) + hi
    order = np.argsort(keys, kind="stable")
    keys, ys, xs, lo, hi = keys[order], ys[order], xs[order], lo[order], hi[order]
    starts = np.r_[0, np.nonzero(np.diff(keys))[0] + 1] if len(keys) else np.zeros(0, int)
    out = {}
    for s, e in zip(starts, np.r_[starts[1:], len(keys)]):
        cov = np.cov(np.vstack([xs[s:e], ys[s:e]]), bias=True) if e - s > 1 else np.zeros((2, 2))
        out[int(lo[s]), int(hi[s])] = float(np.sqrt(12 * max(np.linalg.eigvalsh(cov)[-1], 0.0) + 1))
    return out


def merge_wide_necks(labels: np.ndarray, ratio: float = NECK_RATIO) -> np.ndarray:
    """Join two touching particles where the line they share is at least `ratio` times the smaller one's
    equivalent-circle diameter: a watershed that found two cores in one convex particle cut it along a chord,
    which is wider than two touching particles' neck (see NECK_RATIO). The widest neck first, one join at a
    time, so that a particle cut in three comes back whole. ratio = inf: no join.
    The image is scanned once: joins relabel the list of shared edges and add up the areas."""
    labels = relabel(labels)
    if not np.isfinite(ratio) or labels.max(initial=0) < 2:
        return labels
    lo, hi, ys, xs = _neighbour_edges(labels)
    area = np.bincount(labels.ravel()).astype(np.float64)
    lut = np.arange(len(area))
    while len(lo):
        lines = _line_lengths(lo, hi, ys, xs)
        pairs = list(lines)
        score = [lines[a, b] / (2 * np.sqrt(min(area[a], area[b]) / np.pi)) for a, b in pairs]
        best = int(np.argmax(score))
        if score[best] < ratio:
            break
        a, b = pairs[best]
        lut[lut == b] = a
        area[a] += area[b]
        lo, hi = lut[lo], lut[hi]
        keep = lo != hi                       # the edges between a and b are inside the joined particle now
        lo, hi, ys, xs = np.minimum(lo, hi)[keep], np.maximum(lo, hi)[keep], ys[keep], xs[keep]
    return relabel(lut[labels])


def drop_unsure(labels: np.ndarray, probability: np.ndarray, min_confidence: float = MIN_CONFIDENCE) -> np.ndarray:
    """Particles whose mean `probability` over their pixels is under `min_confidence` removed (0: keep all)."""
    n = int(labels.max(initial=0))
    if min_confidence <= 0 or n == 0:
        return labels
    mean = np.asarray(ndimage.mean(probability, labels, np.arange(1, n + 1)))
    keep = np.r_[False, mean >= min_confidence]
    return relabel(np.where(keep[labels], labels, 0))


def particles_from_logits(logits: np.ndarray, min_px: int | None = None,
                          seed_threshold: float = MODEL_SEED_THRESHOLD, neck_ratio: float = NECK_RATIO,
                          min_confidence: float | None = None) -> np.ndarray:
    """A model's particles from its (C, H, W) logits: connected components of channel 0 > 0 for binary models;
    for instance models (C = 2) the mask split by the watershed seeded from the distance channel, pieces that
    share a line wider than a neck joined again (`merge_wide_necks`).
    min_px: smaller particles are merged into a touching one or dropped (`merge_small`); then particles the
    model is unsure of are dropped (`drop_unsure`; None: MIN_CONFIDENCE)."""
    probability = 1.0 / (1.0 + np.exp(-logits[0].astype(np.float32)))
    mask = logits[0] > 0
    if logits.shape[0] > 1:
        labels = split_touching(mask, 1.0 / (1.0 + np.exp(-logits[1].astype(np.float32))), seed_threshold)
        labels = merge_wide_necks(labels, neck_ratio)
    else:
        labels = connected_components(mask)
    labels = merge_small(labels, MIN_PARTICLE_PX if min_px is None else min_px)
    return drop_unsure(labels, probability, MIN_CONFIDENCE if min_confidence is None else min_confidence)
