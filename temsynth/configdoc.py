"""docs/configuration.md, generated from the config schemas: every field of the generation, training and study
configs with its type, allowed range, unit, default and description.

    python -m temsynth.configdoc --write      # regenerate docs/configuration.md after changing a config schema
    python -m temsynth.configdoc --check      # exit 1 if the file is stale (the test suite runs this check)

Types, ranges and defaults come from the pydantic models (Field constraints, `Literal`s, the `ranged` and
`choice_of` validators); units from the field names' suffixes (the project's rule: units in names);
descriptions from `Field(description=...)`, else the comment lines above the field in its class's source, which
is where this project writes them.
"""
from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from generators.units import unit_of

OUT = Path("docs") / "configuration.md"

# Descriptions of fields whose schema says nothing about them (no description, no comment). Better moved into the
# schema's own comments; kept here so that every row of the reference says what its field is for.
NOTES = {
    "name": "name of the dataset (generation) or the run (training, study): letters, digits, _ and -",
    "seed": "root seed: every random draw of a run derives from it (and from the record's ids)",
    "n_structures": "structures (scenes) simulated; each gives conditions_per_structure records",
    "conditions_per_structure": "imaging conditions (defocus, dose, camera, ...) drawn per simulated exit wave",
    "records_per_shard": "records per Parquet / WebDataset shard",
    "splits": "fractions of structures (not records) in train / validation / test; they sum to 1",
    "simulation.energy_keV": "beam energy",
    "simulation.sampling_A": "multislice grid spacing; imaging.pixel_size_A must be a whole multiple of it",
    "simulation.slice_thickness_A": "multislice slice thickness",
    "simulation.parametrization": "atomic potential parametrisation (Prismatic knows only kirkland)",
    "simulation.device": "auto: the GPU through CuPy when present, else the CPU multislice",
    "simulation.n_frozen_phonons": "frozen-phonon configurations averaged per structure",
    "imaging.image_size_px": "side of the stored images",
    "imaging.pixel_size_A": "pixel size of the stored images",
    "imaging.cs_mm": "spherical aberration C30 (negative: an aberration-corrected microscope's setting)",
    "imaging.astigmatism_nm": "two-fold astigmatism C12",
    "imaging.astigmatism_angle_deg": "azimuth of the two-fold astigmatism",
    "imaging.focal_spread_nm": "defocus spread (temporal coherence): sets the information limit",
    "imaging.dose_e_per_A2": "electron dose; counts per pixel ~ Poisson(dose x pixel area x intensity)",
    "imaging.objective_aperture_mrad": "objective aperture semi-angle; null: none",
    "imaging.median_filter_px": "median filter window applied after the cast (odd); 0: none",
    "mask.phase_threshold_rad": "a pixel is particle where the particle-only exit wave's |phase| exceeds this",
    "structure.n_particles": "particles per scene (with area_fraction: the most there may be)",
    "structure.material": "the particle's material (generators/materials.py)",
    "structure.edge_margin_A": "least distance of a whole particle from the image border",
    "structure.substrate.kind": "amorphous (a film of any composition) or graphene sheets",
    "structure.substrate.thickness_A": "support film thickness (amorphous films; graphene draws its layers)",
    "structure.substrate.density_atoms_per_A3": "amorphous film's number density (0.11 atoms/Å³: carbon at about "
                                                "2.2 g/cm³)",
    "structure.substrate.min_dist_A": "least distance between two atoms of the amorphous film (C 1.4, Si3N4 1.6)",
    "structure.orientation.mode": "random orientations, or a zone axis along the beam",
    "structure.orientation.zone_axis": "crystal direction along the beam (mode: zone_axis)",
    "structure.orientation.tilt_deg": "tilt away from the zone axis",
    "structure.defects.type": "planar defects of each particle",
    "output_dir": "folder of the run: checkpoints, metrics.csv and model/ (or the study's jobs and results)",
    "epochs": "training epochs (the fine-tuning default: 50, with patience 10)",
    "batch_size": "images per batch (per process)",
    "data": "training records: a dataset folder's split, optionally a query and a number of images",
    "benchmarks": "scored every epoch (Dice, IoU, pooled Dice); the monitor picks the best epoch",
    "mixed_precision": "bf16 / fp16 on GPUs",
    "num_workers": "data-loader processes (0: in the training process)",
    "optimizer.lr": "learning rate (fine-tuning default: half the parent's)",
    "subsets": "named selections of training data, compared with each other",
    "splits.train": "fraction of structures in the train split",
    "splits.validation": "fraction of structures in the validation split",
    "splits.test": "fraction of structures in the test split",
    "mask.blur_threshold": "with blur_sigma_A > 0: a pixel is particle where the blurred mask exceeds this",
    "structure.defects.stacking_fault_ratio": "share of stacking faults among the planar defects of a mixed particle",
    "structure.defects.min_separation_planes": "least number of atomic planes between two planar defects",
    "imaging.detector.type": "camera model (see the section's description)",
    "imaging.detector.gain_counts_per_e": "counts recorded per detected electron",
    "imaging.detector.read_noise_counts": "Gaussian read noise (standard deviation)",
    "imaging.detector.dqe0": "detective quantum efficiency at zero frequency",
    "imaging.detector.mtf_c": "scintillator MTF: the floor c of (1 - c) / (1 + (f / f0)^2) + c",
    "imaging.detector.mtf_f0": "scintillator MTF: the frequency f0, in cycles per detector pixel",
    "imaging.detector.counting_sigma_px": "counting detector: localisation error of an electron (standard deviation)",
    "model.architecture": "unet (temsynth's) or segformer (transformers', trained from scratch)",
    "optimizer.name": "torch optimizer",
    "optimizer.weight_decay": "weight decay of the optimizer",
    "augment.flips": "random horizontal and vertical flips",
    "augment.rot90": "random quarter turns",
    "augment.display": "training only: render images as display grey levels (clip, 8 bits), as exported "
                       "micrographs are",
    "loss.bce_weight": "weight of the binary cross-entropy term",
    "loss.dice_weight": "weight of the soft Dice term",
    "subsets.name": "the subset's name in results and reports",
    "subsets.sources": "dataset folders (each with an optional query and n_images) pooled into the subset",
    "subsets.description": "free text, shown in the report",
    "benchmarks.name": "the benchmark's name in metrics.csv, results and reports",
    "finetune": "an optional fine-tuning phase after every training job",
}
# Fields of every data source (training data, benchmarks, study subsets' sources, fine-tuning data).
DATA_SOURCE_NOTES = {
    "path": "dataset folder (generated, subset or imported)",
    "split": "split of the folder to read",
    "query": "metadata query narrowing the records (docs/query.md)",
    "format": "parquet (in memory) or webdataset (streamed tar shards)",
}


