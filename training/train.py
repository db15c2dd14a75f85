"""Train a segmentation network with Accelerate; the same script on CPU, one GPU or `accelerate launch` on many.

    python -m training.train --config train.yaml
    accelerate launch -m training.train --config train.yaml

Every epoch: Dice/IoU on every benchmark (gathered across processes), one metrics row per benchmark, the best
model (by the monitor benchmark) and a resumable checkpoint. A killed run re-run with the same config continues
from its last checkpoint and produces the same numbers as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from generators.errors import TemsynthError, exit_status
from generators.files import atomic_path

from .card import write_model_card
from .config import TrainConfig, differing_keys, load_train_config
from .data import EpochSampler, benchmark_set, open_source, source_json, training_set
from .instances import aggregate, match, particles_from_logits
from .metrics import counts, scores, segmentation_loss
from .models import CONFIG_FILE, MODEL_FILE, ModelFolderConfig, build_model, load_model, read_model_config, save_model
from .results import METRICS_FILE, PARTICLE_SCORES, append_metrics, read_metrics, rewrite_metrics

RUN_CONFIG_FILE = "train_config.json"
# Changing these between a killed run and its re-run does not change what was computed so far.
RESUMABLE_CHANGES = ("epochs", "num_workers", "patience")


class TrainError(TemsynthError, RuntimeError):
    pass


class TrainState:
    """Counters saved with every checkpoint (Accelerate pickles it next to the model and optimizer)."""

    def __init__(self):
        self.epoch, self.best_dice, self.best_epoch, self.bad_epochs = 0, -1.0, 0, 0

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, d: dict) -> None:
        vars(self).update(d)


# ---------------------------------------------------------------- files of a run folder
def _check_folder(cfg: TrainConfig, out: Path) -> None:
    """A run folder belongs to one config: refuse to mix two runs' checkpoints and metrics."""
    f = out / RUN_CONFIG_FILE
    mine = cfg.model_dump(mode="json")
    if f.exists():
        theirs = json.loads(f.read_text())
        diff = differing_keys(theirs, mine, RESUMABLE_CHANGES)
        if diff:
            raise TrainError(f"{out} holds a run with another config (differs in {', '.join(diff)}); "
                             "choose a new output_dir, or delete the folder to start over")


def _write_run_config(cfg: TrainConfig, out: Path) -> None:
    with atomic_path(out / RUN_CONFIG_FILE) as tmp:
        tmp.write_text(cfg.model_dump_json(indent=2))



def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("epoch-*"), key=lambda p: int(p.name.split("-")[1]))


def _save_checkpoint(accelerator, out: Path, epoch: int, keep: int) -> None:
    """save_state into a temporary folder, renamed when complete: a kill mid-save leaves the last one intact."""
    tmp, final = out / "checkpoints" / f".partial-epoch-{epoch:04d}", out / "checkpoints" / f"epoch-{epoch:04d}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in _checkpoints(out)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------- evaluation
def match_batch(logits: torch.Tensor, batch: dict) -> list[dict]:
    """Particle matches (training/instances.py `match`) of each image of a benchmark batch."""
    lg = logits.detach().float().cpu().numpy()
    return [match(particles_from_logits(lg[i]), batch["instances"][i].cpu().numpy(),
                  float(batch["pixel_size_A"][i])) for i in range(len(lg))]


@torch.no_grad()
def evaluate_benchmark(model, loader, accelerator=None) -> dict:
    """Dice/IoU (pixels) and the particle scores of a model on one benchmark, from every process."""
    was_training = model.training
    model.eval()
    pixel, particles = [], []
    for batch in loader:
        logits = model(batch["image"])
        c = counts(logits, batch["mask"])
        m = match_batch(logits, batch)
        if accelerator is not None:
            c, m = accelerator.gather_for_metrics(c), accelerator.gather_for_metrics(m, use_gather_object=True)
        pixel.append(c.cpu().numpy())
        particles.extend(m)
    model.train(was_training)
    part = aggregate(particles)
    return {**scores(np.concatenate(pixel) if pixel else np.zeros((0, 3))), **{k: part[k] for k in PARTICLE_SCORES}}


def _prior(cfg: TrainConfig) -> tuple[list[dict], int]:
    """Metrics of the model we start from, so that fine-tuning curves continue its epochs."""
    if not cfg.init_from:
        return [], 0
    rows = read_metrics(Path(cfg.init_from) / METRICS_FILE)
    return rows, max((r["epoch"] for r in rows), default=0)


