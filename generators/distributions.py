"""Distributions a config field can hold (uniform, integers, truncnormal, loguniform, linspace, empirical,
choice, a fixed value) and the field types built on them (`ranged`, `choice_of`, `names_of`); `Strict`, the base
of every config section. Each draws with `sample(rng, index)`; `support()` bounds what it can draw."""
from __future__ import annotations

from typing import Annotated, Any, Union

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator


class Strict(BaseModel):
    # NaN and infinities are refused by every float field of every config section (and, through
    # `non_finite_fields`, in free-form values such as a fixed distribution's `value`).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Uniform(Strict):
    uniform: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self):
        if self.uniform[0] > self.uniform[1]:
            raise ValueError(f"uniform: [low, high] needs low <= high, got {list(self.uniform)}")
        return self

    def sample(self, rng: np.random.Generator, index: int = 0) -> float:
        return float(rng.uniform(*self.uniform))

    def support(self) -> tuple[float, float]:
        return self.uniform


class Integers(Strict):
    integers: tuple[int, int]

    @model_validator(mode="after")
    def _ordered(self):
        if self.integers[0] > self.integers[1]:
            raise ValueError(f"integers: [low, high] needs low <= high, got {list(self.integers)}")
        return self

    def sample(self, rng: np.random.Generator, index: int = 0) -> int:
        return int(rng.integers(self.integers[0], self.integers[1] + 1))

    def support(self) -> tuple[float, float]:
        return self.integers


class _TN(Strict):
    mean: float
    sd: float = Field(gt=0)
    low: float
    high: float


class TruncNormal(Strict):
    truncnormal: _TN

    @model_validator(mode="after")
    def _ordered(self):
        t = self.truncnormal
        if not t.low < t.high:
            raise ValueError(f"truncnormal needs low < high, got low={t.low}, high={t.high}")
        return self

    def sample(self, rng: np.random.Generator, index: int = 0) -> float:
        t = self.truncnormal
        # Rejection keeps the draw a pure function of rng; fall back to clipping only for absurd tails.
        for _ in range(1000):
            x = rng.normal(t.mean, t.sd)
            if t.low <= x <= t.high:
                return float(x)
        return float(np.clip(t.mean, t.low, t.high))

    def support(self) -> tuple[float, float]:
        return (self.truncnormal.low, self.truncnormal.high)


class LogUniform(Strict):
    """Uniform in log(x): as many particles between 1 and 2 nm as between 4 and 8 nm."""
    loguniform: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self):
        lo, hi = self.loguniform
        if not 0 < lo <= hi:
            raise ValueError(f"loguniform: [low, high] needs 0 < low <= high, got {list(self.loguniform)}")
        return self

    def sample(self, rng: np.random.Generator, index: int = 0) -> float:
        lo, hi = self.loguniform
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    def support(self) -> tuple[float, float]:
        return self.loguniform


class _Lin(Strict):
    start: float
    stop: float
    num: int = Field(ge=1)
    jitter_sd: float = Field(default=0.0, ge=0)


class Linspace(Strict):
    """A nominal series (e.g. a defocus series); condition i takes step i % num, jittered."""

    linspace: _Lin

    def sample(self, rng: np.random.Generator, index: int = 0) -> float:
        s = self.linspace
        steps = np.linspace(s.start, s.stop, s.num)
        jitter = rng.normal(0.0, s.jitter_sd) if s.jitter_sd > 0 else 0.0
        return float(steps[index % s.num] + jitter)

    def support(self) -> tuple[float, float]:
        s = self.linspace
        pad = 5 * s.jitter_sd
        return (min(s.start, s.stop) - pad, max(s.start, s.stop) + pad)


class _Emp(Strict):
    values: tuple[float, ...] = Field(min_length=1)
    jitter_sd: float = Field(default=0.0, ge=0)
    low: float | None = None
    high: float | None = None


class Empirical(Strict):
    """Measured values (e.g. the defocus of each of a user's micrographs, `temsynth calibrate`): a draw takes one
    of them at random and adds N(0, jitter_sd), kept inside [low, high] by reflection."""

    empirical: _Emp

    @model_validator(mode="after")
    def _bounds(self):
        e = self.empirical
        if e.low is not None and e.high is not None and not e.low < e.high:
            raise ValueError(f"empirical needs low < high, got low={e.low}, high={e.high}")
        out = [v for v in e.values if (e.low is not None and v < e.low) or (e.high is not None and v > e.high)]
        if out:
            raise ValueError(f"empirical values {out} lie outside [low, high] = [{e.low}, {e.high}]")
        return self

    def sample(self, rng: np.random.Generator, index: int = 0) -> float:
        e = self.empirical
        x = float(e.values[int(rng.integers(len(e.values)))])
        if e.jitter_sd > 0:
            x += float(rng.normal(0.0, e.jitter_sd))
        lo, hi = self.support()
        for _ in range(4):  # reflect at the bounds (a jitter larger than the range would need more)
            x = 2 * lo - x if x < lo else 2 * hi - x if x > hi else x
        return float(np.clip(x, lo, hi))

    def support(self) -> tuple[float, float]:
        e = self.empirical
        lo, hi = min(e.values) - 5 * e.jitter_sd, max(e.values) + 5 * e.jitter_sd
        return (lo if e.low is None else max(lo, e.low), hi if e.high is None else min(hi, e.high))


