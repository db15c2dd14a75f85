"""A minimal Gatan DigitalMicrograph (DM3/DM4) writer, for tests only: no Python library writes DM files.

Layout (Gatan's tag-file format, as documented by C. Boothroyd and read by rosettasciio and ncempy):
header = version (>i4), root length (>u4 in DM3, >u8 in DM4), byte order (>i4, 1 = little-endian data);
then the root tag group. A group is sorted (u1), open (u1), tag count (>i4 / >i8). A tag entry is
kind (u1: 20 group, 21 data), name length (>i2), name; in DM4 then the entry's byte length (>u8). A data
entry is "%%%%", the info-array length and the info array (big-endian, >i4 / >i8 each), then the value in the
header's byte order. Groups are lists of (name, value) pairs because DM lists use unnamed entries.
"""
from __future__ import annotations

import struct

import numpy as np

_SCALAR = {np.dtype("int16"): 2, np.dtype("int32"): 3, np.dtype("uint16"): 4, np.dtype("uint32"): 5,
           np.dtype("float32"): 6, np.dtype("float64"): 7, np.dtype("bool"): 8, np.dtype("int8"): 9,
           np.dtype("uint8"): 10, np.dtype("int64"): 11, np.dtype("uint64"): 12}
# DM image DataType codes: a different numbering from the tag element types above.
_IMAGE_TYPE = {np.dtype("int16"): 1, np.dtype("float32"): 2, np.dtype("uint8"): 6, np.dtype("int32"): 7,
               np.dtype("int8"): 9, np.dtype("uint16"): 10, np.dtype("uint32"): 11, np.dtype("float64"): 12}


class _Encoder:
    def __init__(self, version: int):
        self.version = version
        self.count = ">i4" if version == 3 else ">i8"

    def _n(self, *values: int) -> bytes:
        return b"".join(np.array(v, self.count).tobytes() for v in values)

    def group(self, entries: list[tuple[str, object]]) -> bytes:
        return b"\x00\x00" + self._n(len(entries)) + b"".join(self.entry(k, v) for k, v in entries)

    def entry(self, name: str, value) -> bytes:
        kind, body = (20, self.group(value)) if isinstance(value, list) else (21, self.data(value))
        label = name.encode("latin-1")
        head = struct.pack(">Bh", kind, len(label)) + label
        return head + (struct.pack(">Q", len(body)) if self.version == 4 else b"") + body

    def data(self, value) -> bytes:
        if isinstance(value, str):  # DM strings are arrays of UTF-16 code units
            codes = np.frombuffer(value.encode("utf-16-le"), "<u2")
            return self._array(codes)
        arr = np.asarray(value)
        if arr.ndim == 0:
            return b"%%%%" + self._n(1, _SCALAR[arr.dtype]) + arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        return self._array(arr.reshape(-1))

    def _array(self, arr: np.ndarray) -> bytes:
        info = self._n(3, 20, _SCALAR[arr.dtype], arr.size)
        return b"%%%%" + info + arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def _calibration(scale: float, units: str) -> list:
    return [("Origin", np.float32(0)), ("Scale", np.float32(scale)), ("Units", units)]


def write_dm(path, image: np.ndarray, pixel_size: float, units: str = "nm", version: int = 4,
             voltage_V: float | None = None) -> None:
    """Write one 2-D image with a square-pixel calibration of `pixel_size` `units` (and, given `voltage_V`, the
    microscope's accelerating voltage in its ImageTags, as Gatan's software records it)."""
    if version not in (3, 4):
        raise ValueError("DM version is 3 or 4")
    image = np.ascontiguousarray(image)
    rows, cols = image.shape
    image_data = [
        ("Calibrations", [("Brightness", _calibration(1.0, "")),
                          ("Dimension", [("", _calibration(pixel_size, units)),    # x (columns) first
                                         ("", _calibration(pixel_size, units))]),
                          ("DisplayCalibratedUnits", np.bool_(True))]),
        ("Data", image),
        ("DataType", np.int32(_IMAGE_TYPE[image.dtype])),
        ("Dimensions", [("", np.uint32(cols)), ("", np.uint32(rows))]),
        ("PixelDepth", np.uint32(image.dtype.itemsize)),
    ]
    tags = [("Microscope Info", [("Voltage", np.float64(voltage_V))])] if voltage_V is not None else []
    root = [("ImageList", [("", [("ImageData", image_data), ("ImageTags", tags), ("Name", "test image")])])]
    enc = _Encoder(version)
    body = enc.group(root)
    length = struct.pack(">I", len(body)) if version == 3 else struct.pack(">Q", len(body))
    with open(path, "wb") as f:
        f.write(struct.pack(">i", version) + length + struct.pack(">i", 1) + body + b"\x00" * 8)
