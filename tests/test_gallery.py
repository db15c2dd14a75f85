"""The `preview` column and `temsynth gallery`: pictures of the data, in a real headless browser."""
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from scipy import ndimage

from temsynth.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_preview_is_the_image_in_grey_with_the_masks_outline(built):
    """Palette index 255 exactly on the mask's boundary pixels; elsewhere grey levels rise with the image."""
    import pyarrow.dataset as pads
    from PIL import Image

    t = pads.dataset(built / "data", format="parquet").to_table(columns=["record_id", "image", "mask", "preview"])
    sizes = []
    for i in range(len(t)):
        image = np.asarray(t["image"][i].as_py(), np.float32)
        mask = np.asarray(t["mask"][i].as_py()) > 0
        png = t["preview"][i].as_py()["bytes"]
        sizes.append(len(png))
        pic = Image.open(io.BytesIO(png))
        assert pic.format == "PNG" and pic.mode == "P" and pic.size == image.shape[::-1]
        idx = np.asarray(pic)
        outline = mask & ~ndimage.binary_erosion(mask)
        assert outline.any() == mask.any() and np.array_equal(idx == 255, outline)
        grey, im = idx[~outline].astype(int), image[~outline]
        lo, hi = np.percentile(image, [0.5, 99.5])
        inside = (im > lo) & (im < hi)
        order = np.argsort(im[inside], kind="stable")
        assert np.all(np.diff(grey[inside][order]) >= 0)  # monotonic: brighter counts, lighter grey
        assert grey.max() <= 254 and grey.min() == 0
    assert max(sizes) < 128 * 128 * 1.1  # one byte per pixel at most, before compression


def test_load_dataset_types_the_preview_as_an_image(built):
    from datasets import load_dataset

    ds = load_dataset(str(built))
    assert type(ds["train"].features["preview"]).__name__ == "Image"
    assert ds["train"][0]["preview"].size == (128, 128)


def test_gallery_writes_a_page_per_query_and_refuses_bad_input(built, tmp_path, capsys):
    out = tmp_path / "page"
    assert main(["gallery", str(built), "split == 'train'", "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S)
                      .group(1).replace("<\\/", "</"))
    assert data["records"] and {r["split"] for r in data["records"]} == {"train"}
    assert all((out / r["img"]).is_file() for r in data["records"])
    assert {f["column"] for f in data["filters"]} >= {"defocus_nm", "dose_e_per_A2"}
    assert main(["gallery", str(built), "no_such_column > 1", "--out", str(tmp_path / "x")]) == 2
    assert "no_such_column" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_gallery_page_renders_thumbnails_and_filters_in_headless_chromium(built, tmp_path):
    """From a file:// URL, no server: the script runs (counts), the fragment filters, the thumbnails are drawn
    (the screenshot holds the outline's orange and many grey levels)."""
    from PIL import Image

    out = tmp_path / "page"
    assert main(["gallery", str(built), "--out", str(out)]) == 0
    n = len(json.loads(re.search(r'type="application/json">(.*?)</script>', (out / "index.html").read_text(),
                                 re.S).group(1).replace("<\\/", "</"))["records"])
    url = (out / "index.html").as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--hide-scrollbars", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert f"{n} of {n} shown" in dom
    dom = subprocess.run([*flags, "--dump-dom", url + "#split=test"], capture_output=True, text=True,
                         timeout=120).stdout
    n_test = len([1 for r in json.loads(re.search(r'type="application/json">(.*?)</script>',
                                                  (out / "index.html").read_text(), re.S).group(1))["records"]
                  if r["split"] == "test"])
    assert 0 < n_test < n and f"{n_test} of {n} shown" in dom
    shot = tmp_path / "gallery.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,900", url], capture_output=True,
                   timeout=120)
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    orange = (abs(rgb[..., 0] - 255) < 30) & (abs(rgb[..., 1] - 140) < 40) & (rgb[..., 2] < 60)
    greys = rgb[(rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])][:, 0]
    assert orange.sum() > 200 and len(np.unique(greys)) > 100
    shutil.copy(shot, tmp_path.parent / "gallery_screenshot.png")  # kept in pytest's tmp tree, for a look
