"""Import experimental HRTEM micrographs and their hand-labelled masks as a dataset folder (finetune/benchmark).

    python dataset_scripts/import_experimental.py micrographs/ --out tem_au_exp \\
        --target-pixel-size-A 0.25 --tile-px 256 --material Au
    python dataset_scripts/import_experimental.py micrographs/ --masks labels/ --pixel-size-A 0.18 ...

    python dataset_scripts/import_experimental.py real/ --pixel-sizes real/index.csv ...   # mixed magnifications
    ... --pixel-sizes real/index.csv --stratify-by material,nominal_diameter_nm   # every class in both halves

Masks: `--masks DIR` with the micrograph's file stem, or next to each micrograph as `{stem}_mask.{ext}`; values
{0,1}, {0,255} (255 = particle) or true/false, anything else through `--mask-values VALUE=LABEL,...`.
A micrograph without a mask stops the import unless `--allow-unlabelled` (then it is skipped with a warning).
"""
from __future__ import annotations

import argparse
import sys

from generators.errors import exit_status
from generators.micrographs import import_folder


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit 2, like every other failure of this script
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(prog: str = "import_experimental.py", epilog: str | None = None) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=__doc__.split("\n")[0], epilog=epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images_dir", help="folder of micrographs (.tif .png .jpg .npy .dm3 .dm4 .emd .mrc)")
    p.add_argument("--out", required=True, help="new dataset folder")
    p.add_argument("--masks", default=None, help="folder of masks named like the micrographs")
    p.add_argument("--pixel-size-A", type=float, default=None,
                   help="source pixel size in Å; overrides the files' calibration, required where there is none")
    p.add_argument("--pixel-sizes", default=None, metavar="CSV",
                   help="per-micrograph pixel sizes: a CSV with the columns file,pixel_size_A (others ignored); "
                        "for folders that mix magnifications. Not together with --pixel-size-A")
    p.add_argument("--mask-values", default=None, metavar="V=L,...",
                   help="map mask file values to labels (1 particle, 0 background), e.g. 0=0,1=1,2=1 or 255=0,0=1; "
                        "needed for masks other than {0,1}, {0,255} (255 = particle) or true/false")
    p.add_argument("--target-pixel-size-A", type=float, required=True, help="pixel size of the tiles, Å")
    p.add_argument("--tile-px", type=int, required=True, help="tile side length, px")
    p.add_argument("--overlap-px", type=int, default=0, help="overlap of neighbouring tiles, px")
    p.add_argument("--finetune-fraction", type=float, default=0.5, help="fraction of micrographs for finetune")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-micrograph split")
    p.add_argument("--stratify-by", default=None, metavar="COL,...",
                   help="split every class of micrograph in the fraction (to within one), the class being these "
                        "columns of the --pixel-sizes CSV, e.g. material,nominal_diameter_nm")
    p.add_argument("--material", default="unknown", help="particle material, e.g. Au")
    p.add_argument("--allow-unlabelled", action="store_true", help="skip micrographs without a mask")
    p.add_argument("--records-per-shard", type=int, default=256)
    p.add_argument("--name", default=None, help="dataset name (default: the --out folder's name)")
    return p


def main(argv: list[str] | None = None, prog: str = "import_experimental.py", epilog: str | None = None) -> int:
    args = build_parser(prog, epilog).parse_args(argv)
    return exit_status(prog, lambda: _import(args))


def _import(args) -> int:
    import_folder(args.images_dir, args.out, masks_dir=args.masks, pixel_size_A=args.pixel_size_A,
                  target_pixel_size_A=args.target_pixel_size_A, tile_px=args.tile_px,
                  finetune_fraction=args.finetune_fraction, seed=args.seed, material=args.material,
                  overlap_px=args.overlap_px, allow_unlabelled=args.allow_unlabelled,
                  records_per_shard=args.records_per_shard, name=args.name,
                  pixel_sizes_csv=args.pixel_sizes, mask_values=args.mask_values,
                  stratify_by=[c.strip() for c in args.stratify_by.split(",") if c.strip()]
                  if args.stratify_by else None,
                  log=lambda msg: print(msg, file=sys.stderr if msg.startswith("warning") else sys.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
