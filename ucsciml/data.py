"""Sparse sensor data as an ``xarray.Dataset`` with a ``sensor`` dimension.

A sensor data set holds one observed variable (``u`` by default), or several (``values=``,
e.g. velocity components ``u`` and ``v``; attribute ``observed`` lists them), at scattered
points, the
points' physical coordinates (``x``, ``t``, ...) as coordinates along ``sensor``, and an
optional per-sensor ``noise_std``. The coordinate order is kept in the ``coords`` attribute
so that ``points(ds)`` always stacks the columns the same way. :func:`synthetic_sensors`
makes such a set from a PDE's reference solution (noisy sensors at random points).

Example:
    >>> import numpy as np, ucsciml as uq
    >>> ds = uq.data.sensors(x=np.array([0.1, 0.2]), t=np.array([0.0, 0.5]), u=np.ones(2))
    >>> uq.data.points(ds).shape
    (2, 2)
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from ucsciml._io import atomic_write
from ucsciml.pde.base import AbstractPDE

log = logging.getLogger(__name__)

SENSOR_DIM = "sensor"
_COORDS_ATTR = "coords"


class DataError(ValueError):
    """Sensor data that cannot be used, with the field at fault and the fix."""


def sensors(
    *,
    u: np.ndarray | None = None,
    noise_std: float | np.ndarray | None = None,
    name: str = "u",
    attrs: Mapping[str, object] | None = None,
    values: Mapping[str, np.ndarray] | None = None,
    **coords: np.ndarray,
) -> xr.Dataset:
    """Build a validated sensor data set from arrays.

    Args:
        u: observed values, one per sensor.
        noise_std: known measurement noise standard deviation, a scalar or one per sensor
            (shared by every observed variable); ``None`` when the noise is unknown (a model
            may then treat it as latent).
        name: name of the observed variable.
        attrs: extra attributes stored on the data set.
        values: instead of ``u``/``name``, several observed variables measured at every
            sensor, ``{name: values}``, e.g. ``{"u": ..., "v": ...}`` for velocity sensors.
        **coords: the sensors' physical coordinates, e.g. ``x=..., t=...``, in order.

    Returns:
        An ``xarray.Dataset`` with dimension ``sensor``.

    Raises:
        DataError: on empty, NaN/inf, mismatched or missing fields, or non-positive noise.
    """
    if not coords:
        raise DataError(
            "sensors(): no coordinates given; pass the sensor locations, e.g. x=..., t=..."
        )
    if (u is None) == (values is None):
        raise DataError(
            "sensors(): give the observed values either as u=... or as values={name: ...}, "
            "not both or neither"
        )
    if values is None:
        values = {name: u}
    if not values:
        raise DataError("sensors(values=...) is empty; give at least one observed variable")
    arrays = {k: _as_1d(v, k) for k, v in values.items()}
    name = next(iter(arrays))
    n = arrays[name].shape[0]
    data_vars = {k: ((SENSOR_DIM,), v) for k, v in arrays.items()}
    if noise_std is not None:
        noise = np.asarray(noise_std, dtype=float)
        if noise.ndim == 0:
            noise = np.full(n, float(noise))
        data_vars["noise_std"] = ((SENSOR_DIM,), _as_1d(noise, "noise_std"))
    coord_vars = {c: ((SENSOR_DIM,), _as_1d(v, c)) for c, v in coords.items()}
    for field, (_, arr) in {**data_vars, **coord_vars}.items():
        if arr.shape[0] != n:
            raise DataError(
                f"field '{field}' has {arr.shape[0]} values but '{name}' has {n}; "
                "give every field one value per sensor"
            )
    ds = xr.Dataset(data_vars, coords=coord_vars)
    ds.attrs.update(dict(attrs or {}))
    ds.attrs[_COORDS_ATTR] = " ".join(coords)
    ds.attrs["observed"] = " ".join(arrays)
    return validate(ds)


def validate(ds: xr.Dataset) -> xr.Dataset:
    """Check a sensor data set and return it unchanged.

    Raises:
        DataError: naming the field at fault and how to fix it.
    """
    if SENSOR_DIM not in ds.dims:
        raise DataError(
            f"data has no '{SENSOR_DIM}' dimension (dims: {dict(ds.sizes)}); "
            f"store one row per sensor along '{SENSOR_DIM}'"
        )
    n = ds.sizes[SENSOR_DIM]
    if n == 0:
        raise DataError("data is empty: it has 0 sensors; provide at least one observation")
    observed = observed_names(ds)
    for field in observed:
        if field not in ds.data_vars:
            raise DataError(
                f"data has no observed variable '{field}' (variables: "
                f"{sorted(ds.data_vars)}); name the observed field '{field}'"
            )
    names = coordinate_names(ds)
    if not names:
        raise DataError("data has no physical coordinates along 'sensor'; add e.g. x and t")
    for field in [*observed, *names, *(["noise_std"] if "noise_std" in ds else [])]:
        var = ds[field]
        if var.dims != (SENSOR_DIM,):
            raise DataError(f"field '{field}' has dims {var.dims}; expected ('{SENSOR_DIM}',)")
        values = np.asarray(var.values)
        if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
            raise DataError(f"field '{field}' has dtype {values.dtype}; expected real numbers")
        bad = ~np.isfinite(values)
        if bad.any():
            idx = np.flatnonzero(bad)[:5].tolist()
            raise DataError(
                f"field '{field}' has {int(bad.sum())} NaN/inf value(s) at sensors "
                f"{idx}; drop those sensors or fill them before fitting"
            )
    if "noise_std" in ds and (ds["noise_std"].values <= 0).any():
        raise DataError(
            "field 'noise_std' must be > 0 at every sensor (got min "
            f"{float(ds['noise_std'].min())}); use a small positive value or "
            "omit noise_std to make the noise a latent parameter"
        )
    return ds


def coordinate_names(ds: xr.Dataset) -> tuple[str, ...]:
    """The physical coordinate names of a sensor data set, in their stored order."""
    stored = ds.attrs.get(_COORDS_ATTR)
    if stored:
        names = tuple(str(stored).split())
        missing = [c for c in names if c not in ds.coords]
        if missing:
            raise DataError(
                f"coordinate(s) {missing} listed in attrs['coords'] are missing; "
                "add them as coordinates along 'sensor'"
            )
        return names
    return tuple(str(c) for c in ds.coords if ds[c].dims == (SENSOR_DIM,))


def observed_names(ds: xr.Dataset) -> tuple[str, ...]:
    """The observed variables' names (attribute ``observed``, space-separated; default ``u``)."""
    return tuple(str(ds.attrs.get("observed", "u")).split()) or ("u",)


