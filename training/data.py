"""Dataset folders → torch datasets: Parquet (in memory, pushed-down query) or WebDataset (streamed shards).

Augmentations keep the physics of a micrograph: crops, flips and 90° rotations are symmetries of the
projection geometry; intensities are only rescaled per image, never mixed between pixels.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler

from generators.dataset import DatasetFolder, reading
from generators.errors import TemsynthError
from generators.folder import RunError
from generators.query import Query, QueryError, wds_filter

from .config import AugmentConfig, DataSource


class DataError(TemsynthError, ValueError):
    """A data source that cannot be used; the message names the config field and the fix."""


def normalise(image: np.ndarray, kind: str) -> np.ndarray:
    image = image.astype(np.float32, copy=False)
    if kind == "zscore":
        return (image - image.mean()) / max(float(image.std()), 1e-6)
    if kind == "percentile":
        lo, hi = (float(v) for v in np.percentile(image, [0.5, 99.5]))
        return np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / max(hi - lo, 1e-6)


def _degrade(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """What happens to a micrograph after the camera: a softer rendering and 8-bit display grey levels."""
    if cfg.blur_sigma_px > 0:
        from scipy.ndimage import gaussian_filter

        image = gaussian_filter(image.astype(np.float32), float(rng.uniform(0, cfg.blur_sigma_px)), mode="reflect")
    if cfg.display:
        lo, hi = np.percentile(image, [rng.uniform(0, 2), rng.uniform(98, 100)])
        image = np.round(np.clip((image - lo) / max(float(hi - lo), 1e-6), 0, 1) * 255).astype(np.float32)
    return image


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig):
    h, w = image.shape
    if cfg.crop_px and cfg.crop_px < min(h, w):
        y, x = rng.integers(0, h - cfg.crop_px + 1), rng.integers(0, w - cfg.crop_px + 1)
        image, mask = image[y:y + cfg.crop_px, x:x + cfg.crop_px], mask[y:y + cfg.crop_px, x:x + cfg.crop_px]
    if cfg.flips and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if cfg.rot90:
        k = int(rng.integers(0, 4))
        image, mask = np.rot90(image, k), np.rot90(mask, k)
    if cfg.blur_sigma_px > 0 or cfg.display:
        image = _degrade(image, rng, cfg)
    return image, mask


def to_sample(image: np.ndarray, mask: np.ndarray, kind: str) -> dict:
    """mask: (H, W) 0/1, or (H, W, 2) for instance models: 0/1 and the distance target quantised to 0..255
    (channels last, so that crops, flips and rotations move it as they move a mask)."""
    if mask.ndim == 3:
        m = np.moveaxis(mask, -1, 0).astype(np.float32)
        m[1:] /= 255.0
    else:
        m = np.asarray(mask, dtype=np.float32)[None]
    return {"image": torch.from_numpy(np.ascontiguousarray(normalise(image, kind))[None]),
            "mask": torch.from_numpy(np.ascontiguousarray(m))}


# ---------------------------------------------------------------- Parquet
def open_source(src: DataSource, field: str = "data") -> DatasetFolder | None:
    """The source's folder, opened and checked once (a missing shard must stop training, not shrink the data);
    None for a folder without a manifest, which is read by name."""
    root = Path(src.path)
    if not (root / "data").is_dir():
        raise DataError(f"{field}.path: {root} is not a dataset folder (no data/); build one with `temsynth generate` "
                        "or dataset_scripts/import_experimental.py")
    if not (root / "manifest.json").exists():
        return None
    try:
        return DatasetFolder.open(root)
    except RunError as err:
        raise DataError(f"{field}.path: {err}") from None


_UNOPENED = object()  # a reader called without the folder opens it itself


def _split_files(src: DataSource, field: str, fmt: str = "parquet", folder=_UNOPENED) -> list[str]:
    """The split's shards as the folder's manifest lists them; a folder without a manifest is read by name."""
    root = Path(src.path)
    if folder is _UNOPENED:
        folder = open_source(src, field)
    if folder is not None:
        files = folder.files(fmt, src.split)
    else:
        files = sorted(str(p) for p in (root / "data").glob(f"{src.split}-*.parquet"))
    if not files and fmt == "parquet":
        have = sorted({p.name.split("-")[0] for p in (root / "data").glob("*.parquet")})
        raise DataError(f"{field}.split: {root} has no split {src.split!r}; it has {have}")
    return files


def read_arrays(src: DataSource, seed: int = 0, field: str = "data", instances: bool = False, folder=_UNOPENED):
    """(images (n, h, w) float32, masks (n, h, w) uint8, record ids) of one split, query pushed into the scan.

    instances: a fourth item, {"instance_mask": (n, h, w) uint8, "pixel_size_A": (n,) float64 or None}: the
    particles the instance scores and instance training need (imported experimental records have no instance
    labels: their binary mask stands in, and its connected components are their particles).
    folder: the source's `open_source`, when the caller opened it already."""
    ds = pads.dataset(_split_files(src, field, folder=folder), format="parquet")
    try:
        q = Query(src.query, ds.schema) if src.query else None
    except QueryError as err:
        raise QueryError(f"{field}.query: {err}") from None
    columns = ["record_id", "image", "mask"]
    labelled = "instance_mask" in ds.schema.names
    if instances:
        columns += (["instance_mask"] if labelled else []) + \
            (["pixel_size_A"] if "pixel_size_A" in ds.schema.names else [])
    table = _read(ds, src, field, q, columns=columns).sort_by("record_id")
    if len(table) == 0:
        raise DataError(f"{field}.query selects no records of {src.label}")
    if src.n_images is not None:
        if src.n_images > len(table):
            raise DataError(f"{field}.n_images: asked for {src.n_images} but {src.label} has {len(table)} records")
        keep = np.sort(np.random.default_rng([seed, 7]).choice(len(table), src.n_images, replace=False))
        table = table.take(pa.array(keep))
    out = (_stack(table, "image", np.float32, field), _stack(table, "mask", np.uint8, field),
           table["record_id"].to_pylist())
    if not instances:
        return out
    px = (np.asarray(table["pixel_size_A"].to_pylist(), np.float64) if "pixel_size_A" in table.column_names
          else None)
    # Records without instance labels (imported micrographs: hand-drawn binary masks) have the mask's connected
    # components as their particles: the mask itself stands for the labels.
    inst = _stack(table, "instance_mask", np.uint8, field) if labelled else out[1]
    return (*out, {"instance_mask": inst, "pixel_size_A": px})


