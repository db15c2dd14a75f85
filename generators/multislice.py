"""The CPU multislice: abTEM's physics (its infinite-projection potentials, transmission functions, antialias
aperture and Fresnel propagator), run on FFTW plans replayed from wisdom (`fftw.py`) and with the carbon's
transmission functions built once per bank block.

Per slice abTEM builds the potential (an FFT pair per element), its transmission function, band-limits it (an FFT
pair) and propagates (an FFT pair). Here:
- the potential of all elements of a slice costs one real FFT pair (elements are summed in Fourier space);
- a slice without atoms (above a short particle) is a pure propagation, as its transmission function is 1;
- the carbon's band-limited transmission functions are made once per bank block in the block's own frame
  (`CarbonSlices`) and never again: a structure's carbon is its block shifted by whole samples, flipped and
  transposed, operations that map the sample grid onto itself and commute with every step of the multislice,
  so the wave is carried into the block's frame, propagated through the stored slices and carried back. Only
  the cut's partial bottom slice is built per structure.
The result equals abTEM's own multislice of the same structure to float rounding (`tests/test_multislice.py`).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .fftw import band_columns, deterministic_plans
from .files import atomic_path, build_once


def _shift(cut, gpts: int) -> tuple[int, int] | None:
    """The cut's shift in samples of a `gpts` grid; None where it is no whole number of them."""
    scaled = [s * gpts / cut.grid_px for s in cut.shift_px]
    return tuple(int(round(v)) for v in scaled) if all(abs(v - round(v)) < 1e-9 for v in scaled) else None


