"""Reading experimental micrographs and their masks: one function per file format, units to Å, masks to {0, 1}.

Files are read with rosettasciio, ncempy (NCEM/Berkeley EMD), tifffile and Pillow; nothing here parses a file
format by hand. Every failure to read a file is a `MicrographError` whose one-line message names the file and
what to do about it. The readers' packages are imported inside each reader: each is needed for one format only.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from ..errors import TemsynthError

EXTENSIONS = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".npy": "npy",
              ".dm3": "dm3", ".dm4": "dm4", ".emd": "emd", ".mrc": "mrc"}
SPLITS = ("finetune", "benchmark")
MASK_SUFFIX = "_mask"
# Å per unit. Print units (inch, cm, mm) are deliberately absent: in a micrograph they are a DPI, not a calibration.
_A_PER_UNIT = {"m": 1e10, "µm": 1e4, "um": 1e4, "micron": 1e4, "microns": 1e4, "nm": 10.0, "nanometer": 10.0,
               "å": 1.0, "a": 1.0, "angstrom": 1.0, "angstroms": 1.0, "pm": 1e-2}
# A TIFF resolution tag in px/cm is read as a calibration only below this: print DPIs give ~40-350 µm.
_MAX_TIFF_TAG_PIXEL_A = 1e4


READER_PACKAGES = ("rosettasciio", "ncempy", "tifffile", "pillow", "h5py")
# The least side a micrograph can have: below it there is no field of view to segment, only a few pixels (a 1 x 1
# "micrograph" is a wrong file, not a small image).
MIN_SIDE_PX = 32


class MicrographError(TemsynthError, ValueError):
    """A micrograph or mask that cannot be used, with a one-line message naming the file and the fix."""


def check_min_side(shape: tuple[int, ...], name: str) -> None:
    """Refuse a micrograph smaller than MIN_SIDE_PX on a side, naming the file and its size."""
    if min(shape) < MIN_SIDE_PX:
        raise MicrographError(f"{name}: {shape[1]} x {shape[0]} px is smaller than {MIN_SIDE_PX} px on a side, too "
                              "small to hold a field of view; give the full micrograph")


def _supported() -> str:
    return ", ".join(sorted(EXTENSIONS))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:200]}"


# ---------------------------------------------------------------- units
def unit_to_A(unit) -> float | None:
    """Å per `unit`, or None for pixel, empty or unknown units (which are no calibration)."""
    if not isinstance(unit, str):
        return None
    u = unit.strip()
    if "\\u" in u:  # ImageJ escapes non-ASCII units in its description, e.g. "\u00C5"
        u = u.encode("ascii", "backslashreplace").decode("unicode_escape")
    u = u.strip("[]").replace("_", "").replace("\u212b", "å").replace("\u03bc", "µ").lower()  # ncempy writes "n_m"
    return _A_PER_UNIT.get(u)


def _scale_to_A(scale, unit) -> float | None:
    factor = unit_to_A(unit)
    if factor is None or scale is None or not np.isfinite(scale) or scale == 0:
        return None
    return abs(float(scale)) * factor


def _pixel_size_A(path: Path, calibration) -> float | None:
    """One pixel size from the (row, column) axis calibrations; None if either axis is uncalibrated."""
    if calibration is None:
        return None
    sy, sx = (_scale_to_A(s, u) for s, u in calibration)
    if sy is None or sx is None:
        return None
    if not math.isclose(sy, sx, rel_tol=1e-3):
        raise MicrographError(f"{path.name}: non-square pixels ({sx:.4g} x {sy:.4g} Å); resample it to square "
                              "pixels before importing")
    return sx


# ------------------------------------------------ readers: each returns [(data, calibration, beam energy in keV)]
def _rsciio_images(signals) -> list:
    out = []
    for s in signals:
        data = np.asarray(s["data"])
        axes = sorted(s["axes"], key=lambda a: a.get("index_in_array", 0))
        cal = [(a.get("scale"), a.get("units")) for a in axes][-2:] if len(axes) >= 2 else None
        out.append((_gray(data), cal, _energy_keV(s.get("original_metadata") or {})))
    return out


def _energy_keV(original: dict) -> float | None:
    """The accelerating voltage a file records (keV), or None: Gatan DM files keep it in their ImageTags
    ("Microscope Info" / "Voltage", in V), Velox EMD files in their optics metadata ("AccelerationVoltage", V)."""
    groups = original.get("ImageList", {})
    volts = [g.get("ImageTags", {}).get("Microscope Info", {}).get("Voltage")
             for g in (groups.values() if isinstance(groups, dict) else []) if isinstance(g, dict)]
    volts.append(original.get("Optics", {}).get("AccelerationVoltage") if isinstance(original.get("Optics"), dict)
                 else None)
    for v in volts:
        try:
            kv = float(v) / 1e3
        except (TypeError, ValueError):
            continue
        if math.isfinite(kv) and kv > 0:
            return kv
    return None


def _gray(data: np.ndarray) -> np.ndarray:
    """RGB(A) -> luminance; rosettasciio returns colour images as structured arrays."""
    if data.dtype.names:
        rgb = np.stack([data[c] for c in ("R", "G", "B") if c in data.dtype.names], axis=-1)
        return _luminance(rgb)
    return data


def _luminance(rgb: np.ndarray) -> np.ndarray:
    if rgb.shape[-1] < 3:
        return rgb[..., 0]
    w = np.array([0.299, 0.587, 0.114], np.float64)  # ITU-R 601, as Pillow's "L" conversion
    return rgb[..., :3].astype(np.float64) @ w


def _read_tiff(path: Path) -> list:
    from rsciio.tiff import file_reader

    images = _rsciio_images(file_reader(str(path)))
    if len(images) == 1 and _pixel_size_A(path, images[0][1]) is None:
        data, cal, energy = images[0]
        images = [(data, _tiff_tag_calibration(path) or cal, energy)]
    return images


def _tiff_tag_calibration(path: Path):
    """What rosettasciio leaves out: ImageJ units other than micron, and resolution tags in px/cm."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return None
        per_unit = [tags[k].value[0] / tags[k].value[1] for k in ("YResolution", "XResolution")]
        if tif.is_imagej and (tif.imagej_metadata or {}).get("unit"):
            unit = tif.imagej_metadata["unit"]
            return [(1 / r, unit) for r in per_unit]
        if "ResolutionUnit" in tags and tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER:
            cal = [(1e4 / r, "µm") for r in per_unit]
            if all(s * 1e4 < _MAX_TIFF_TAG_PIXEL_A for s, _ in cal):
                return cal
    return None


