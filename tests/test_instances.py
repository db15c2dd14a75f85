"""Particles from masks: measurements of shapes of known geometry, the watershed on touching discs, and the
particle scores against hand-worked cases."""
import numpy as np
import pytest

from training.instances import (
    aggregate,
    connected_components,
    diameters_nm,
    distance_target,
    match,
    measure,
    particles_from_logits,
    relabel,
    split_touching,
    summary,
    touching_pairs,
)


def disc(shape, cx, cy, r):
    y, x = np.mgrid[:shape[0], :shape[1]]
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def labels_of(*masks):
    out = np.zeros(masks[0].shape, np.int32)
    for k, m in enumerate(masks, start=1):
        out[m & (out == 0)] = k
    return out


def test_a_disc_of_known_size_at_a_known_pixel_size():
    # radius 25 px at 0.4 A/px: 2 nm diameter
    t = measure(labels_of(disc((128, 128), 60, 70, 25)), pixel_size_A=0.4)
    assert len(t["particle"]) == 1
    assert t["diameter_nm"][0] == pytest.approx(2.0, rel=0.005)
    assert t["area_nm2"][0] == pytest.approx(np.pi * 1.0 ** 2, rel=0.01)
    assert (t["centroid_x_px"][0], t["centroid_y_px"][0]) == pytest.approx((60, 70), abs=0.01)
    assert t["major_axis_nm"][0] == pytest.approx(2.0, rel=0.01)
    assert t["minor_axis_nm"][0] == pytest.approx(2.0, rel=0.01)
    assert t["circularity"][0] == pytest.approx(1.0, abs=0.015)
    assert not t["touches_border"][0] and np.isnan(t["mean_confidence"][0])


def test_an_ellipse_has_its_axes_and_a_lower_circularity():
    y, x = np.mgrid[:128, :160]
    e = ((x - 80) / 40) ** 2 + ((y - 64) / 16) ** 2 <= 1
    t = measure(e.astype(np.int32), pixel_size_A=1.0)
    assert t["major_axis_nm"][0] == pytest.approx(8.0, rel=0.01)
    assert t["minor_axis_nm"][0] == pytest.approx(3.2, rel=0.02)
    # Ramanujan's perimeter of a 40 x 16 ellipse: 4 pi A / P^2 = 0.7245
    a, b = 40, 16
    p = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))
    assert t["circularity"][0] == pytest.approx(4 * np.pi * (np.pi * a * b) / p ** 2, rel=0.02)
    assert t["diameter_nm"][0] == pytest.approx(2 * np.sqrt(a * b) / 10, rel=0.01)


def test_confidence_and_centroids_on_another_grid():
    lab = labels_of(disc((64, 64), 20, 30, 8))
    conf = np.where(lab > 0, 0.8, 0.1)
    t = measure(lab, 0.7, confidence=conf, origin_scale=2.0)
    assert t["mean_confidence"][0] == pytest.approx(0.8)
    # pixel 20 of a grid twice as coarse is centred on pixel 40.5 of the fine one
    assert t["centroid_x_px"][0] == pytest.approx(40.5) and t["centroid_y_px"][0] == pytest.approx(60.5)


def test_border_cut_particles_are_flagged_and_left_out_of_the_sizes():
    lab = labels_of(disc((100, 100), 50, 50, 10), disc((100, 100), 0, 50, 15))
    t = measure(lab, 1.0)
    assert list(t["touches_border"]) == [False, True]
    s = summary(t, lab.size)
    assert s["n_particles"] == 2 and s["n_measured"] == 1 and s["n_touching_border"] == 1
    assert s["median_diameter_nm"] == pytest.approx(2.0, rel=0.01)
    assert s["coverage"] == pytest.approx((lab > 0).mean())
    assert summary(t, lab.size, include_border=True)["n_measured"] == 2
    assert diameters_nm(lab, 1.0).shape == (1,) and diameters_nm(lab, 1.0, include_border=True).shape == (2,)


def test_an_empty_field_gives_an_empty_table_that_says_why():
    t = measure(np.zeros((32, 32), np.int32), 1.0)
    assert all(len(v) == 0 for v in t.values())
    s = summary(t, 32 * 32)
    assert s["n_particles"] == 0 and s["median_diameter_nm"] is None and "no particle" in s["note"]


