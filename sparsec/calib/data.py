"""Calibration data: the sample inputs that statistics, criteria and sensitivity run on.

One type, `CalibrationData`, built from an `.npz` file (one array per graph input, samples
on axis 0), from any iterable of feed dicts, or from arrays in memory. It holds at most
`max_samples` samples (memory stays bounded whatever the source yields), hands them out
in batches of the model's own batch size (`batches_for`: a model exported with a fixed
batch of 1 or N is fed exactly that), and has a content hash so analyses can be cached per
(model, data).
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from sparsec.errors import InputError, OptionError

log = logging.getLogger("sparsec")
DEFAULT_MAX_SAMPLES = 256
DEFAULT_BATCH = 16  # for models whose batch dimension is symbolic


def model_batch_size(model: ir.Model) -> int | None:
    """The batch size the model's graph inputs fix on axis 0 (1 for the common static export),
    or None when it is symbolic (any batch size runs)."""
    fixed = {
        int(v.shape[0])
        for v in model.graph.inputs
        if not v.is_initializer() and v.shape is not None and len(v.shape) > 0 and isinstance(v.shape[0], int)
    }
    return min(fixed) if fixed else None


@dataclass(frozen=True)
class CalibrationData:
    """Samples for every graph input: `arrays[name]` has the samples on axis 0."""

    arrays: Mapping[str, np.ndarray]
    batch_size: int = DEFAULT_BATCH
    source: str = "<memory>"
    # Token batches: the input (e.g. "attention_mask" [batch, seq]) whose zeros mark padding
    # positions; activations with these leading dims then count only the real tokens' rows.
    row_mask: str | None = None
    _hash: list[str] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arrays", {k: np.asarray(v) for k, v in self.arrays.items()})
        if not self.arrays:
            raise InputError(f"calibration data {self.source}: holds no arrays")
        counts = {k: (v.shape[0] if v.ndim else -1) for k, v in self.arrays.items()}
        if len(set(counts.values())) != 1 or -1 in counts.values():
            raise InputError(
                f"calibration data {self.source}: every array needs the same number of samples on "
                f"axis 0, got {', '.join(f'{k}={n}' for k, n in counts.items())}"
            )
        if self.batch_size < 1:
            raise OptionError(f"calibration batch size must be positive, got {self.batch_size}")
        if self.row_mask is not None and self.row_mask not in self.arrays:
            raise InputError(f"calibration data {self.source}: row mask '{self.row_mask}' is not one of its arrays")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_npz(cls, path: str | Path, *, max_samples: int = DEFAULT_MAX_SAMPLES, batch_size: int = DEFAULT_BATCH) -> CalibrationData:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"calibration file {p}: no such file")
        try:
            with np.load(p, allow_pickle=False) as npz:
                arrays = {}
                for k in npz.files:
                    _check_npy_header(npz.zip, k, p)
                    arr = np.asarray(npz[k])
                    if arr.ndim == 0:
                        raise InputError(f"calibration file {p}: '{k}' is not an array with samples on axis 0")
                    arrays[k] = arr[:max_samples]
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, zlib.error) as e:  # NotImplementedError: a damaged compression method
            raise InputError(f"calibration file {p}: not a readable .npz archive ({_first_line(e)})") from None
        return cls(arrays, batch_size, str(p))

    @classmethod
    def from_feeds(
        cls, feeds: Iterable[Mapping[str, np.ndarray]], *, max_samples: int = DEFAULT_MAX_SAMPLES, batch_size: int = DEFAULT_BATCH, source: str = "<iterable>"
    ) -> CalibrationData:
        """From feed dicts (each a batch, samples on axis 0); stops after `max_samples`."""
        parts: dict[str, list[np.ndarray]] = {}
        taken = 0
        for feed in feeds:
            if taken >= max_samples:
                break
            if not isinstance(feed, Mapping) or not feed:
                raise InputError(f"calibration data {source}: each item must be a non-empty dict of input name -> array")
            take = max_samples - taken
            sizes = set()
            for name, value in feed.items():
                arr = np.asarray(value)
                if arr.ndim == 0:
                    raise InputError(f"calibration data {source}: input '{name}' is a scalar, expected a batch")
                parts.setdefault(name, []).append(arr[:take])
                sizes.add(min(arr.shape[0], take))
            if len(sizes) != 1:
                raise InputError(f"calibration data {source}: arrays of one feed differ in batch size")
            taken += sizes.pop()
        if not parts:
            raise InputError(f"calibration data {source}: the iterable yielded nothing")
        try:
            arrays = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
        except ValueError as e:
            raise InputError(f"calibration data {source}: feeds disagree in shape ({_first_line(e)})") from None
        return cls(arrays, batch_size, source)

    @classmethod
    def load(cls, spec: str | Path | CalibrationData | Iterable[Mapping[str, np.ndarray]], **kw: int) -> CalibrationData:
        """Whatever a user may pass: an instance, an .npz path, or an iterable of feeds."""
        if isinstance(spec, CalibrationData):
            return spec
        if isinstance(spec, (str, Path)):
            if not str(spec).endswith(".npz"):
                raise InputError(f"calibration file {spec}: expected an .npz file")
            return cls.from_npz(spec, **kw)
        return cls.from_feeds(spec, **kw)

    # -- use ----------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def batches(self, size: int | None = None, *, exact: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Feed dicts of `size` samples (default: `batch_size`); `exact`: leave out a shorter
        last batch (a model with a fixed batch dimension takes no other size)."""
        size = size or self.batch_size
        stop = self.num_samples - (self.num_samples % size if exact else 0)
        for start in range(0, stop, size):
            yield {k: v[start : start + size] for k, v in self.arrays.items()}

    def batches_for(self, model: ir.Model) -> Iterator[dict[str, np.ndarray]]:
        """Batches the model accepts: of its own fixed batch size, else of `batch_size`."""
        fixed = model_batch_size(model)
        if fixed is None:
            yield from self.batches()
            return
        if self.num_samples < fixed:
            raise InputError(
                f"calibration data {self.source}: holds {self.num_samples} samples, the model takes batches of exactly {fixed}"
            )
        if self.num_samples % fixed:
            log.info("calibration: the model's fixed batch is %d; the last %d samples are left out", fixed, self.num_samples % fixed)
        yield from self.batches(fixed, exact=True)

    def samples_used(self, model: ir.Model) -> int:
        """How many samples `batches_for(model)` feeds."""
        fixed = model_batch_size(model)
        return self.num_samples if fixed is None else self.num_samples - self.num_samples % fixed

    def split(self, fraction: float) -> tuple[CalibrationData, CalibrationData]:
        """(first part, held-out rest): for checking a decision on data it was not made on."""
        cut = max(1, min(self.num_samples - 1, round(self.num_samples * fraction)))
        a = {k: v[:cut] for k, v in self.arrays.items()}
        b = {k: v[cut:] for k, v in self.arrays.items()}
        return (
            CalibrationData(a, self.batch_size, self.source + "[:split]", self.row_mask),
            CalibrationData(b, self.batch_size, self.source + "[split:]", self.row_mask),
        )

    def head(self, samples: int) -> CalibrationData:
        """The first `samples` samples."""
        return CalibrationData({k: v[:samples] for k, v in self.arrays.items()}, self.batch_size, self.source, self.row_mask)

    def select_rows(self, batch: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray | None:
        """The real-token rows [rows, features] of activation `x` of this `batch`, or None when
        there is no row mask or `x` does not have the mask's leading dims."""
        if self.row_mask is None:
            return None
        mask = np.asarray(batch[self.row_mask]) != 0
        if x.ndim != mask.ndim + 1 or x.shape[: mask.ndim] != mask.shape:
            return None
        return x[mask]

    def digest(self) -> str:
        if not self._hash:
            h = hashlib.sha256()
            for name in sorted(self.arrays):
                arr = np.ascontiguousarray(self.arrays[name])
                h.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
                h.update(arr.tobytes())
            if self.row_mask is not None:
                h.update(f"row_mask={self.row_mask}".encode())
            self._hash.append(h.hexdigest())
        return self._hash[0]

    def check_against(self, model: ir.Model) -> None:
        """One-line InputError unless the arrays fit the model's graph inputs."""
        inputs = {v.name: v for v in model.graph.inputs if not v.is_initializer()}
        missing = sorted(set(inputs) - set(self.arrays))
        extra = sorted(set(self.arrays) - set(inputs))
        if missing or extra:
            raise InputError(
                f"calibration data {self.source}: inputs do not match the model (missing: {', '.join(missing) or '-'}; "
                f"unexpected: {', '.join(extra) or '-'}; the model takes {', '.join(sorted(inputs))})"
            )
        for name, value in inputs.items():
            arr = self.arrays[name]
            if arr.dtype.kind in "fc" and np.isnan(arr).any():  # would turn every statistic into NaN
                raise InputError(f"calibration data {self.source}: input '{name}' holds NaN values")
            arr = self._fit_layout(name, value)
            expected = value.dtype.numpy() if value.dtype is not None else None
            if expected is not None and arr.dtype != expected:
                if np.can_cast(arr.dtype, expected, casting="same_kind"):
                    self.arrays[name] = arr.astype(expected)  # type: ignore[index]
                else:
                    raise InputError(
                        f"calibration data {self.source}: input '{name}' is {arr.dtype}, the model expects {np.dtype(expected)}"
                    )


    def _fit_layout(self, name: str, value: ir.Value) -> np.ndarray:
        """The samples of input `name` as [samples, *per-sample shape]; data already batched
        for a fixed-batch model ([batches, N, ...] for model input [N, ...]) is flattened."""
        arr = self.arrays[name]
        if value.shape is None:
            return arr
        model_shape = [d if isinstance(d, int) else None for d in value.shape]
        sample = model_shape[1:]

        def fits(per_sample: tuple[int, ...]) -> bool:
            return len(per_sample) == len(sample) and all(d is None or d == s for d, s in zip(sample, per_sample, strict=True))

        if arr.ndim == len(model_shape) and fits(arr.shape[1:]):
            return arr
        if arr.ndim == len(model_shape) + 1 and model_shape and model_shape[0] in (None, arr.shape[1]) and fits(arr.shape[2:]):
            flat = arr.reshape(arr.shape[0] * arr.shape[1], *arr.shape[2:])
            self.arrays[name] = flat  # type: ignore[index]
            return flat
        spelled = [str(d) if isinstance(d, int) else (d.value or "?") for d in value.shape]
        raise InputError(
            f"calibration data {self.source}: input '{name}' has shape [{', '.join(map(str, arr.shape))}] (samples on "
            f"axis 0), the model takes [{', '.join(spelled)}]: each sample must be [{', '.join(spelled[1:])}]"
        )


def save_npz(path: str | Path, feeds: Mapping[str, np.ndarray]) -> Path:
    """Write feeds (samples on axis 0) as an .npz that `--calib` reads."""
    p = Path(path)
    np.savez(p, **{k: np.asarray(v) for k, v in feeds.items()})
    return p


def _check_npy_header(archive: zipfile.ZipFile, key: str, path: Path) -> None:
    """Refuse a member whose header declares more data than it holds, before numpy allocates
    it (a few bytes can declare terabytes); other damage is left to numpy's own checks."""
    names = archive.namelist()
    name = key + ".npy" if key + ".npy" in names else key
    with archive.open(name) as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        except ValueError:
            return  # not an .npy member, or a header numpy reads its own way: np.load decides
    held = archive.getinfo(name).file_size
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=object)) * dtype.itemsize > held:
        raise InputError(f"calibration file {path}: '{key}' declares shape {tuple(shape)} of {dtype} but holds {held} bytes")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