def _closure(func) -> dict:
    return dict(zip(func.__code__.co_freevars, (c.cell_contents for c in func.__closure__ or ())))


def _validators(annotation) -> list:
    """The functions of AfterValidators anywhere in an annotation (through Optional and Annotated)."""
    found = []
    for meta in getattr(annotation, "__metadata__", ()):
        if type(meta).__name__ == "AfterValidator":
            found.append(meta.func)
    for arg in typing.get_args(annotation):
        if arg is not None and not isinstance(arg, (str, int, float)):
            found += _validators(arg)
    return found


def _is_distribution(annotation) -> bool:
    return "Uniform" in repr(annotation) and "Fixed" in repr(annotation)


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = len(args) < len(typing.get_args(annotation))
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        if _is_distribution(annotation):
            text = "distribution"
        elif "Choice" in repr(annotation):  # generators.config.choice_of: a value or {choice: [...]} of a list
            text = "choice"
        else:
            text = " or ".join(_type_name(a) for a in args)
        return text + (" or null" if optional else "")
    if origin in (list, tuple, dict):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _num(x) -> str:
    if isinstance(x, int):
        return f"2^{x.bit_length() - 1}" if x >= 2 ** 32 and x & (x - 1) == 0 else str(x)
    return f"{x:g}"


def _range(field, annotation) -> str:
    lo = hi = None
    lo_op, hi_op = "≥", "≤"
    for m in field.metadata:
        for attr, op, side in (("ge", "≥", "lo"), ("gt", ">", "lo"), ("le", "≤", "hi"), ("lt", "<", "hi")):
            if getattr(m, attr, None) is not None:
                if side == "lo":
                    lo, lo_op = getattr(m, attr), op
                else:
                    hi, hi_op = getattr(m, attr), op
        if getattr(m, "min_length", None):
            return f"at least {m.min_length} item(s)"
        if getattr(m, "pattern", None):
            return "letters, digits, `_-`" + (" `.`" if "." in m.pattern else "")
    for func in _validators(annotation):
        env = _closure(func)
        if "lo" in env and "hi" in env:  # generators.config.ranged: the distribution's whole support
            return f"[{_num(env['lo'])}, {_num(env['hi'])}]"
        if "allowed" in env:  # generators.config.choice_of
            return ", ".join(f"`{a}`" for a in env["allowed"])
        if "what" in env and env["what"].endswith("material"):  # generators.config.names_of: materials
            from generators.materials import BUILT_IN

            return ", ".join(f"`{a}`" for a in BUILT_IN) + ", or the config's own `materials:`"
    if lo is None and hi is None:
        return ""
    if lo is not None and hi is not None:
        return f"{'[' if lo_op == '≥' else '('}{_num(lo)}, {_num(hi)}{']' if hi_op == '≤' else ')'}"
    return f"{lo_op} {_num(lo)}" if lo is not None else f"{hi_op} {_num(hi)}"


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if isinstance(value, BaseModel):
        dumped = value.model_dump(mode="json")
        if set(dumped) <= {"value"}:  # a Fixed distribution: its value
            return f"`{dumped['value']}`"
        if len(dumped) == 1:  # uniform: [a, b] and the like
            (k, v), = dumped.items()
            return f"`{k}: {v}`".replace("'", "")
        return "(section)"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, float):
        return f"`{value:g}`"
    return "null" if value is None else f"`{value}`"