def points(ds: xr.Dataset) -> np.ndarray:
    """Sensor locations as an ``(n_sensors, n_coords)`` float array, columns in coord order."""
    return np.stack([np.asarray(ds[c].values, dtype=float) for c in coordinate_names(ds)], axis=-1)


def observations(ds: xr.Dataset) -> np.ndarray:
    """The observed values, shape ``(n_sensors,)``; ``(n_sensors, n_observed)`` (columns in
    :func:`observed_names` order) when several variables are observed."""
    names = observed_names(ds)
    if len(names) == 1:
        return np.asarray(ds[names[0]].values, dtype=float)
    return np.stack([np.asarray(ds[k].values, dtype=float) for k in names], axis=-1)


def noise_std(ds: xr.Dataset) -> np.ndarray | None:
    """Per-sensor noise standard deviations, or ``None`` when unknown."""
    return np.asarray(ds["noise_std"].values, dtype=float) if "noise_std" in ds else None


def load(path: str | os.PathLike) -> xr.Dataset:
    """Load sensor data from netCDF (``.nc``) or CSV (``.csv``) and validate it.

    A CSV file is UTF-8 text with a header line; the observed column is ``u`` and an optional
    ``noise_std`` column holds per-sensor noise; every other column is a coordinate. Each row
    is one sensor and every value must be a finite number.

    Several sensors at the same coordinates are allowed: they are repeated measurements,
    each an independent observation with its own noise. Loading logs a warning naming the
    first repeat, since an accidental copy of a row looks the same.

    Raises:
        FileNotFoundError: when the file does not exist.
        DataError: on an unknown file type, an unreadable (truncated, corrupt, empty,
            non-UTF-8) file or invalid content; the message starts with the file's path.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sensor data file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; [data] path must name a .nc or .csv file")
    suffix = path.suffix.lower()
    if suffix not in (".nc", ".csv"):
        raise DataError(f"unknown sensor data file type '{suffix}' for {path}; use .nc or .csv")
    try:
        ds = _load_netcdf(path) if suffix == ".nc" else _load_csv(path)
        validate(ds)
    except DataError as err:
        message = str(err)
        raise DataError(
            message if message.startswith(str(path)) else f"{path}: {message}"
        ) from None
    _warn_repeated_coordinates(ds, path)
    return ds


def check_domain(ds: xr.Dataset, domain: Mapping[str, tuple[float, float]]) -> xr.Dataset:
    """Check that every sensor lies inside a box domain, ``{coord: (low, high)}``.

    Coordinates the domain does not name are not checked. A relative tolerance of ``1e-9``
    of each side's length admits sensors written on the boundary with rounding.

    Returns:
        ``ds`` unchanged.

    Raises:
        DataError: naming the first sensor outside (index, coordinate, value), the domain
            and how many sensors are outside in all.
    """
    names = [c for c in coordinate_names(ds) if c in domain]
    if not names:
        return ds
    values = np.stack([np.asarray(ds[c].values, dtype=float) for c in names], axis=-1)
    lo = np.array([float(domain[c][0]) for c in names])
    hi = np.array([float(domain[c][1]) for c in names])
    tol = 1e-9 * (hi - lo)
    outside = (values < lo - tol) | (values > hi + tol)
    if not outside.any():
        return ds
    sensor, column = (int(i) for i in np.argwhere(outside)[0])
    box = " x ".join(f"{c} in [{domain[c][0]:g}, {domain[c][1]:g}]" for c in names)
    count = int(outside.any(axis=1).sum())
    raise DataError(
        f"sensor {sensor} lies outside the PDE's domain: {names[column]} = "
        f"{values[sensor, column]:g} is not in [{lo[column]:g}, {hi[column]:g}] (domain {box}; "
        f"{count} of {values.shape[0]} sensors outside); drop those sensors or convert the "
        "coordinates to the PDE's units"
    )


def save(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Validate and atomically save sensor data as netCDF (``.nc``) or CSV (``.csv``)."""
    validate(ds)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".nc":
        return atomic_write(path, lambda p: ds.to_netcdf(p, engine="h5netcdf"))
    if suffix == ".csv":
        if len(observed_names(ds)) > 1:
            raise DataError(
                f"CSV holds one observed column 'u'; this data observes {observed_names(ds)}: "
                "save it as .nc"
            )
        columns = [*coordinate_names(ds), ds.attrs.get("observed", "u")]
        if "noise_std" in ds:
            columns.append("noise_std")
        table = np.stack([np.asarray(ds[c].values, dtype=float) for c in columns], axis=-1)
        header = ",".join(columns)
        return atomic_write(
            path, lambda p: np.savetxt(p, table, delimiter=",", header=header, comments="")
        )
    raise DataError(f"unknown sensor data file type '{suffix}' for {path}; use .nc or .csv")