def _read_pil(path: Path) -> list:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("1", "L", "I", "F") or im.mode.startswith("I;"):
            data = np.asarray(im)
        else:  # palette, RGB, RGBA, LA, CMYK
            data = _luminance(np.asarray(im.convert("RGB")))
    return [(data, None, None)]  # PNG/JPEG carry a print DPI at most, never a microscope calibration


def _read_npy(path: Path) -> list:
    return [(np.load(path, allow_pickle=False), None, None)]


def _read_dm(path: Path) -> list:
    from rsciio.digitalmicrograph import file_reader

    return _rsciio_images(file_reader(str(path)))


def _emd_variant(path: Path) -> str:
    """velox, hyperspy (Berkeley EMD written by rosettasciio) or ncem (Berkeley EMD of any other writer)."""
    import h5py

    with h5py.File(path, "r") as f:
        # The test rosettasciio applies (only in a private module): Velox files carry a JSON "Version" dataset.
        if "Version" in f and '"Velox"' in f["Version"][0].decode("utf-8", "replace").replace(" ", ""):
            return "velox"
        signals = f.get("signals")
        return "hyperspy" if signals is not None and signals.attrs.get("emd_group_type") == 1 else "ncem"


def _read_emd(path: Path) -> list:
    if _emd_variant(path) in ("velox", "hyperspy"):
        from rsciio.emd import file_reader

        return _rsciio_images(file_reader(str(path), select_type="image"))
    # rosettasciio stores and reads Berkeley EMD arrays transposed (its own files round-trip); ncempy, the format
    # authors' reader, takes the array as stored, which is how ncempy and the NCEM tools write them.
    from ncempy.io.emd import emdReader

    d = emdReader(path, dsetNum=0)
    cal = list(zip(d["pixelSize"], d["pixelUnit"]))[-2:]
    return [(np.asarray(d["data"]), cal if len(cal) == 2 else None, None)]