def _read(ds, src: DataSource, field: str, query: Query | None, columns: list[str]) -> pa.Table:
    """A scan (filtered by the query) whose unreadable shard (a corrupt row group) is one line naming the folder,
    not a traceback."""
    try:
        with reading(src.path):
            return query.table(ds, columns) if query is not None else ds.to_table(columns=columns)
    except RunError as err:
        raise DataError(f"{field}.path: {err}") from None


def _stack(table: pa.Table, column: str, dtype, field: str) -> np.ndarray:
    col = table[column].combine_chunks()
    rows = col.flatten()
    h = pa.compute.list_value_length(col).to_numpy()
    w = pa.compute.list_value_length(rows).to_numpy()
    if len(set(h.tolist()) | set(w.tolist())) != 1:
        raise DataError(f"{field}: images of several sizes ({sorted(set(h.tolist()))}); select one size with the "
                        "query, e.g. image_size_px == 256")
    return rows.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(len(table), h[0], w[0])


class Pooled:
    """Several sources' image stacks of different sizes indexed as one sequence (no copy)."""

    def __init__(self, stacks: list[np.ndarray]):
        self.stacks = stacks
        self.ends = np.cumsum([len(a) for a in stacks])

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        k = int(np.searchsorted(self.ends, i, side="right"))
        return self.stacks[k][i - (self.ends[k - 1] if k else 0)]