def _axis_maps(cut, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(mx, my): the cut frame before its x/y swap is block[mx[i], my[j]] (a shift by whole samples, then on a
    flipped axis i -> -i mod n: x -> L - x on the sample grid; the order `substrate.cut_substrate` moves atoms in)."""
    shift = _shift(cut, n)
    maps = []
    for ax in (0, 1):
        i = np.arange(n)
        if cut.flip[ax]:
            i = (-i) % n
        maps.append((i - shift[ax]) % n)
    return maps[0], maps[1]


def to_cut_frame(a: np.ndarray, cut, out: np.ndarray | None = None) -> np.ndarray:
    """The block-frame field as it lies under the structure: shifted, flipped, then x/y swapped (arrays indexed
    [x, y], as abTEM's). One gather pass, into `out` when given."""
    mx, my = _axis_maps(cut, a.shape[0])
    out = np.empty_like(a) if out is None else out
    _gather()(a, my, mx, True, out) if cut.swap else _gather()(a, mx, my, False, out)
    return out


def to_block_frame(a: np.ndarray, cut, out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of `to_cut_frame`."""
    mx, my = (np.argsort(m) for m in _axis_maps(cut, a.shape[0]))
    out = np.empty_like(a) if out is None else out
    _gather()(a, mx, my, cut.swap, out)
    return out


def transposed(a: np.ndarray) -> np.ndarray:
    """A contiguous copy of a.T in one gather pass (numpy's strided copy of a transposed complex array costs 4x)."""
    i = np.arange(a.shape[0])
    j = np.arange(a.shape[1])
    out = np.empty((a.shape[1], a.shape[0]), a.dtype)
    _gather()(a, j, i, True, out)
    return out


_GATHER = []


def _gather():
    """out[i, j] = a[r[i], c[j]], or a[c[j], r[i]] when transposed: every permutation of the sample grid
    `to_cut_frame` needs, in one pass (numpy's roll, flip and transpose copy the wave three times)."""
    if not _GATHER:
        import numba

        @numba.njit(nogil=True, cache=True)
        def gather(a, r, c, transpose, out):
            n, m = out.shape
            if transpose:  # in 8 x 8 tiles (measured best): a column walk through 2 MB misses the cache each step
                for i0 in range(0, n, 8):
                    i1 = min(i0 + 8, n)
                    for j0 in range(0, m, 8):
                        for j in range(j0, min(j0 + 8, m)):
                            cj = c[j]
                            for i in range(i0, i1):
                                out[i, j] = a[cj, r[i]]
            else:
                for i in range(n):
                    ri = r[i]
                    for j in range(m):
                        out[i, j] = a[ri, c[j]]

        _GATHER.append(gather)
    return _GATHER[0]


class Multislice:
    """Plane-wave multislice on one square grid; every FFT goes through wisdom-replayed FFTW plans."""

    def __init__(self, gpts: int, extent_A: float, energy_keV: float, slice_thickness_A: float,
                 parametrization: str, wisdom_dir: Path | None = None):
        from abtem.antialias import antialias_aperture
        from abtem.core.energy import energy2sigma
        from abtem.integrals import ScatteringFactorProjectionIntegrals, sinc

        # abTEM's own arrays, so that the physics is its physics (the propagator helper is the one its
        # multislice calls, private but stable across 1.0.x)
        from abtem.multislice import _fresnel_propagator_array

        self.gpts, self.extent, self.dz, self.energy_keV = gpts, extent_A, slice_thickness_A, energy_keV
        self.sampling = extent_A / gpts
        n2 = float(gpts * gpts)
        (self.wave, self.work, self.real, self.half), plans = deterministic_plans(gpts, wisdom_dir)
        self._wave_fft, self._work_fft, self._rfwd, self._rbwd = plans
        grid = ((gpts, gpts), (self.sampling, self.sampling))
        aperture = antialias_aperture(*grid, xp=np).astype(np.float32)
        energy = energy_keV * 1e3
        # The inverse transforms are unnormalised: 1/N^2 goes into the kernels.
        self.propagator = (_fresnel_propagator_array(slice_thickness_A, *grid, energy, "cpu") * aperture / n2
                           ).astype(np.complex64)
        self.bandlimit = (aperture / n2).astype(np.complex64)  # complex: an in-place product without casting
        # A plane wave's first slice: FFT(band-limited t) = FFT(t) * aperture, then the propagator.
        self._first = (self.propagator * aperture).astype(np.complex64)
        self._plane = False
        m = band_columns(gpts)
        if np.any(aperture[:, m:gpts - m]):  # the pruned transforms would drop part of the band
            raise RuntimeError(f"antialias aperture wider than the {m} band columns of a {gpts}² grid")
        self.sigma = np.float32(energy2sigma(energy))
        self._integrator = ScatteringFactorProjectionIntegrals(parametrization=parametrization)
        self._sinc = sinc(*grid, "cpu")
        self._kernels: dict[int, np.ndarray] = {}

    def _kernel(self, number: int) -> np.ndarray:
        from ase.data import chemical_symbols

        if number not in self._kernels:
            f = self._integrator.get_scattering_factor(chemical_symbols[number], (self.gpts, self.gpts),
                                                       (self.sampling, self.sampling), "cpu")
            k = (f / self._sinc).astype(np.complex64) / np.float32(self.gpts * self.gpts)
            self._kernels[number] = np.ascontiguousarray(k[:, : self.gpts // 2 + 1])
        return self._kernels[number]

    def _potential(self, positions: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """One slice's projected potential (abTEM's infinite projection), in `self.real`."""
        from abtem.integrals import superpose_deltas

        elements = np.unique(numbers)
        acc = None
        for z in elements:
            self.real[:] = 0
            superpose_deltas((positions[numbers == z, :2] / self.sampling).astype(np.float32), self.real)
            self._rfwd.execute()
            if len(elements) == 1:  # the usual case: in place, no temporaries
                np.multiply(self.half, self._kernel(int(z)), out=self.half)
            else:
                term = self.half * self._kernel(int(z))
                acc = term if acc is None else acc + term
        if acc is not None:
            self.half[:] = acc
        self._rbwd.execute()
        return self.real

    def _transmission(self, positions: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """One slice's band-limited transmission function, exp(i sigma V) with the antialias aperture applied,
        in `self.work`."""
        _expi(self._potential(positions, numbers), self.sigma, self.work)
        self._work_fft.forward()
        self.work *= self.bandlimit
        self._work_fft.backward()
        return self.work

    def transmission(self, positions: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        return self._transmission(positions, numbers).copy()

    def start_plane_wave(self) -> None:
        """The incident wave: unit amplitude (abTEM's plane wave)."""
        self.wave[:] = 1
        self._plane = True

    def _first_step(self, positions: np.ndarray, numbers: np.ndarray | None) -> None:
        """`_step` on the incident plane wave, one band-limited FFT pair cheaper: the plane wave times the
        band-limited transmission function is that function, whose spectrum its band limit has just computed.
        An empty slice leaves a plane wave as it is (its propagator is 1 at zero frequency)."""
        self._plane = False
        if numbers is None or not len(numbers):
            self._plane = True
            return
        _expi(self._potential(positions, numbers), self.sigma, self.work)
        self._work_fft.forward()
        np.multiply(self.work, self._first, out=self.wave)
        self._wave_fft.backward()

    def _step(self, t: np.ndarray | None) -> None:
        """Transmit through `t` (None: an empty slice) and propagate one slice, in place on `self.wave`."""
        self._plane = False
        if t is not None:
            self.wave *= t
        self._wave_fft.forward()
        self.wave *= self.propagator
        self._wave_fft.backward()

    def slices(self, positions: np.ndarray, numbers: np.ndarray, n_slices: int):
        """Atoms grouped by slice (z from 0, slices of `dz`), as abTEM's SliceIndexedAtoms groups them."""
        index = np.floor(positions[:, 2] / self.dz).astype(int)
        order = np.argsort(index, kind="stable")
        bounds = np.searchsorted(index[order], np.arange(n_slices + 1))
        for k in range(n_slices):
            sel = order[bounds[k]:bounds[k + 1]]
            yield positions[sel], numbers[sel]

    def propagate_atoms(self, positions: np.ndarray, numbers: np.ndarray, n_slices: int) -> None:
        """Continue `self.wave` through a slab of atoms (periodic in x and y)."""
        for pos, num in self.slices(positions, numbers, n_slices):
            if self._plane:
                self._first_step(pos, num)
            else:
                self._step(self._transmission(pos, num) if len(num) else None)

    def propagate_slices(self, transmissions) -> None:
        for t in transmissions:
            self._step(t)


def _expi_kernel():
    import numba

    # exp(i sigma V) written straight into the FFT buffer in one vectorised pass: float32 sine and cosine by
    # Cody-Waite reduction to [-pi/4, pi/4] and Cephes' minimax polynomials, within 1e-7 of exp(ix) (one float32
    # rounding of 1; libm's cos and sin, called per element, cost 4x more and block SIMD). No fastmath: the
    # reduction's order of operations is what makes it exact.
    f = np.float32

    @numba.njit(nogil=True, cache=True)
    def expi(v, sigma, out):
        two_over_pi, h1, h2, h3 = f(0.6366197723675814), f(1.5703125), f(4.837512969970703125e-4), \
            f(7.54978995489188216e-8)
        s1, s2, s3 = f(-1.6666654611e-1), f(8.3321608736e-3), f(-1.9515295891e-4)
        c1, c2, c3 = f(4.166664568298827e-2), f(-1.388731625493765e-3), f(2.443315711809948e-5)
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                x = sigma * v[i, j]
                qf = f(np.rint(x * two_over_pi))
                q = np.int32(qf)
                r = ((x - qf * h1) - qf * h2) - qf * h3  # x = r + q pi/2
                z = r * r
                sn = r + r * z * (s1 + z * (s2 + z * s3))
                cs = f(1.0) - f(0.5) * z + z * z * (c1 + z * (c2 + z * c3))
                swap = (q & 1) != 0
                c = sn if swap else cs
                sv = cs if swap else sn
                if ((q + 1) & 2) != 0:
                    c = -c
                if (q & 2) != 0:
                    sv = -sv
                out[i, j] = complex(c, sv)

    return expi


_EXPI = []


def _expi(v: np.ndarray, sigma, out: np.ndarray) -> None:
    if not _EXPI:
        _EXPI.append(_expi_kernel())
    _EXPI[0](v, sigma, out)


class CarbonSlices:
    """Band-limited transmission functions of bank blocks, block frame, built once per block and process.

    With a folder they are kept there as .npy files read through memory maps (the paper grid's 16 blocks take
    8 GB; the page cache, not each worker, holds them) and shared by the run's workers; without, the last few
    blocks are kept in memory."""

    def __init__(self, engine: Multislice, folder: Path | None, keep: int = 2):
        self.engine, self.folder, self.keep = engine, folder, keep
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()

    def block(self, key: str, block: np.ndarray, n_slices: int, numbers: np.ndarray | None = None) -> np.ndarray:
        """(n_slices, N, N) complex64: the block's first `n_slices` full slices (`numbers`: its atoms' elements,
        carbon when None)."""
        numbers = np.full(len(block), 6) if numbers is None else numbers
        # exp(i sigma V): the interaction constant sigma, and so the slices, depend on the beam energy
        name = f"{key}-N{self.engine.gpts}-dz{self.engine.dz:g}-E{self.engine.energy_keV:g}-transmission.npy"
        if name in self._memory:
            self._memory.move_to_end(name)
            have = self._memory[name]
            if len(have) >= n_slices:
                return have
        path = self.folder / name if self.folder is not None else None
        if path is None:
            arr = np.empty((n_slices, self.engine.gpts, self.engine.gpts), np.complex64)
            for k, t in enumerate(self._built(block, numbers, n_slices)):
                arr[k] = t
        else:
            with build_once(path):
                if not path.exists():
                    self._write(path, block, numbers, n_slices)
            arr = np.load(path, mmap_mode="r")
        self._memory[name] = arr
        while len(self._memory) > self.keep:
            self._memory.popitem(last=False)
        return arr

    def _built(self, block: np.ndarray, numbers: np.ndarray, n_slices: int):
        """The block's first `n_slices` transmission functions, one at a time (each valid until the next)."""
        ones = None
        for pos, num in self.engine.slices(block, numbers, n_slices):
            if len(num):
                yield self.engine._transmission(pos, num)
            else:
                ones = np.ones((self.engine.gpts, self.engine.gpts), np.complex64) if ones is None else ones
                yield ones

    def _write(self, path: Path, block: np.ndarray, numbers: np.ndarray, n_slices: int) -> None:
        """The block's slices, all its depth (other structures of the run may cut deeper), as an .npy file written
        slice by slice with write(): no stacked copy in memory, and no page faults on a fresh mapping (read-only
        maps of the finished file then fault in 64 KB at a time)."""
        n = self.engine.gpts
        depth = int(math.floor(float(block[:, 2].max()) / self.engine.dz)) + 1 if len(block) else 0
        total = max(n_slices, depth)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a killed writer's leftover is swept
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.complex64)),
                                                    "fortran_order": False, "shape": (total, n, n)})
            for t in self._built(block, numbers, total):
                f.write(memoryview(np.ascontiguousarray(t)).cast("B"))


def carbon_exit_wave(engine: Multislice, carbon: CarbonSlices, structure) -> None:
    """Continue `engine.wave` through the structure's carbon, reusing its block's stored slices."""
    s, cut = structure, structure.substrate
    n_sub = int(round(s.substrate_height_A / engine.dz))
    if n_sub == 0:
        return
    if _shift(cut, engine.gpts) is None:  # a grid the cut was not quantised on (a finer cross-check grid)
        engine.propagate_atoms(s.substrate_positions, s.substrate_numbers, n_sub)
        return
    block = s.substrate_block
    numbers = s.substrate_block_numbers if s.substrate_block_numbers is not None else np.full(len(block), 6)
    full = n_sub - 1  # the bottom slice is cut at the sampled thickness, so it is built for this structure
    engine.wave[:] = to_block_frame(engine.wave, cut, out=engine.work)
    if full:
        engine.propagate_slices(carbon.block(cut.block_key, block, full, numbers)[:full])
    z0, z1 = full * engine.dz, cut.thickness_A
    in_last = (block[:, 2] >= z0) & (block[:, 2] < z1)
    last = block[in_last]
    engine._step(engine._transmission(last, numbers[in_last]) if len(last) else None)
    engine.wave[:] = to_cut_frame(engine.wave, cut, out=engine.work)