def test_touching_discs_merge_in_components_and_the_watershed_separates_them():
    for r1, r2 in ((20, 20), (24, 12)):
        a = disc((96, 140), 30, 48, r1)
        b = disc((96, 140), 30 + r1 + r2, 48, r2) & ~a
        truth = labels_of(a, b)
        mask = truth > 0
        assert connected_components(mask).max() == 1           # one blob for a binary model
        split = split_touching(mask, distance_target(truth))
        assert split.max() == 2
        # a network that has not learnt the full amplitude (cores at 0.4) splits them the same way
        assert np.array_equal(split_touching(mask, 0.4 * distance_target(truth)), split)
        assert split_touching(mask, 0.05 * distance_target(truth)).max() == 1   # no core at all: one piece
        got = match(split, truth, 1.0)["counts"]
        assert got["tp"] == 2 and got["touching_pairs"] == 1 and got["pairs_separated"] == 1
        # the boundary lies where the discs meet: areas within 2 % of the true ones
        for k in (1, 2):
            own = truth == k
            lab = np.bincount(split[own]).argmax()
            assert (split == lab).sum() == pytest.approx(own.sum(), rel=0.02)


def test_the_watershed_keeps_separate_particles_and_seedless_ones_whole():
    a, b = disc((80, 80), 20, 20, 10), disc((80, 80), 60, 60, 5)
    mask = a | b
    dist = distance_target(labels_of(a))   # the distance channel misses the small particle
    out = split_touching(mask, dist)
    assert out.max() == 2 and len(np.unique(out[b])) == 1 and len(np.unique(out[a])) == 1
    # a convex particle's distance map gives one seed: no over-splitting
    assert split_touching(a, distance_target(labels_of(a))).max() == 1
    assert split_touching(np.zeros((8, 8), bool), np.zeros((8, 8))).max() == 0


def test_distance_target_is_scale_free_and_treats_the_field_border_as_no_edge():
    d = distance_target(labels_of(disc((128, 128), 64, 64, 30), disc((128, 128), 15, 15, 6)))
    assert d.max() == pytest.approx(1.0)
    big, small = d[64 - 30:64 + 31, 64 - 30:64 + 31], d[9:22, 9:22]
    assert big.max() == pytest.approx(1.0) and small.max() == pytest.approx(1.0)
    # a half disc cut by the left border: its core lies on the border, not half a radius inside
    half = distance_target(labels_of(disc((64, 64), 0, 32, 20)))
    assert np.unravel_index(half.argmax(), half.shape)[1] == 0


def test_relabel_splits_a_label_in_two_pieces():
    lab = np.zeros((10, 10), np.uint8)
    lab[0:3, 0:3] = 2
    lab[7:10, 7:10] = 2
    lab[5, 5] = 1
    assert relabel(lab).max() == 3


def test_match_counts_hand_worked():
    # truth: A (interior), B (interior), C (on the border). prediction: A exactly, B at IoU 1/3 (a shifted half),
    # a false particle D (interior), C' overlapping C, and E unmatched on the border.
    truth = np.zeros((40, 40), np.int32)
    truth[5:11, 5:11] = 1                      # A, 36 px
    truth[20:26, 5:11] = 2                     # B, 36 px
    truth[0:4, 30:36] = 3                      # C, on the border
    pred = np.zeros_like(truth)
    pred[5:11, 5:11] = 1                       # A
    pred[20:26, 8:14] = 2                      # B shifted by 3: IoU 18 / 54 = 1/3
    pred[30:34, 30:34] = 3                     # D, false
    pred[0:4, 31:36] = 4                       # C', IoU 20 / 24
    pred[36:40, 0:3] = 5                       # E, unmatched on the border
    truth[0:5, 15:21] = 4                      # G, on the border
    pred[1:5, 15:21] = 6                       # G', inside, but G's (IoU 0.8): G's cut size, so ignored too
    r = match(pred, truth, pixel_size_A=10.0)  # 1 nm pixels
    c = r["counts"]
    assert (c["tp"], c["fp"], c["fn"]) == (1, 2, 1)   # A; B' and D false; B missed; C, C', E, G, G' ignored
    assert (c["n_pred"], c["n_true"]) == (3, 2)
    agg = aggregate([r])
    assert agg["particle_precision"] == pytest.approx(1 / 3) and agg["particle_recall"] == pytest.approx(1 / 2)
    assert agg["particle_f1"] == pytest.approx(2 * 1 / (2 + 2 + 1))
    assert agg["count_error"] == pytest.approx((3 - 2) / 2)
    # diameters (nm): truth A, B: 2 sqrt(36/pi) each; prediction A, B' (36 px) and D (16 px)
    d36, d16 = 2 * np.sqrt(36 / np.pi), 2 * np.sqrt(16 / np.pi)
    assert agg["median_diameter_true_nm"] == pytest.approx(d36)
    assert agg["median_diameter_error"] == pytest.approx(0.0)
    # earth mover's distance: a third of the predicted mass moves from d16 to d36
    assert agg["wasserstein_nm"] == pytest.approx((d36 - d16) / 3)
    # every particle counted, border ones too: C matched by C', E false
    c = match(pred, truth, pixel_size_A=10.0, ignore_border=False)["counts"]
    assert (c["tp"], c["fp"], c["fn"], c["n_pred"], c["n_true"]) == (3, 3, 1, 6, 4)