def source_comments(cls) -> dict[str, str]:
    """field -> the comment lines right above its line in the class body (and a comment at the line's end)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, block = {}, []
    for line in lines[1:]:
        stripped = line.strip()
        m = re.match(r"^ {4}(\w+)\s*:", line)
        if stripped.startswith("#") and line.startswith("    ") and not line.startswith("     "):
            block.append(stripped.lstrip("#").strip())
        elif m and not stripped.startswith(("def ", "@")):
            tail = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            out[m.group(1)] = " ".join(block + ([tail] if tail else []))
            block = []
        else:
            block = []
    return out


def _docstring(cls) -> str:
    doc = inspect.getdoc(cls) or ""
    if cls.__doc__ is None or doc == inspect.getdoc(BaseModel):
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def _rows(model: type[BaseModel], prefix: str, sections: list) -> list[str]:
    rows = []
    comments = source_comments(model)
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if field.metadata and typing.get_origin(annotation) is not typing.Annotated:
            annotation = typing.Annotated[(annotation, *field.metadata)]
        path = f"{prefix}{name}"
        nested = [a for a in (field.annotation, *typing.get_args(field.annotation))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested and not _is_distribution(field.annotation) and "Choice" not in repr(field.annotation):
            listed = "list[" in _type_name(field.annotation)
            sections.append((f"{path}[]" if listed else path, nested[0]))
        plain = path.replace("[]", "")
        parent = plain.rsplit(".", 2)[-2] if "." in plain else ""
        desc = (field.description or comments.get(name, "") or NOTES.get(plain, "")
                or (DATA_SOURCE_NOTES.get(name, "") if parent in ("data", "benchmarks", "sources") else "")
                or (f"the `{path}[]` section below" if nested and "list[" in _type_name(field.annotation)
                    else f"the `{path}` section below" if nested and not _is_distribution(field.annotation)
                    and "Choice" not in repr(field.annotation) else ""))
        desc = desc.replace("|", "\\|")
        rows.append(f"| `{path}` | {_type_name(annotation)} | {_range(field, annotation)} | {unit_of(name)} | "
                    f"{_default(field)} | {desc} |")
    return rows


def _section(title: str, model: type[BaseModel], prefix: str) -> list[str]:
    out = []
    queue = [(title, model, prefix)]
    while queue:
        title, model, prefix = queue.pop(0)
        sections: list = []
        out += [f"### `{title}`" if prefix else f"### {title}", ""]
        doc = _docstring(model)
        if doc:
            out += [doc, ""]
        out += ["| field | type | range | unit | default | description |", "|---|---|---|---|---|---|"]
        out += _rows(model, prefix, sections)
        out.append("")
        seen = {t for t, _, _ in queue}
        for path, sub in sections:
            if path not in seen:
                queue.append((path, sub, f"{path}."))
    return out


def render() -> str:
    from generators.config import GenerationConfig
    from training.config import TrainConfig
    from training.study import StudyConfig

    lines = ["# Configuration reference", "",
             "<!-- Generated by `python -m temsynth.configdoc --write` from the pydantic schemas "
             "(generators/config.py, training/config.py, training/study.py); do not edit by hand. -->", "",
             "Every config is a YAML mapping, read by one strict reader: an empty file, a key given twice or a "
             "top level that is not a mapping is refused in one line, as is any field below out of its range "
             "(NaN and infinity included) or unknown.", "",
             "A **distribution** is a fixed value or one of `{uniform: [low, high]}`, `{loguniform: [low, high]}`, "
             "`{integers: [low, high]}` (inclusive), `{truncnormal: {mean, sd, low, high}}`, "
             "`{linspace: {start, stop, num, jitter_sd}}` (condition i takes step i % num) or "
             "`{choice: [...], weights: [...]}`; its range is the range its whole support must lie in.", "",
             "## Generation config (`temsynth generate --config`)", ""]
    lines += _section("generation config", GenerationConfig, "")
    lines += ["## Training config (`temsynth train --config`, `temsynth finetune --config`)", ""]
    lines += _section("training config", TrainConfig, "")
    lines += ["## Study config (`temsynth study run`)", ""]
    lines += _section("study config", StudyConfig, "")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m temsynth.configdoc", description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help=f"write {OUT}")
    p.add_argument("--check", action="store_true", help=f"exit 1 if {OUT} differs from the schemas")
    p.add_argument("--root", default=".", help="the project folder holding docs/")
    args = p.parse_args(argv)
    path = Path(args.root) / OUT
    text = render()
    if args.write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    elif args.check:
        if not path.is_file() or path.read_text() != text:
            print(f"{path} is stale: regenerate it with `python -m temsynth.configdoc --write`", file=sys.stderr)
            return 1
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