def _read_mrc(path: Path) -> list:
    from rsciio.mrc import file_reader

    return _rsciio_images(file_reader(str(path)))


_READERS: dict[str, Callable[[Path], list]] = {
    "tiff": _read_tiff, "png": _read_pil, "jpeg": _read_pil, "npy": _read_npy, "dm3": _read_dm, "dm4": _read_dm,
    "emd": _read_emd, "mrc": _read_mrc}


def _format_of(path: Path) -> str:
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise MicrographError(f"{path.name}: unsupported extension {path.suffix or '(none)'!r}; supported: "
                              f"{_supported()}; export it to TIFF from the acquisition software")
    return fmt


def _read_any(path: Path) -> tuple[np.ndarray, object, str, float | None]:
    path = Path(path)
    fmt = _format_of(path)
    if not path.is_file():
        raise MicrographError(f"{path}: no such file")
    try:
        images = _READERS[fmt](path)
    except MicrographError:
        raise
    except Exception as e:  # every reader has its own exception types; the user needs the file name
        raise MicrographError(f"{path.name}: cannot be read as {fmt} ({_one_line(e)}); check the file is "
                              "complete (not a truncated copy) or re-export it") from None
    data, cal, energy = _only_image(path, images)
    return data, cal, _format_detail(path, fmt), energy


def _format_detail(path: Path, fmt: str) -> str:
    if fmt != "emd":
        return fmt
    return "emd-velox" if _emd_variant(path) == "velox" else "emd-ncem"


def _only_image(path: Path, images: list) -> tuple[np.ndarray, object, float | None]:
    """The one 2-D image of a file; DM and Velox files may also hold thumbnails or other signals."""
    squeezed = [(_squeeze_leading(d), c, e) for d, c, e in images]
    flat = [(d, c, e) for d, c, e in squeezed if d.ndim == 2]
    if not flat:
        shapes = ", ".join(" x ".join(map(str, d.shape)) for d, _, _ in squeezed) or "nothing"
        raise MicrographError(f"{path.name}: holds {shapes}, not a 2-D image; export one 2-D frame (or the sum "
                              "of a stack) before importing")
    data, cal, energy = max(flat, key=lambda dce: dce[0].size)  # thumbnails are the smaller ones
    if np.iscomplexobj(data):
        raise MicrographError(f"{path.name}: complex data (an FFT or exit wave?), expected a recorded intensity")
    return data, cal, energy


def _squeeze_leading(data: np.ndarray) -> np.ndarray:
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    return data


class Micrograph(NamedTuple):
    image: np.ndarray            # 2-D float32
    pixel_size_A: float | None   # None: the file is uncalibrated
    format: str
    energy_keV: float | None     # the accelerating voltage the file records (DM, Velox EMD), else None


def load_micrograph(path) -> Micrograph:
    """A micrograph file read once: its image, pixel size, format and recorded beam energy."""
    path = Path(path)
    data, cal, fmt, energy = _read_any(path)
    image = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(image)):
        raise MicrographError(f"{path.name}: contains NaN or infinite pixels; replace them before importing")
    return Micrograph(image, _pixel_size_A(path, cal), fmt, energy)


def read_micrograph(path) -> tuple[np.ndarray, float | None, str]:
    """(2-D float32 image, pixel size in Å or None if the file is uncalibrated, format name)."""
    return load_micrograph(path)[:3]