def test_aggregate_sums_fields_and_handles_empty_ones():
    empty = match(np.zeros((16, 16), np.int32), np.zeros((16, 16), np.int32), 1.0)
    a = np.zeros((16, 16), np.int32)
    a[4:8, 4:8] = 1
    one = match(a, a, 1.0)
    agg = aggregate([empty, one, one])
    assert agg["n_tp"] == 2 and agg["particle_f1"] == 1.0 and agg["count_error"] == 0.0
    only_pred = match(a, np.zeros((16, 16), np.int32), 1.0)          # a field with no true particle
    assert (only_pred["counts"]["fp"], only_pred["counts"]["n_pred"], only_pred["counts"]["n_true"]) == (1, 1, 0)
    nothing = aggregate([empty])
    assert nothing["particle_f1"] is None and nothing["wasserstein_nm"] is None and nothing["count_error"] is None


def test_touching_pairs_and_logits():
    lab = np.zeros((6, 9), np.int32)
    lab[1:4, 1:4], lab[1:4, 4:7], lab[4:6, 8] = 1, 2, 3
    assert touching_pairs(lab).tolist() == [[1, 2]]
    logits = np.full((1, 6, 9), -5.0, np.float32)
    logits[0][lab > 0] = 5
    assert particles_from_logits(logits, min_px=0).max() == 2     # binary: components (1 and 2 merge)
    assert particles_from_logits(logits).max() == 0               # all under MIN_PARTICLE_PX


def test_small_particles_join_their_neighbour_or_go():
    from training.instances import merge_small

    lab = np.zeros((40, 40), np.int32)
    lab[5:25, 5:25] = 1          # 400 px
    lab[5:25, 25:27] = 2         # a 40 px sliver touching 1
    lab[32:34, 32:34] = 3        # a 4 px speck alone
    lab[30:40, 0:10] = 4         # 100 px, kept
    out = merge_small(lab, 50)
    assert out.max() == 2
    assert (out == out[10, 10]).sum() == 440 and out[33, 33] == 0 and (out == out[35, 5]).sum() == 100
    assert np.array_equal(merge_small(lab, 0), lab)


@pytest.mark.parametrize("centres_apart", [2.0, 1.5, 1.0])
def test_touching_discs_split_at_their_neck_stay_two(centres_apart):
    # two discs of radius 30 px whose centres are 2, 1.5 or 1 radius apart, split at the mid-line as the watershed
    # does: the neck (0 to 51 px) is narrower than either disc's pieces (~54-60 px across), so they stay two
    from training.instances import NECK_RATIO, merge_wide_necks

    r, shape = 30, (200, 200)
    both = disc(shape, 60, 100, r) | disc(shape, 60 + centres_apart * r, 100, r)
    x = np.mgrid[:shape[0], :shape[1]][1]
    lab = np.where(both, np.where(x < 60 + centres_apart * r / 2, 1, 2), 0).astype(np.int32)
    assert merge_wide_necks(lab).max() == 2
    assert NECK_RATIO > 0.97     # the most overlapping of these pairs, as worked out beside NECK_RATIO