def synthetic_sensors(
    pde: AbstractPDE, num_sensors: int, noise: float, seed: int, placement: str = "interior"
) -> xr.Dataset:
    """Noisy sensors at uniform random points of the PDE's domain, truth from its solver.

    ``placement="interior"`` spreads the sensors over the whole domain (inverse problems);
    ``"initial_boundary"`` puts them on the initial slice (``t`` at its lower bound) and on
    both ends of every other coordinate, each face drawn with probability proportional to
    its size (forward problems: Raissi et al.'s initial and boundary data).
    The noise standard deviation is ``noise * std(u)`` over the sensors (Raissi et al.'s
    convention: ``noise = 0.01`` is "1% noise").
    """
    rng = np.random.default_rng(seed)
    lo = np.array([pde.domain[c][0] for c in pde.coords])
    hi = np.array([pde.domain[c][1] for c in pde.coords])
    points = lo + rng.uniform(size=(num_sensors, len(lo))) * (hi - lo)
    if placement == "initial_boundary":
        points = _on_faces(points, pde.coords, lo, hi, rng)
    elif placement != "interior":
        raise ValueError(f"placement must be 'interior' or 'initial_boundary', got {placement!r}")
    # One variable per observable (the field itself, or e.g. velocity from a stream function);
    # one noise level from their pooled spread.
    values = pde.solve_observables(points)
    spread = float(np.std(np.concatenate(list(values.values()))))
    sd = noise * spread if noise > 0 else 1e-6 * max(spread, 1e-12)
    observed = (
        {k: v + sd * rng.normal(size=v.shape) for k, v in values.items()} if noise > 0 else values
    )
    coords = {c: points[:, i] for i, c in enumerate(pde.coords)}
    return sensors(values=observed, noise_std=sd, attrs={"noise_fraction": noise}, **coords)


