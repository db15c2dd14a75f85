"""Runs Prismatic HRTEM jobs in a child process (executed by path: imports only numpy, h5py, pyprismatic).

Why a child: Prismatic's C++ calls exit() on bad input (which would kill a Dask worker), prints to the process's
stdout, and writes `$HOME/prismatic_gui_params.txt` after every run. The parent (`simulate_prismatic.py`) starts
this script in a temporary directory with HOME pointed there and stdout captured, and deletes the directory.

Usage: python _prismatic_child.py JOB.json. JOB.json: {"runs": [{"xyz", "out", "npy", ...Metadata fields}]};
each run's complex exit wave (Prismatic's [x, y] order, as written to its HDF5 file) is saved to run["npy"].
"""
import json
import sys

import h5py
import numpy as np

WAVE_DATASET = "4DSTEM_simulation/data/realslices/HRTEM_fp{fp:04d}/data"


def main(job_path: str) -> int:
    import pyprismatic

    job = json.loads(open(job_path).read())
    for run in job["runs"]:
        meta = pyprismatic.Metadata(filenameAtoms=run["xyz"], filenameOutput=run["out"])
        for key, value in run["metadata"].items():
            setattr(meta, key, value)
        meta.go(display_run_time=False)
        with h5py.File(run["out"], "r") as f:
            waves = [np.asarray(f[WAVE_DATASET.format(fp=fp)][...]).reshape(f[WAVE_DATASET.format(fp=fp)].shape[:2])
                     for fp in range(int(run["metadata"]["numFP"]))]
        np.save(run["npy"], np.stack(waves).astype(np.complex64))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