@pytest.mark.parametrize("cut", ["centre", "off_centre", "diagonal", "in_three"])
def test_a_disc_cut_by_the_watershed_comes_back_whole(cut):
    # one convex particle cut along a chord (as a watershed with two seeds in one particle cuts it): the chord is
    # wider than the smaller piece (sqrt(2) x its diameter and more), so the pieces join again
    from training.instances import merge_wide_necks

    shape = (200, 200)
    d = disc(shape, 100, 100, 30)
    y, x = np.mgrid[:shape[0], :shape[1]]
    lab = d.astype(np.int32)
    if cut == "centre":
        lab[d & (x > 100)] = 2
    elif cut == "off_centre":
        lab[d & (x > 118)] = 2      # 0.6 radius off: chord 48 px, the small piece 31 px across
    elif cut == "diagonal":
        lab[d & (x + y > 200)] = 2
    else:
        lab[d & (x > 90)] = 2
        lab[d & (x > 110)] = 3
    out = merge_wide_necks(lab)
    assert out.max() == 1 and (out > 0).sum() == d.sum()
    assert merge_wide_necks(lab, float("inf")).max() == lab.max()      # inf: no join


def test_instance_logits_rejoin_a_particle_cut_by_two_humps():
    # an instance model's distance map with two humps inside one disc (a seed in each at 0.7 of the peak): the
    # watershed cuts the disc in two, and the wide chord between the halves joins them; two discs that touch
    # keep their own humps and stay apart
    shape = (160, 260)
    y, x = np.mgrid[:shape[0], :shape[1]]
    one = disc(shape, 70, 80, 40)
    hump = np.exp(-((x - 50) ** 2 + (y - 80) ** 2) / 200.0) + np.exp(-((x - 90) ** 2 + (y - 80) ** 2) / 200.0)
    pair = disc(shape, 170, 80, 25) | disc(shape, 220, 80, 25)
    hump2 = np.clip(1 - np.hypot(x - 170, y - 80) / 25, 0, None) + np.clip(1 - np.hypot(x - 220, y - 80) / 25, 0, None)
    p = np.where(one, hump / hump.max(), 0) + np.where(pair, hump2, 0)
    p = np.clip(p, 1e-4, 1 - 1e-4)
    logits = np.stack([np.where(one | pair, 5.0, -5.0), np.log(p / (1 - p))])
    assert particles_from_logits(logits.astype(np.float32), neck_ratio=float("inf")).max() == 4   # cut, and the pair
    assert particles_from_logits(logits.astype(np.float32)).max() == 3


def test_particles_the_model_is_unsure_of_are_dropped_from_the_tables_not_the_mask():
    # two discs in the mask channel: one at logit 5 (probability 0.99), one at logit 0.5 (0.62, under the 0.8
    # floor); binary and instance models alike keep the first as a particle and drop the second
    from training.instances import MIN_CONFIDENCE

    shape = (80, 160)
    a, b = disc(shape, 40, 40, 15), disc(shape, 120, 40, 15)
    mask_logit = np.where(a, 5.0, np.where(b, 0.5, -5.0)).astype(np.float32)
    centre = np.where(a | b, 4.0, -4.0).astype(np.float32)
    for logits in (mask_logit[None], np.stack([mask_logit, centre])):
        kept = particles_from_logits(logits)
        assert kept.max() == 1 and kept[40, 40] == 1 and kept[40, 120] == 0
        assert particles_from_logits(logits, min_confidence=0).max() == 2
    assert 0.62 < MIN_CONFIDENCE < 0.99


def test_largest_pieces_keeps_one_piece_per_particle():
    # labels carried back to a micrograph's pixels and cut to its resampled mask: particle 5 shed a 2 px sliver
    # (a real field scored it as a false particle), particle 7 is whole, particle 9 is two equal halves
    from training.instances import largest_pieces

    labels = np.zeros((40, 40), np.int32)
    labels[5:20, 5:20] = 5
    labels[0, 22:24] = 5                     # the sliver, apart from its particle
    labels[25:35, 25:35] = 7
    labels[25:30, 2:6] = 9
    labels[32:36, 2:6] = 9                   # 20 px against 16 px: the larger half stays
    out = largest_pieces(labels)
    assert out.max() == 3
    assert sorted(np.bincount(out.ravel())[1:].tolist()) == [20, 100, 225]
    assert out[0, 22] == 0 and out[10, 10] > 0 and out[27, 3] > 0 and out[33, 3] == 0
    assert largest_pieces(np.zeros((4, 4), np.int32)).max() == 0