def parse_mask_values(text: str | None) -> dict[float, int] | None:
    """`--mask-values 0=0,1=1,2=1` (or `255=0,0=1` for a white background) -> {file value: 0 or 1}."""
    if text is None:
        return None
    out: dict[float, int] = {}
    for item in str(text).split(","):
        k, sep, v = item.partition("=")
        try:
            key, label = float(k), int(v)
        except ValueError:
            key, label = None, None
        if not sep or key is None or label not in (0, 1) or not math.isfinite(key):
            raise MicrographError(f"--mask-values {text!r}: write VALUE=LABEL pairs with LABEL 0 (background) or 1 "
                                  "(particle), e.g. --mask-values 0=0,1=1,2=1 or 255=0,0=1")
        if key in out:
            raise MicrographError(f"--mask-values {text!r}: value {k.strip()} is mapped twice")
        out[key] = label
    return out


def _values(data: np.ndarray, limit: int = 8) -> str:
    vals = np.unique(data)
    shown = ", ".join(f"{v:g}" for v in vals[:limit])
    return "{" + shown + (f", … ({len(vals)} values)" if len(vals) > limit else "") + "}"


def read_mask(path, shape: tuple[int, int] | None = None, image_path=None,
              mask_values: dict[float, int] | None = None) -> np.ndarray:
    """Binary uint8 mask (1 = particle). With `shape`, it must match the image's shape.

    Accepted as they are: {0, 1} labels (and booleans), and {0, 255} images with 255 = particle unless 255 is
    most of the field and of its border (a white background). Anything else needs `mask_values`
    ({file value: 0/1}, every value present mapped) and is otherwise refused naming the values found.
    """
    path = Path(path)
    data, _, fmt, _ = _read_any(path)
    data = np.asarray(data, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise MicrographError(f"{path.name}: mask holds NaN or infinite values; a mask is 0 = background, 1 = particle")
    if mask_values is not None:
        present = np.unique(data)
        unmapped = [v for v in present if float(v) not in mask_values]
        if unmapped:
            raise MicrographError(f"{path.name}: mask values {_values(np.asarray(unmapped))} are not in --mask-values "
                                  f"({', '.join(f'{k:g}={v}' for k, v in mask_values.items())}); map every value")
        mask = np.zeros(data.shape, np.uint8)
        for v, label in mask_values.items():
            if label:
                mask[data == v] = 1
    elif fmt == "jpeg":
        # JPEG compression leaves faint non-zero pixels around every edge; a half-maximum threshold ignores them.
        mask = (data > data.max() / 2).astype(np.uint8)
        _refuse_white_background(path, mask, "the bright value")
    else:
        present = set(np.unique(data).tolist())
        if present <= {0.0, 1.0}:
            mask = (data == 1).astype(np.uint8)
        elif present <= {0.0, 255.0}:
            mask = (data == 255).astype(np.uint8)
            _refuse_white_background(path, mask, "255")
        else:
            raise MicrographError(
                f"{path.name}: mask values {_values(data)} are not a binary mask ({{0, 1}}, {{0, 255}} or true/false); "
                "say which are particle with --mask-values, e.g. --mask-values "
                + ",".join(f"{v:g}={int(v != min(present))}" for v in sorted(present)[:4]))
    if shape is not None and mask.shape != tuple(shape):
        other = Path(image_path).name if image_path is not None else "the image"
        raise MicrographError(f"{path.name}: mask is {_hw(mask.shape)} px but {other} is {_hw(shape)} px; "
                              "masks must be drawn on the full-size micrograph")
    return mask


def _refuse_white_background(path: Path, mask: np.ndarray, what: str) -> None:
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if mask.mean() > 0.5 and border.mean() > 0.5:
        raise MicrographError(
            f"{path.name}: {what} covers {mask.mean():.0%} of the mask and {border.mean():.0%} of its border, like a "
            "white background with dark particles; pass --mask-values 255=0,0=1 if so (or --mask-values 0=0,255=1 "
            "to import it as particle)")


def _hw(shape) -> str:
    return f"{shape[1]} x {shape[0]}"
