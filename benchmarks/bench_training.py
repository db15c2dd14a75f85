"""Training throughput of the demo U-Net, and whether data loading keeps up with it, measured in one run.

    python benchmarks/bench_training.py [--dataset tem_au_np] [--config training/examples/demo.yaml]
        [--steps 20] [--mixed-precision bf16] [--device cuda]

Prints images/s of optimizer steps (forward + backward + Adam) and of the two loaders (Parquet in memory,
WebDataset streamed) producing the same augmented batches, and the ratio loader / training: above 1 the
loader is not the bottleneck.
"""
import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

from training.config import load_train_config
from training.data import EpochSampler, training_set
from training.metrics import segmentation_loss
from training.models import build_model


def loader_rate(ds, batch_size, num_workers, epochs=2):
    sampler = EpochSampler(len(ds), 0) if hasattr(ds, "__len__") else None
    dl = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    n, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in dl:
            n += len(batch["image"])
    return n / (time.perf_counter() - t0)


def train_rate(cfg, batch, steps, device, mixed_precision):
    model = build_model(cfg.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
    x, y = batch["image"].to(device), batch["mask"].to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision == "fp16")

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = segmentation_loss(model(x), y, cfg.loss)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(x) / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="training/examples/demo.yaml")
    p.add_argument("--dataset", default=None, help="override data.path (default: the config's)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    over = {"output_dir": "bench_out/unused"}
    if a.dataset:
        over["data.path"] = a.dataset
    if a.batch_size:
        over["batch_size"] = a.batch_size
    cfg = load_train_config(a.config, over)
    device = torch.device(a.device)

    t0 = time.perf_counter()
    parquet = training_set(cfg.data_sources, cfg.augment, cfg.seed)
    read_s = time.perf_counter() - t0
    wds = training_set([cfg.data_sources[0].model_copy(update={"format": "webdataset"})], cfg.augment, cfg.seed)
    batch = next(iter(DataLoader(parquet, batch_size=cfg.batch_size)))
    train = train_rate(cfg, batch, a.steps, device, a.mixed_precision)
    pq_rate = loader_rate(parquet, cfg.batch_size, a.num_workers)
    wds_rate = loader_rate(wds, cfg.batch_size, a.num_workers)
    out = {"device": str(device), "torch_threads": torch.get_num_threads(), "mixed_precision": a.mixed_precision,
           "batch": list(batch["image"].shape), "records": len(parquet),
           "train_images_per_s": round(train, 1),
           "parquet_read_into_memory_s": round(read_s, 3),
           "parquet_loader_images_per_s": round(pq_rate, 1), "wds_loader_images_per_s": round(wds_rate, 1),
           "parquet_loader_over_training": round(pq_rate / train, 2),
           "wds_loader_over_training": round(wds_rate / train, 2)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
