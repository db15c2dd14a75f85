"""FFTW plans that are the same in every process: measured once per grid, kept as wisdom, replayed everywhere.

FFTW_MEASURE picks the fastest of several algorithms by timing them, so two processes (one of them on a busy
machine) can pick different ones; their results differ in the last bits, and a Poisson draw on a pixel near a
count boundary then moves by one count. FFTW_ESTIMATE is deterministic but 2-10x slower on our grids. Wisdom
records which algorithm the measurement chose: every process that imports the same wisdom and plans with
FFTW_WISDOM_ONLY gets that algorithm, hence the same bits, at measured speed.

Where wisdom comes from, first found wins:
1. the dataset folder's own `fftw/` (what its records were made with: regenerate and resume use it);
2. this machine's cache (`$TEMSYNTH_CACHE`, else `$XDG_CACHE_HOME/temsynth`, else `~/.cache/temsynth`), so that two
   builds of one config on one machine share every bit;
3. a fresh measurement, written to the cache and then copied into the dataset folder.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

from .files import atomic_path

WISDOM_DIR = "fftw"


def _wisdom_name(gpts: int) -> str:
    import pyfftw

    # Plans are only valid for the FFTW build and the SIMD unit they were measured with.
    # v2: the band-limited (pruned) transforms joined the plan set; v3: so did image formation's band inverse.
    return f"wisdom-v3-{gpts}x{gpts}-t1-fftw{pyfftw.__version__}-simd{pyfftw.simd_alignment}.pkl"


def machine_cache() -> Path:
    if os.environ.get("TEMSYNTH_CACHE"):
        return Path(os.environ["TEMSYNTH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "temsynth"


def _arrays(gpts: int):
    import pyfftw

    wave = pyfftw.empty_aligned((gpts, gpts), dtype="complex64")
    work = pyfftw.empty_aligned((gpts, gpts), dtype="complex64")
    r = pyfftw.empty_aligned((gpts, gpts), dtype="float32")
    h = pyfftw.empty_aligned((gpts, gpts // 2 + 1), dtype="complex64")
    return wave, work, r, h


def band_columns(gpts: int) -> int:
    """m such that abTEM's antialias aperture is zero outside columns [0, m) and [gpts - m, gpts) (the same for
    every sampling: the aperture's cutoff is a fixed fraction of the grid's Nyquist frequency)."""
    import numpy as np
    from abtem.antialias import antialias_aperture

    row = antialias_aperture((gpts, gpts), (1.0, 1.0), xp=np)[0]
    nz = np.nonzero(row > 0)[0]
    m = int(max(nz[nz <= gpts // 2].max() + 1, gpts - nz[nz > gpts // 2].min() if (nz > gpts // 2).any() else 0))
    return m if 2 * m < gpts else gpts // 2


class BandFFT:
    """In-place 2-D FFT pair of a field whose spectrum is only wanted (forward) or only non-zero (backward) in
    the antialias aperture's columns: the second pass runs on the 2m columns that matter, not all gpts (the
    aperture cuts 1/3 of them), which is the same result as the full transform there at 5/6 of its cost.
    After `forward`, columns outside the band hold partial sums: multiply by a kernel that is zero there."""

    def __init__(self, a, m: int, flags: tuple[str, ...]):
        import pyfftw

        n = a.shape[1]
        plan = lambda x, ax, d: pyfftw.FFTW(x, x, axes=(ax,), direction=d, flags=flags, threads=1)
        bands = (a[:, :m], a[:, n - m:])
        self._rows = plan(a, 1, "FFTW_FORWARD"), plan(a, 1, "FFTW_BACKWARD")
        self._cols = [(plan(b, 0, "FFTW_FORWARD"), plan(b, 0, "FFTW_BACKWARD")) for b in bands]

    def forward(self) -> None:
        self._rows[0].execute()
        for f, _ in self._cols:
            f.execute()

    def backward(self) -> None:
        """Unnormalised; the spectrum must be zero outside the band."""
        for _, b in self._cols:
            b.execute()
        self._rows[1].execute()


class BandInverse:
    """Unnormalised inverse 2-D FFT of a spectrum that is zero outside the antialias band's rows and columns (an
    exit wave's, times a transfer function): image formation's transform, once per focal point. It works in the
    transposed frame, where both passes are FFTW's fast kind: write the spectrum as `spec[kx, ky]` (the band's
    kx in rows [0, 2m), its ky in columns [0, m) and [n - m, n), the others stay zero); `execute` leaves the image
    transposed, psi[x, y]. Fixed buffers: no allocation and no page faults per call."""

    def __init__(self, gpts: int, flags: tuple[str, ...]):
        import numpy as np
        import pyfftw

        n, m = gpts, band_columns(gpts)
        self.m = m
        self.spec = pyfftw.zeros_aligned((2 * m, n), dtype="complex64")
        self.psi = pyfftw.zeros_aligned((n, n), dtype="complex64")
        plan = lambda a, b, ax: pyfftw.FFTW(a, b, axes=(ax,), direction="FFTW_BACKWARD", flags=flags,
                                            threads=1)
        # over ky, into the band's kx rows of psi; then over kx, in place (its other rows zeroed first)
        self._passes = [plan(self.spec[:m], self.psi[:m], 1), plan(self.spec[m:], self.psi[n - m:], 1),
                        plan(self.psi, self.psi, 0)]
        self.spec[:] = np.complex64(0)  # planning may have written into it

    def execute(self) -> None:
        self.psi[self.m:self.psi.shape[0] - self.m] = 0
        for p in self._passes:
            p.execute()


def band_inverse(gpts: int, dataset_dir: Path | None = None) -> BandInverse:
    """Image formation's `BandInverse`, planned from the same wisdom as the multislice (`deterministic_plans`)."""
    import pyfftw

    path = ensure_wisdom(gpts, dataset_dir)
    pyfftw.forget_wisdom()
    pyfftw.import_wisdom(pickle.loads(path.read_bytes()))
    try:
        return BandInverse(gpts, ("FFTW_MEASURE", "FFTW_WISDOM_ONLY"))
    except RuntimeError as e:
        raise RuntimeError(f"{path} holds no FFTW plan for a {gpts}x{gpts} image on this machine (made on another "
                           f"CPU?): delete it and re-run to measure new plans") from e