class ArraySet(Dataset):
    """In-memory records. Training draws come from (seed, epoch, index), so a resumed run sees the same batches.

    Masks (n, h, w), or (n, h, w, 2) with the distance target for instance models' training. A benchmark set
    given `instances` (n, h, w labels) and `pixel_size_A` (n,) adds both to each sample, for the particle
    scores."""

    def __init__(self, images, masks, ids, augment_cfg: AugmentConfig, train: bool, seed: int = 0,
                 instances=None, pixel_size_A=None):
        self.images, self.masks, self.ids = images, masks, ids
        self.cfg, self.train, self.seed, self.epoch = augment_cfg, train, seed, 0
        self.instances, self.pixel_size_A = instances, pixel_size_A

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image, mask = self.images[i], self.masks[i]
        if self.train:
            image, mask = augment(image, mask, np.random.default_rng([self.seed, self.epoch, i]), self.cfg)
        sample = to_sample(image, mask, self.cfg.normalise)
        if self.instances is not None:
            sample["instances"] = torch.from_numpy(np.ascontiguousarray(self.instances[i], dtype=np.int32))
            px = self.pixel_size_A[i] if self.pixel_size_A is not None else np.nan
            sample["pixel_size_A"] = torch.tensor(float(px), dtype=torch.float64)
        return sample


class EpochSampler(Sampler):
    """A permutation per epoch from (seed, epoch): no hidden generator state to lose in a kill."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, 1, self.epoch]).permutation(self.n).tolist())


# ---------------------------------------------------------------- WebDataset
class WdsSet(IterableDataset):
    """Streams a split's tar shards; the query reads only each sample's json, before any image is decoded."""

    def __init__(self, src: DataSource, augment_cfg: AugmentConfig, seed: int = 0, shuffle_buffer: int = 256,
                 field: str = "data", folder=_UNOPENED):
        root = Path(src.path)
        folder = open_source(src, field) if folder is _UNOPENED else folder
        if folder is not None:
            self.urls = folder.files("webdataset", src.split)
        else:
            self.urls = sorted(str(p) for p in (root / "wds").glob(f"{src.split}-*.tar"))
        if not self.urls:
            raise DataError(f"{field}.format: {root} has no WebDataset shards wds/{src.split}-*.tar; "
                            "use format: parquet")
        if src.n_images is not None:
            raise DataError(f"{field}.n_images needs format: parquet (a stream has no fixed subset to draw from)")
        ds = pads.dataset(_split_files(src, field, folder=folder), format="parquet")
        try:
            self.keep = wds_filter(src.query, ds.schema) if src.query else None
            q = Query(src.query, ds.schema) if src.query else None
        except QueryError as err:
            raise QueryError(f"{field}.query: {err}") from None
        # The same records are in the Parquet shards: an empty selection is refused before training starts
        # (a stream that yields nothing would otherwise train zero steps and save an untrained model).
        if q is not None and len(_read(ds, src, field, q, columns=["record_id"])) == 0:
            raise DataError(f"{field}.query selects no records of {src.label}")
        self.cfg, self.seed, self.epoch, self.buffer = augment_cfg, seed, 0, shuffle_buffer

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _samples(self):
        import webdataset as wds

        pipe = wds.WebDataset(self.urls, shardshuffle=False, nodesplitter=None, workersplitter=wds.split_by_worker,
                              empty_check=False)
        for s in pipe:
            if self.keep is None or self.keep(s):
                yield s["__key__"], s["image.npy"], s["mask.png"]

    def __iter__(self):
        rng = np.random.default_rng([self.seed, 2, self.epoch])
        buf = []
        for key, img_bytes, mask_bytes in self._samples():
            buf.append((key, img_bytes, mask_bytes))
            if len(buf) >= self.buffer:
                yield self._decode(buf.pop(int(rng.integers(len(buf)))), rng)
        rng.shuffle(buf)
        for item in buf:
            yield self._decode(item, rng)

    def _decode(self, item, rng):
        from PIL import Image

        _, img_bytes, mask_bytes = item
        image = np.load(io.BytesIO(img_bytes))
        mask = np.asarray(Image.open(io.BytesIO(mask_bytes)), dtype=np.uint8)
        image, mask = augment(image, mask, rng, self.cfg)
        return to_sample(image, mask, self.cfg.normalise)


def with_distance(masks: np.ndarray, instance_masks: np.ndarray) -> np.ndarray:
    """(n, h, w, 2) uint8: each mask beside its distance target (training/instances.py) quantised to 0..255."""
    from .instances import distance_target

    out = np.empty((*masks.shape, 2), np.uint8)
    out[..., 0] = masks
    for i, inst in enumerate(instance_masks):
        # the instance labels where the mask is: they cover it exactly in simulated records
        out[i, ..., 1] = np.round(distance_target(np.where(masks[i] > 0, inst, 0)) * 255)
    return out


def training_set(sources: list[DataSource], augment_cfg: AugmentConfig, seed: int, instances: bool = False,
                 folders: list | None = None):
    """folders: the sources' `open_source`, in order, when the caller opened them already."""
    folders = folders if folders is not None else [_UNOPENED] * len(sources)
    if sources[0].format == "webdataset":
        if instances:
            raise DataError("data.format: instance models (model.instances) train from Parquet records; "
                            "use format: parquet")
        return WdsSet(sources[0], augment_cfg, seed, folder=folders[0])
    more = {"instances": True} if instances else {}
    # a folder the caller opened is passed on; one it did not is opened by read_arrays itself
    parts = [read_arrays(s, seed, field=f"data[{i}]" if len(sources) > 1 else "data", **more,
                         **({} if f is _UNOPENED else {"folder": f}))
             for i, (s, f) in enumerate(zip(sources, folders))]
    if instances:
        parts = [(p[0], with_distance(p[1], p[3]["instance_mask"]), p[2]) for p in parts]
    sizes = sorted({p[0].shape[1:] for p in parts})
    if len(sizes) > 1:
        # Sources of several image sizes (real tiles beside simulated fields) pool when every draw is cropped
        # to one size: the crop makes the batches uniform.
        smallest = min(min(s) for s in sizes)
        if not augment_cfg.crop_px or augment_cfg.crop_px > smallest:
            raise DataError(f"data: the sources' images differ in size ({sizes}); set augment.crop_px <= {smallest} "
                            "to pool them as crops of one size, or pool folders of one image size")
        images, masks = (Pooled([p[k] for p in parts]) for k in (0, 1))
    else:
        images, masks = (np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in (0, 1))
    ids = [i for p in parts for i in p[2]]
    return ArraySet(images, masks, ids, augment_cfg, train=True, seed=seed)