def _on_faces(points, coords, lo, hi, rng) -> np.ndarray:
    """Move each point onto a face of the box: ``t = t_min`` or either end of a space axis."""
    faces = [(i, lo[i]) for i in range(len(coords))]
    faces += [(i, hi[i]) for i, c in enumerate(coords) if c != "t"]
    span = hi - lo
    sizes = np.array([np.prod(np.delete(span, i)) for i, _ in faces])
    choice = rng.choice(len(faces), size=points.shape[0], p=sizes / sizes.sum())
    points = points.copy()
    for k, (axis, value) in enumerate(faces):
        points[choice == k, axis] = value
    return points


def _load_netcdf(path: Path) -> xr.Dataset:
    try:
        # phony_dims: plain HDF5 datasets (no netCDF dimensions) get named dimensions, so
        # the error below names what is missing instead of h5netcdf warning about it.
        with xr.open_dataset(path, engine="h5netcdf", phony_dims="access") as ds:
            return ds.load()
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise DataError(
            f"{path}: not a readable netCDF file ({_first_line(err)}); it may be truncated or "
            "not netCDF at all: write it again with ucsciml.data.save or xarray's to_netcdf"
        ) from None


#: CSV column names that would collide with :func:`sensors`' own arguments or dimension.
_RESERVED_COLUMNS = ("name", "attrs", "values", SENSOR_DIM)


def _load_csv(path: Path) -> xr.Dataset:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not UTF-8 text (byte {err.start} is 0x{err.object[err.start]:02x}); "
            "save the CSV as UTF-8"
        ) from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err}); check it") from None
    reader = csv.reader(io.StringIO(text))
    try:
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as err:  # e.g. a field longer than csv.field_size_limit()
        raise DataError(
            f"{path}: line {reader.line_num} is not valid CSV ({err}); the file may be "
            "damaged or not CSV at all"
        ) from None
    if not rows:
        raise DataError(
            f"{path}: the CSV file is empty; write a header line (e.g. x,t,u) and one row "
            "per sensor"
        )
    header = [cell.strip() for cell in rows[0][1]]
    if "" in header:
        raise DataError(
            f"{path}: CSV header {header} has an empty column name (column "
            f"{header.index('') + 1}); name every column"
        )
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(f"{path}: CSV header names column(s) {repeated} twice; name each once")
    if "u" not in header:
        raise DataError(
            f"{path}: CSV header {header} has no 'u' column (the observed values); the first "
            "line must name the columns, e.g. x,t,u"
        )
    spaced = [c for c in header if len(c.split()) != 1]
    if spaced:
        raise DataError(
            f"{path}: CSV column name(s) {spaced} contain whitespace; name each column with "
            "one word, e.g. x,t,u"
        )
    reserved = [c for c in header if c in _RESERVED_COLUMNS]
    if reserved:
        raise DataError(f"{path}: CSV column name(s) {reserved} are reserved; rename them")
    if len(rows) == 1:
        raise DataError(f"{path}: the CSV has a header but no rows; add one row per sensor")
    table = np.empty((len(rows) - 1, len(header)))
    for i, (line, row) in enumerate(rows[1:]):
        if len(row) != len(header):
            raise DataError(
                f"{path}: line {line} has {len(row)} value(s) but the header names "
                f"{len(header)} columns ({','.join(header)}); the file may be truncated: "
                "complete or delete that line"
            )
        for j, cell in enumerate(row):
            try:
                table[i, j] = float(cell)
            except ValueError:
                raise DataError(
                    f"{path}: line {line}, column '{header[j]}': {cell.strip()!r} is not a "
                    "number; every value must be a number (use '.' as the decimal point)"
                ) from None
    cols = {name: table[:, i] for i, name in enumerate(header)}
    u = cols.pop("u")
    noise = cols.pop("noise_std", None)
    return sensors(u=u, noise_std=noise, **cols)


def _warn_repeated_coordinates(ds: xr.Dataset, path: Path) -> None:
    pts = points(ds)
    _, first, counts = np.unique(pts, axis=0, return_index=True, return_counts=True)
    if (counts == 1).all():
        return
    repeats = np.setdiff1d(np.arange(pts.shape[0]), first)
    sensor = int(repeats[0])
    same = int(np.flatnonzero((pts == pts[sensor]).all(axis=1))[0])
    where = ", ".join(
        f"{c} = {v:g}" for c, v in zip(coordinate_names(ds), pts[sensor], strict=True)
    )
    log.warning(
        "%s: %d sensor(s) repeat the coordinates of an earlier one (e.g. sensor %d = sensor %d "
        "at %s); they are fitted as repeated independent measurements",
        path,
        repeats.size,
        sensor,
        same,
        where,
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _as_1d(values: object, field: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(
            f"field '{field}' must be 1-D (one value per sensor); got shape {arr.shape}"
        )
    return arr