def _plans(gpts: int, flags: tuple[str, ...], arrays=None):
    """The transforms the multislice uses: band-limited complex pairs on two buffers (the wave, and the
    transmission function being built), real forward/backward (the potential, which is not band-limited)."""
    import pyfftw

    wave, work, r, h = arrays or _arrays(gpts)
    kw = dict(axes=(0, 1), threads=1)
    m = band_columns(gpts)
    return (BandFFT(wave, m, flags), BandFFT(work, m, flags),
            pyfftw.FFTW(r, h, direction="FFTW_FORWARD", flags=flags, **kw),
            pyfftw.FFTW(h, r, direction="FFTW_BACKWARD", flags=flags + ("FFTW_DESTROY_INPUT",), **kw))


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _measure(gpts: int) -> bytes:
    import pyfftw

    pyfftw.forget_wisdom()
    _plans(gpts, ("FFTW_MEASURE",))
    BandInverse(gpts, ("FFTW_MEASURE",))
    return pickle.dumps(pyfftw.export_wisdom())


def ensure_wisdom(gpts: int, dataset_dir: Path | None = None) -> Path:
    """The wisdom file this grid's plans come from (see the module docstring for the order), copied into
    `dataset_dir/fftw/` when given. Call it once before work is handed out, so every worker finds it."""
    name = _wisdom_name(gpts)
    own = Path(dataset_dir) / WISDOM_DIR / name if dataset_dir is not None else None
    if own is not None and own.is_file():
        return own
    cached = machine_cache() / name
    if not cached.is_file():
        try:
            _write_atomic(cached, _measure(gpts))
        except OSError:  # a read-only home: the dataset folder alone keeps it
            if own is None:
                raise
            _write_atomic(own, _measure(gpts))
            return own
    if own is None:
        return cached
    try:
        _write_atomic(own, cached.read_bytes())
    except OSError:  # a read-only folder (regenerating someone else's records): the machine's wisdom serves
        return cached
    return own


def deterministic_plans(gpts: int, dataset_dir: Path | None = None):
    """(arrays, plans) for one grid, planned from the wisdom `ensure_wisdom` names; never re-measured."""
    import pyfftw

    path = ensure_wisdom(gpts, dataset_dir)
    # Forget first: wisdom measured earlier in this process (abTEM's own plans, another grid's measurement)
    # must not take precedence. Importing is cheap, and plans are made once per grid and process.
    pyfftw.forget_wisdom()
    pyfftw.import_wisdom(pickle.loads(path.read_bytes()))
    arrays = _arrays(gpts)
    try:
        plans = _plans(gpts, ("FFTW_MEASURE", "FFTW_WISDOM_ONLY"), arrays)
    except RuntimeError as e:
        raise RuntimeError(f"{path} holds no FFTW plan for a {gpts}x{gpts} grid on this machine (made on another "
                           f"CPU?): delete it and re-run to measure new plans (records made with the old ones "
                           f"may then differ in the last count)") from e
    return arrays, plans