def benchmark_set(src: DataSource, augment_cfg: AugmentConfig, field: str, instances: bool = False,
                  folder=_UNOPENED) -> ArraySet:
    """instances: samples carry the true particles and pixel size, for the particle scores."""
    if not instances:
        images, masks, ids = read_arrays(src, field=field, folder=folder)
        return ArraySet(images, masks, ids, augment_cfg, train=False)
    images, masks, ids, extra = read_arrays(src, field=field, instances=True, folder=folder)
    return ArraySet(images, masks, ids, augment_cfg, train=False, instances=extra["instance_mask"],
                    pixel_size_A=extra["pixel_size_A"])


def source_json(src: DataSource, folder=_UNOPENED) -> dict:
    """What a model card and a results table record of a data source: where, which records, which content,
    and the pixel size a model trained on it expects: the folder's own (`DatasetFolder.pixel_size_A`)."""
    folder = open_source(src, "data") if folder is _UNOPENED else folder
    if folder is not None:
        fp, sizes = folder.fingerprint, [folder.pixel_size_A]
    else:  # a folder without a manifest still trains; it has no content fingerprint, and only its records
        fp, sizes = None, []  # say their pixel size
        ds = pads.dataset(_split_files(src, "data", folder=None), format="parquet")
        if "pixel_size_A" in ds.schema.names:
            q = Query(src.query, ds.schema) if src.query else None
            sizes = sorted(set(_read(ds, src, "data", q, columns=["pixel_size_A"])["pixel_size_A"].to_pylist()))
    return {**src.model_dump(mode="json"), "fingerprint": fp, "pixel_sizes_A": sizes}
