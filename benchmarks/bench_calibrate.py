"""How well does `temsynth calibrate` recover known imaging conditions, and how fast is it?

    python benchmarks/bench_calibrate.py [--fields 24] [--pixel-size-A 0.35] [--detector counting|scintillator]
                                         [--blur-px 1.0]
    python benchmarks/bench_calibrate.py --real temsynth/data/real/hrtem_generalization   # time on real fields

Bare amorphous carbon (30 Å) simulated as `generate` does, one exit wave, `--fields` imaging conditions drawn from
the realistic preset's ranges (defocus -30..30 nm, astigmatism 0-3 nm, focal spread 2-6 nm, dose 100-3000 e/Å²
log-uniform) on a camera of the chosen kind; each field fitted alone. The truth for the defocus is the carbon's
mid-plane (exit-plane defocus + half its thickness: what Thon rings measure). With Cs = 0 the sign is not
measurable, so magnitudes are compared. `--blur-px S` blurs each field with a Gaussian of S pixels after the
camera, signal and noise alike, as a display rendering's resampling does. Reported per field and summarised over
|defocus| >= 8 nm (rings inside the band at 0.35 Å) and nearer focus.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CARBON_A = 30.0


def fields(n: int, px: float, detector: str, seed: int):
    from generators.config import from_dict, load_preset
    from generators.run import simulate_structure

    d = load_preset("realistic").model_dump(mode="json", exclude_none=True)
    d.update(n_structures=1, conditions_per_structure=n, seed=seed)
    d["structure"].update(n_particles=0, radius_A=10.0, allow_border_cuts=False)
    d["structure"].pop("area_fraction", None)
    d["structure"]["substrate"].update(thickness_A=CARBON_A, bank_size=1)
    d["imaging"].update(image_size_px=256, pixel_size_A=px, cs_mm=0.0)
    d["imaging"].pop("detector_pixel_size_A", None)
    d["imaging"]["detector"]["type"] = detector
    d["simulation"]["sampling_A"] = px / 2
    cfg = from_dict(d, "bench_calibrate")
    images, _, _, metas, _ = simulate_structure(cfg, 0)
    return images, metas


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fields", type=int, default=24)
    p.add_argument("--pixel-size-A", type=float, default=0.35)
    p.add_argument("--detector", default="counting", choices=["counting", "scintillator", "ideal"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blur-px", type=float, default=0.0, help="Gaussian blur after the camera (a rendering's)")
    p.add_argument("--real", help="instead: time `calibrate` on this folder of micrographs (index.csv)")
    a = p.parse_args()
    if a.real:
        from generators.calibration.run import calibrate

        t0 = time.perf_counter()
        calibrate([a.real], Path("/tmp") / "bench_calibrate_real.yaml", pixel_sizes_csv=Path(a.real) / "index.csv",
                  log=lambda s: None)
        print(json.dumps({"real_fields_seconds": round(time.perf_counter() - t0, 1)}))
        return 0
    from generators.calibration.ctf_fit import fit_ctf
    from generators.calibration.spectrum import power_spectrum

    images, metas = fields(a.fields, a.pixel_size_A, a.detector, a.seed)
    if a.blur_px:
        from scipy import ndimage

        images = [ndimage.gaussian_filter(np.asarray(i, np.float64), a.blur_px) for i in images]
    rows = []
    for img, m in zip(images, metas):
        t0 = time.perf_counter()
        f = fit_ctf(power_spectrum(img, a.pixel_size_A), cs_mm=0.0)
        mid = m["defocus_nm"] + CARBON_A / 20
        rows.append({"defocus_mid_nm": mid, "fit_nm": f.defocus_nm, "err_nm": abs(abs(f.defocus_nm) - abs(mid)),
                     "astig_nm": m["astigmatism_nm"], "astig_err_nm": abs(f.astigmatism_nm - m["astigmatism_nm"]),
                     "focal_spread_nm": m["focal_spread_nm"], "fit_focal_spread_nm": f.focal_spread_nm,
                     "dose": m["dose_e_per_A2"], "seconds": time.perf_counter() - t0})
        r = rows[-1]
        print(f"defocus {mid:+6.1f} fit {f.defocus_nm:+6.1f} | astig {r['astig_nm']:.1f} fit {f.astigmatism_nm:.1f} "
              f"| spread {r['focal_spread_nm']:.1f} fit {f.focal_spread_nm:.1f} | dose {r['dose']:6.0f} | "
              f"{r['seconds']:.1f} s", flush=True)
    summary = {}
    for name, sel in (("rings_in_band", [r for r in rows if abs(r["defocus_mid_nm"]) >= 8]),
                      ("near_focus", [r for r in rows if abs(r["defocus_mid_nm"]) < 8])):
        if sel:
            e = np.array([r["err_nm"] for r in sel])
            ae = np.array([r["astig_err_nm"] for r in sel])
            summary[name] = {"fields": len(sel), "defocus_within_2nm": float(np.mean(e < 2)),
                             "defocus_median_err_nm": float(np.median(e)), "astig_within_1nm": float(np.mean(ae < 1)),
                             "astig_median_err_nm": float(np.median(ae))}
    summary["seconds_per_field"] = float(np.mean([r["seconds"] for r in rows]))
    summary.update(pixel_size_A=a.pixel_size_A, detector=a.detector, blur_px=a.blur_px)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