# ---------------------------------------------------------------- the run
def run(cfg: TrainConfig, progress: bool = True, echo: bool = True) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(cfg.output_dir)
    _check_folder(cfg, out)
    # The lr decays once per epoch: the scheduler must not step with every optimizer step of every process.
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, step_scheduler_with_optimizer=False)
    set_seed(cfg.seed)
    log = accelerator.print if echo else (lambda *a, **k: None)

    # Each source's folder is opened (its manifest read and checked) once, here, for its records and its card.
    folders = [open_source(s, f"data[{i}]" if len(cfg.data_sources) > 1 else "data")
               for i, s in enumerate(cfg.data_sources)]
    bench_folders = [open_source(b, f"benchmarks[{b.name}]") for b in cfg.benchmarks]
    train_set = training_set(cfg.data_sources, cfg.augment, cfg.seed, instances=cfg.model.instances, folders=folders)
    benches = {b.name: benchmark_set(b, cfg.augment, f"benchmarks[{b.name}]", instances=True, folder=f)
               for b, f in zip(cfg.benchmarks, bench_folders)}
    parent = None
    if cfg.init_from:
        ensemble = read_model_config(cfg.init_from).ensemble  # refused before its members' weights are loaded
        if ensemble is not None:
            raise TrainError(f"init_from: {cfg.init_from} is an ensemble of {len(ensemble.members)} models; "
                             f"fine-tune one of its members ({cfg.init_from}/{ensemble.members[0]}) and "
                             "ensemble again")
        model, parent = load_model(cfg.init_from)
        if parent.model != cfg.model:
            raise TrainError(f"model: {cfg.init_from} holds a {parent.model.architecture} with another "
                             "configuration; remove `model:` from the fine-tuning config to take the parent's")
        model.train()
    else:
        model = build_model(cfg.model)
    optim_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[cfg.optimizer.name]
    optimizer = optim_cls(model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.optimizer.lr_decay_per_epoch)

    sized = not isinstance(train_set, torch.utils.data.IterableDataset)
    sampler = EpochSampler(len(train_set), cfg.seed) if sized else None
    train_dl = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                          drop_last=sized and len(train_set) > cfg.batch_size)
    bench_dls = [DataLoader(s, batch_size=cfg.batch_size, num_workers=cfg.num_workers) for s in benches.values()]
    model, optimizer, train_dl, scheduler, *bench_dls = accelerator.prepare(model, optimizer, train_dl, scheduler,
                                                                           *bench_dls)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    ema = None
    if cfg.ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(accelerator.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),
                            use_buffers=True)
        accelerator.register_for_checkpointing(ema)  # a resumed run goes on averaging, not restarting
    scored = (lambda: ema.module) if ema is not None else (lambda: model)

    metrics_path = out / METRICS_FILE
    prior_rows, offset = _prior(cfg)
    ckpts = _checkpoints(out)
    if ckpts:
        accelerator.load_state(str(ckpts[-1]))
        log(f"resuming {out} after epoch {state.epoch} (checkpoint {ckpts[-1].name})")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        _write_run_config(cfg, out)
        # Rows past the checkpoint came from an epoch that a kill cut short: it is run again.
        kept = [r for r in read_metrics(metrics_path) if r["phase"] != cfg.phase or r["phase_epoch"] <= state.epoch]
        rewrite_metrics(metrics_path, kept if ckpts else prior_rows)
    accelerator.wait_for_everyone()

    n_batches = len(train_dl) if sized else None
    bar = _bar(cfg, n_batches, state.epoch, progress and accelerator.is_local_main_process)
    info = {"name": cfg.name, "phase": cfg.phase, "seed": cfg.seed, "world_size": accelerator.num_processes,
            "mixed_precision": cfg.mixed_precision, "training_config": cfg.model_dump(mode="json"),
            "train_data": [source_json(s, f) for s, f in zip(cfg.data_sources, folders)],
            "benchmarks": [source_json(b, f) for b, f in zip(cfg.benchmarks, bench_folders)],
            "init_from": _parent_info(cfg, parent), "epoch_offset": offset}
    for epoch in range(state.epoch, cfg.epochs):
        if cfg.patience and state.bad_epochs >= cfg.patience:
            log(f"early stop: no better {cfg.monitor_name} Dice for {state.bad_epochs} epochs")
            break
        t0 = time.perf_counter()
        train_set.set_epoch(epoch)
        train_dl.set_epoch(epoch)
        lr = scheduler.get_last_lr()[0]
        loss_sum = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        model.train()
        for step, batch in enumerate(train_dl):
            loss = segmentation_loss(model(batch["image"]), batch["mask"], cfg.loss)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(accelerator.unwrap_model(model))
            loss_sum += torch.stack([loss.detach().double() * len(batch["image"]),
                                     loss_sum.new_tensor(len(batch["image"]))])
            bar.update(1)
            if not bar.disable and step % 10 == 0:  # .item() waits for the GPU: not on every step
                bar.set_postfix_str(f"epoch {epoch + 1} loss {loss.item():.3f}", refresh=False)
        scheduler.step()
        loss_sum = accelerator.reduce(loss_sum, "sum")
        train_loss = float(loss_sum[0] / max(loss_sum[1], 1))
        results = {name: evaluate_benchmark(scored(), dl, accelerator) for name, dl in zip(benches, bench_dls)}
        seconds = time.perf_counter() - t0
        rows = [{"run": cfg.name, "phase": cfg.phase, "epoch": offset + epoch + 1, "phase_epoch": epoch + 1,
                 "benchmark": name, **r, "train_loss": train_loss, "lr": lr, "epoch_seconds": round(seconds, 3)}
                for name, r in results.items()]
        bar.set_postfix_str(f"epoch {epoch + 1} loss {train_loss:.3f} " +
                            " ".join(f"{n} {r['dice']:.3f}" for n, r in results.items()))
        dice = results[cfg.monitor_name]["dice"]
        improved = dice > state.best_dice
        state.epoch = epoch + 1
        state.bad_epochs = 0 if improved else state.bad_epochs + 1
        if improved:
            state.best_dice, state.best_epoch = dice, epoch + 1
        if accelerator.is_main_process:
            append_metrics(metrics_path, rows)
            if improved:
                save_model(accelerator.unwrap_model(scored()), out / "best", cfg.model,
                           {**info, "epoch": offset + epoch + 1, "phase_epoch": epoch + 1, "scores": results})
        _save_checkpoint(accelerator, out, epoch + 1, cfg.keep_checkpoints)
    bar.close()
    summary = {}
    if accelerator.is_main_process:
        summary = _finish(cfg, out, state, info)
        log(_report(summary))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _bar(cfg: TrainConfig, n_batches, start_epoch: int, enabled: bool):
    from tqdm.auto import tqdm

    total = cfg.epochs * n_batches if n_batches else None
    return tqdm(total=total, initial=start_epoch * (n_batches or 0), disable=not enabled, unit="batch",
                desc=f"{cfg.phase} {cfg.name}", dynamic_ncols=True)


