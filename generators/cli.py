"""`temsynth` command line: parse, call a library function, print."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load_cfg(args):
    from .config import load_config, load_preset

    if bool(args.preset) == bool(args.config):
        raise SystemExit("temsynth generate: give exactly one of --preset NAME or --config FILE")
    return load_preset(args.preset) if args.preset else load_config(args.config)


def cmd_generate(args) -> int:
    from .run import generate

    cfg = _load_cfg(args)
    if args.structures is not None:
        cfg = cfg.model_copy(update={"n_structures": args.structures})
        from .config import from_dict

        cfg = from_dict(cfg.model_dump(mode="json"), "command line")
    generate(cfg, args.out, workers=args.workers, scheduler=args.scheduler, progress=not args.quiet)
    return 0


def cmd_info(args) -> int:
    from .info import describe

    print(describe(args.dataset, verify=args.verify))
    return 0


def cmd_presets(args) -> int:
    from .config import preset_names

    print("\n".join(preset_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="temsynth", description="Synthetic HRTEM nanoparticle datasets")
    sub = p.add_subparsers(dest="verb", required=True)
    g = sub.add_parser("generate", help="build a dataset folder from a preset or a YAML config")
    g.add_argument("--preset", help="built-in config: see `temsynth presets`")
    g.add_argument("--config", help="YAML generation config")
    g.add_argument("--out", required=True, help="output dataset folder (re-running the same command resumes)")
    g.add_argument("--workers", type=int, default=2, help="local Dask worker processes (0: run in this process)")
    g.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    g.add_argument("--structures", type=int, help="override n_structures")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)
    i = sub.add_parser("info", help="summary of a dataset folder")
    i.add_argument("dataset")
    i.add_argument("--verify", action="store_true", help="check every shard's SHA-256 against the manifest")
    i.set_defaults(func=cmd_info)
    sub.add_parser("presets", help="list built-in configs").set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .run import RunError
    from .simulate import SimulatorUnavailable

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RunError, SimulatorUnavailable) as err:
        print(f"temsynth {args.verb}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