class Choice(Strict):
    choice: tuple[Any, ...]
    weights: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _check(self):
        if not self.choice:
            raise ValueError("choice needs at least one value")
        if self.weights is not None:
            if len(self.weights) != len(self.choice) or min(self.weights) < 0 or sum(self.weights) <= 0:
                raise ValueError("weights must be non-negative, one per choice, not all zero")
        return self

    def sample(self, rng: np.random.Generator, index: int = 0):
        p = None
        if self.weights is not None:
            w = np.asarray(self.weights, float)
            p = w / w.sum()
        v = self.choice[int(rng.choice(len(self.choice), p=p))]
        return v.item() if hasattr(v, "item") else v

    def support(self):
        try:
            vals = [float(v) for v in self.choice]
            return (min(vals), max(vals))
        except (TypeError, ValueError):
            return None


class Fixed(Strict):
    value: Any

    def sample(self, rng: np.random.Generator, index: int = 0):
        return self.value

    def support(self):
        try:
            return (float(self.value), float(self.value))
        except (TypeError, ValueError):
            return None


_DIST_KEYS = {"uniform": "Uniform", "integers": "Integers", "truncnormal": "TruncNormal", "linspace": "Linspace",
              "loguniform": "LogUniform", "empirical": "Empirical", "choice": "Choice", "value": "Fixed"}


def _dist_tag(v: Any) -> str | None:
    """Which distribution a value is, from its key: a range error is then reported once, for that one, instead of
    with an "unknown field" line for every other alternative."""
    if isinstance(v, BaseModel):
        return type(v).__name__
    if isinstance(v, dict):
        for key, tag in _DIST_KEYS.items():
            if key in v:
                return tag
    return None


Distribution = Annotated[
    Union[Annotated[Uniform, Tag("Uniform")], Annotated[LogUniform, Tag("LogUniform")],
          Annotated[Integers, Tag("Integers")], Annotated[TruncNormal, Tag("TruncNormal")],
          Annotated[Linspace, Tag("Linspace")], Annotated[Empirical, Tag("Empirical")],
          Annotated[Choice, Tag("Choice")], Annotated[Fixed, Tag("Fixed")]],
    Discriminator(_dist_tag, custom_error_type="distribution",
                  custom_error_message="expected a number or one of {uniform: [low, high]}, {integers: [low, high]}, "
                                       "{truncnormal: {mean, sd, low, high}}, {linspace: {start, stop, num}}, "
                                       "{empirical: {values: [...], jitter_sd}}, {choice: [...]}")]


def _as_dist(v: Any) -> Any:
    if isinstance(v, (int, float, str)) and not isinstance(v, bool):
        return Fixed(value=v)
    return v


def ranged(lo: float, hi: float, what: str = "value"):
    """A distribution whose whole support must lie in [lo, hi]."""

    def check(d):
        sup = d.support()
        if sup is None:
            raise ValueError(f"{what} must be numeric")
        if sup[0] < lo or sup[1] > hi:
            raise ValueError(f"{what} must lie in [{lo}, {hi}], got support [{sup[0]}, {sup[1]}]")
        return d

    from pydantic import BeforeValidator

    return Annotated[Distribution, BeforeValidator(_as_dist), AfterValidator(check)]


def choice_of(allowed: tuple[str, ...]):
    def check(d):
        vals = d.choice if isinstance(d, Choice) else (d.value,) if isinstance(d, Fixed) else None
        if vals is None:
            raise ValueError(f"use `choice: [...]` or a fixed value from {list(allowed)}")
        bad = [v for v in vals if v not in allowed]
        if bad:
            raise ValueError(f"unknown value(s) {bad}; allowed: {list(allowed)}")
        return d

    return _choice_type(check, f"use `choice: [...]` or a fixed value from {list(allowed)}")


def _choice_type(check, message: str):
    """A value or `{choice: [...]}` (typed Fixed / Choice), then `check`; `message` when it is neither."""
    from pydantic import BeforeValidator

    return Annotated[Union[Annotated[Choice, Tag("Choice")], Annotated[Fixed, Tag("Fixed")]],
                     Discriminator(_dist_tag, custom_error_type="distribution", custom_error_message=message),
                     BeforeValidator(_as_dist), AfterValidator(check)]


def names_of(what: str):
    """A choice of names checked later against a list only the whole config knows (the materials: built-in and
    the config's own)."""

    def check(d):
        vals = d.choice if isinstance(d, Choice) else (d.value,)
        bad = [v for v in vals if not isinstance(v, str)]
        if bad:
            raise ValueError(f"{what}: {bad} are not names; give material names such as Au or CdSe")
        return d

    return _choice_type(check, f"{what}: use `choice: [...]` or one name")