def _parent_info(cfg: TrainConfig, parent: ModelFolderConfig | None) -> dict | None:
    """What a fine-tuned model records of its parent, from the parent's config.json as `load_model` typed it."""
    if parent is None:
        return None
    return {"path": str(Path(cfg.init_from).resolve()), "name": parent.name, "epoch": parent.epoch,
            "train_data": [s.model_dump(mode="json", exclude_unset=True) for s in parent.train_data],
            "seed": parent.seed}


def _finish(cfg: TrainConfig, out: Path, state: TrainState, info: dict) -> dict:
    """The model folder: the best weights, their config, all metrics and a model card."""
    rows = read_metrics(out / METRICS_FILE)
    mine = [r for r in rows if r["phase"] == cfg.phase]
    if not mine:
        raise TrainError(f"{out}: no epoch finished; nothing to save")
    last_epoch = max(r["phase_epoch"] for r in mine)
    last = {r["benchmark"]: _row_scores(r) for r in mine if r["phase_epoch"] == last_epoch}
    best = {r["benchmark"]: _row_scores(r) for r in mine if r["phase_epoch"] == state.best_epoch}
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, CONFIG_FILE):
        shutil.copy2(out / "best" / name, model_dir / name)
    shutil.copy2(out / METRICS_FILE, model_dir / METRICS_FILE)
    summary = {"model_dir": str(model_dir), "metrics_file": str(model_dir / METRICS_FILE), "phase": cfg.phase,
               "epochs_run": last_epoch, "best_epoch": state.best_epoch, "monitor": cfg.monitor_name,
               "best": best, "last": last}
    write_model_card(model_dir, json.loads((model_dir / CONFIG_FILE).read_text()), summary, rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _row_scores(r: dict) -> dict:
    """A metrics row's scores (a particle score with no particle: None)."""
    return {k: r[k] for k in ("dice", "iou", "dice_pooled", *PARTICLE_SCORES)}


def _report(summary: dict) -> str:
    lines = [f"best epoch {summary['best_epoch']} of {summary['epochs_run']} (monitor: {summary['monitor']})"]
    for name, r in summary["best"].items():
        f1 = r.get("particle_f1")
        lines.append(f"  {name:>16}: Dice {r['dice']:.3f}  IoU {r['iou']:.3f}  particle F1 "
                     f"{'-' if f1 is None else f'{f1:.3f}'}   (last epoch: Dice {summary['last'][name]['dice']:.3f})")
    lines.append(f"model:   {summary['model_dir']}")
    lines.append(f"metrics: {summary['metrics_file']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line
def parse_overrides(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for p in pairs:
        if "=" not in p:
            raise TrainError(f"--set {p!r}: write KEY=VALUE, e.g. --set epochs=5 or --set optimizer.lr=0.005")
        k, v = p.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def build_parser(prog: str, epilog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training YAML (see training/examples/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set epochs=3 --set output_dir=runs/x")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def cli(argv, prog: str, prepare=lambda cfg_path, overrides: load_train_config(cfg_path, overrides),
        epilog: str | None = None) -> int:
    args = build_parser(prog, epilog).parse_args(argv)

    def train() -> int:  # ConfigError, QueryError, DataError, TrainError, ModelFolderError, ...: status 2
        run(prepare(args.config, parse_overrides(args.set)), progress=not args.quiet)
        return 0

    return exit_status(prog, train)


def main(argv=None, prog: str = "training.train", epilog: str | None = None) -> int:
    return cli(argv, prog, epilog=epilog)


if __name__ == "__main__":
    sys.exit(main())
