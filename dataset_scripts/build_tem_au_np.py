"""Build the ./tem_au_np dataset folder (Au nanoparticles on amorphous carbon) from a preset or a config.

    python dataset_scripts/build_tem_au_np.py --preset demo --out tem_au_np
    python dataset_scripts/build_tem_au_np.py --preset paper --out tem_au_np_paper --scheduler tcp://host:8786
"""
import sys

from temsynth.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--preset" not in argv and "--config" not in argv:
        argv += ["--preset", "demo"]
    if "--out" not in argv:
        argv += ["--out", "tem_au_np"]
    sys.exit(main(["generate", *argv]))
