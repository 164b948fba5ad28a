"""Case files: strict TOML configs for a whole run (data, PDE, model, backend).

Every table and key is checked against what the code accepts: an unknown key is an error
naming the table and the allowed keys. Priors are tables such as
``{prior = "LogNormal", loc = -5.0, scale = 1.0, truth = 0.0032}`` built from a fixed list
of NumPyro distributions: nothing in a case file is ever evaluated or executed.

Two conventions of dataclass field metadata let a class shape its table without this module
importing it: a field with ``metadata["table"]`` (a settings class, e.g. a backend's ``map``,
:class:`ucsciml.inference.MAPFit`) is a sub-table such as ``[backend.nuts.map]``, checked
key by key against that class; a field with ``metadata["deprecated"] = "map.adam_steps"`` is
an old key, still accepted: it is moved to its new place with a logged deprecation warning.

``[data] source = "file"`` reads ``path`` (relative to the case file's folder; ``.nc`` or
``.csv``, see :func:`ucsciml.data.load`): the file fixes the sensors, so ``num_sensors``,
``noise`` and ``placement``, which shape synthetic data only, are ignored with a logged
warning; the noise comes from the file's ``noise_std`` column or ``[model] noise_std``.

A model family that brings its own problem (the neural process, the fractional SDE,
ProbConserv; :mod:`ucsciml.family_case`) has a case file of ``[case]``, ``[model]`` (its
settings, checked against its case class), ``[backend.<name>]`` for the backends it hands
to the inference layer, and ``[output]``.

Example case::

    [case]
    name = "burgers_inverse"
    seed = 0
    backend = "nuts"

    [pde]
    name = "burgers"
    lambda1 = { prior = "Normal", loc = 1.0, scale = 0.5, truth = 1.0 }

    [data]
    num_sensors = 200
    noise = 0.01

    [model]
    name = "bpinn"
    width = 20

    [backend.nuts]
    num_samples = 300
    init = "map"

    [backend.nuts.map]
    adam_steps = 1000
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import functools
import inspect
import logging
import math
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import numpyro.distributions as dist

from ucsciml import registry
from ucsciml.conservation import ConservationSettings
from ucsciml.pde.base import Unknown
from ucsciml.replicates import CalibrationSettings

log = logging.getLogger(__name__)

PRIORS = {
    name: getattr(dist, name)
    for name in (
        "Normal",
        "LogNormal",
        "LogUniform",
        "HalfNormal",
        "HalfCauchy",
        "Uniform",
        "Exponential",
        "Gamma",
        "InverseGamma",
        "TruncatedNormal",
        "StudentT",
        "Beta",
    )
}

CASE_KEYS = {"name": str, "description": str, "seed": int, "backend": str}
DATA_KEYS = {
    "source": str,
    "path": str,
    "num_sensors": int,
    "noise": float,
    "seed": int,
    "placement": str,
}
DATA_DEFAULTS = {
    "source": "synthetic",
    "num_sensors": 200,
    "noise": 0.01,
    "seed": 0,
    "placement": "interior",
}
PLACEMENTS = ("interior", "initial_boundary")
#: ``[data]`` keys that only synthetic data use; a sensor file fixes sensors and noise.
SYNTHETIC_ONLY = ("num_sensors", "noise", "placement")
TOP_KEYS = (
    "case",
    "pde",
    "data",
    "model",
    "backend",
    "evaluation",
    "calibration",
    "conservation",
    "output",
)
#: The tables of a family case file (:mod:`ucsciml.family_case`).
FAMILY_TOP_KEYS = ("case", "model", "backend", "output")
EVAL_KEYS = {"grid": list}
#: ``[output]``: what the run directory keeps. ``save_network_weights = false`` leaves the
#: network sites (``Program.network_sites``) out of ``posterior.nc``; the physical
#: parameters, the predictions on the evaluation grid and the other groups stay.
OUTPUT_KEYS = {"save_network_weights": bool}
OUTPUT_DEFAULTS = {"save_network_weights": True}


class ConfigError(ValueError):
    """A case file that cannot be run, with the table and key at fault."""


def load_case(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a case file; returns the resolved config (defaults filled in).

    A relative ``[data] path`` is resolved against the case file's folder, not the current
    directory, so a case and its sensor file can be run from anywhere; the resolved config
    holds the absolute path.

    Raises:
        FileNotFoundError: when the file does not exist.
        ConfigError: on a file that is not UTF-8 TOML, unknown tables or keys, or bad values.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"case file not found: {path}; `ucsciml list` shows the cases")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give a case file (.toml) or a case name")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {err.start} is 0x{err.object[err.start]:02x}); "
            "TOML files must be UTF-8: save the case file as UTF-8"
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    cfg = resolve_config(raw, source=str(path))
    if "data" in cfg and cfg["data"]["source"] == "file":
        cfg["data"]["path"] = str(data_path(cfg["data"]["path"], path.parent))
    return cfg


def data_path(value: str, case_dir: str | os.PathLike) -> Path:
    """``[data] path`` as an absolute path: ``~`` expanded, a relative path taken from the
    case file's folder ``case_dir``."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(case_dir).resolve() / path


def resolve_config(raw: dict[str, Any], source: str = "<config>") -> dict[str, Any]:
    """Validate a raw config mapping and fill defaults.

    Besides the tables' keys, every value is checked against the type the code declares for
    it (a dataclass field's annotation), NaN and infinity are refused anywhere, seeds must be
    ``>= 0`` and ``[evaluation] grid`` needs one positive size per PDE coordinate.
    """
    cfg = copy.deepcopy(raw)
    model = cfg.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    if isinstance(name, str) and name in registry.CASES:
        return _resolve_family(cfg, source)
    _only(cfg, TOP_KEYS, "the top level", source)
    for table in ("case", "pde", "model"):
        if table not in cfg:
            raise ConfigError(f"{source}: missing table [{table}]")
    for table in TOP_KEYS:
        if table in cfg and not isinstance(cfg[table], dict):
            raise ConfigError(
                f"{source}: [{table}] must be a table (a [{table}] header followed by "
                f"key = value lines), got {table} = {cfg[table]!r}"
            )
    _check_finite(cfg, (), source)
    case = _resolve_case_table(cfg["case"], source)
    data = {**DATA_DEFAULTS, **cfg.get("data", {})}
    _check_types(data, DATA_KEYS, "[data]", source)
    if data["source"] not in ("synthetic", "file"):
        raise ConfigError(
            f"{source}: [data] source must be 'synthetic' or 'file', got {data['source']!r}"
        )
    if data["placement"] not in PLACEMENTS:
        raise ConfigError(
            f"{source}: [data] placement must be one of {list(PLACEMENTS)}, "
            f"got {data['placement']!r}"
        )
    if data["source"] == "file" and "path" not in data:
        raise ConfigError(f"{source}: [data] source = 'file' needs path = '...'")
    if data["source"] == "file":
        ignored = [k for k in SYNTHETIC_ONLY if k in cfg.get("data", {})]
        if ignored:
            log.warning(
                "%s: [data] %s only shape synthetic data and are ignored for source = 'file': "
                "the file fixes the sensors, and their noise comes from its noise_std column "
                "(or [model] noise_std); remove %s",
                source,
                ", ".join(ignored),
                "it" if len(ignored) == 1 else "them",
            )
    if data["seed"] < 0:
        raise ConfigError(f"{source}: [data] seed must be an integer >= 0, got {data['seed']}")
    if "\0" in data.get("path", ""):
        raise ConfigError(f"{source}: [data] path contains a NUL character: {data['path']!r}")
    if data["num_sensors"] < 1:
        raise ConfigError(f"{source}: [data] num_sensors must be >= 1, got {data['num_sensors']}")
    if data["noise"] < 0:
        raise ConfigError(
            f"{source}: [data] noise must be >= 0 (a fraction of the solution's "
            f"standard deviation), got {data['noise']}"
        )
    cfg["data"] = data
    cfg["pde"] = _resolve_object(cfg["pde"], registry.PDES, "pde", source, skip=())
    cfg["model"] = _resolve_object(cfg["model"], registry.MODELS, "model", source, skip=("pde",))
    backends = cfg.get("backend", {})
    if not isinstance(backends, dict):
        raise ConfigError(f"{source}: [backend] must be a table of [backend.<name>] tables")
    resolved = {}
    for name, settings in backends.items():
        if not isinstance(settings, dict):
            raise ConfigError(
                f"{source}: [backend.{name}] must be a table of the backend's settings, got "
                f"backend.{name} = {settings!r}"
            )
        resolved[name] = _resolve_object(
            {"name": name, **settings}, registry.BACKENDS, f"backend.{name}", source, skip=()
        )
        resolved[name].pop("name")
    if case["backend"] not in registry.BACKENDS:
        raise ConfigError(
            f"{source}: [case] unknown backend '{case['backend']}'; choose one of "
            f"{sorted(registry.BACKENDS)}"
        )
    cfg["backend"] = resolved
    if "calibration" in cfg:
        cfg["calibration"] = _resolve_calibration(cfg["calibration"], source)
    if "conservation" in cfg:
        cfg["conservation"] = _resolve_conservation(cfg["conservation"], cfg["pde"], source)
        if "calibration" in cfg:
            raise ConfigError(
                f"{source}: [conservation] and [calibration] cannot be combined yet: the "
                "replicate refits do not impose the conservation law; remove one of them"
            )
    cfg["output"] = {**OUTPUT_DEFAULTS, **cfg.get("output", {})}
    _check_types(cfg["output"], OUTPUT_KEYS, "[output]", source)
    cfg["evaluation"] = {"grid": [64, 32], **cfg.get("evaluation", {})}
    _check_types(cfg["evaluation"], EVAL_KEYS, "[evaluation]", source)
    coords = registry.resolve(registry.PDES, cfg["pde"]["name"], "pde").coords
    grid = cfg["evaluation"]["grid"]
    if len(grid) != len(coords) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in grid
    ):
        raise ConfigError(
            f"{source}: [evaluation] grid must be {len(coords)} positive integers, the number "
            f"of points along {', '.join(coords)}, e.g. grid = {[64, 32, 32][: len(coords)]}; "
            f"got {grid!r}"
        )
    return cfg


def _resolve_case_table(case: dict[str, Any], source: str) -> dict[str, Any]:
    """``[case]`` checked, with its defaults."""
    _check_types(case, CASE_KEYS, "[case]", source)
    if "name" not in case:
        raise ConfigError(f"{source}: [case] needs a name")
    name = case["name"]
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(
            f"{source}: [case] name must be a plain folder name (it names the run directory "
            f"runs/<name>/): no '/', '\\' or NUL, not empty, '.' or '..'; got {name!r}"
        )
    case.setdefault("seed", 0)
    case.setdefault("backend", "nuts")
    case.setdefault("description", "")
    if case["seed"] < 0:
        raise ConfigError(f"{source}: [case] seed must be an integer >= 0, got {case['seed']}")
    return case


def _resolve_family(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """A family case file (:mod:`ucsciml.family_case`): ``[case]``, ``[model]`` checked
    against the family's case class, ``[backend.<name>]`` for the backends it hands to the
    inference layer, ``[output]``."""
    name = cfg["model"]["name"]
    extra = sorted(set(cfg) - set(FAMILY_TOP_KEYS))
    if extra:
        raise ConfigError(
            f"{source}: table(s) {extra} do not apply to model '{name}', a family that "
            f"generates its own problem (its settings go in [model]); allowed tables: "
            f"{list(FAMILY_TOP_KEYS)}"
        )
    for table in ("case", "model"):
        if not isinstance(cfg.get(table), dict):
            raise ConfigError(f"{source}: missing table [{table}]")
    _check_finite(cfg, (), source)
    cls = registry.resolve(registry.CASES, name, "model")
    cfg["case"].setdefault("backend", cls.backends[0])
    cfg["case"] = _resolve_case_table(cfg["case"], source)
    cfg["model"] = _resolve_object(cfg["model"], registry.CASES, "model", source, skip=())
    backend = cfg["case"]["backend"]
    if backend not in cls.backends:
        raise ConfigError(
            f"{source}: [case] backend '{backend}' does not apply to model '{name}'; choose "
            f"one of {list(cls.backends)}"
        )
    backends = cfg.get("backend", {})
    if not isinstance(backends, dict):
        raise ConfigError(f"{source}: [backend] must be a table of [backend.<name>] tables")
    resolved = {}
    for bname, settings in backends.items():
        if bname not in cls.backends or bname in cls.own_backends:
            delegated = [b for b in cls.backends if b not in cls.own_backends]
            raise ConfigError(
                f"{source}: [backend.{bname}] does not apply to model '{name}': it takes "
                f"settings for {delegated or 'no inference backend'}"
                + (f"; '{bname}' is its own fit, set in [model]" if bname in cls.backends else "")
            )
        if not isinstance(settings, dict):
            raise ConfigError(f"{source}: [backend.{bname}] must be a table of settings")
        resolved[bname] = _resolve_object(
            {"name": bname, **settings}, registry.BACKENDS, f"backend.{bname}", source, skip=()
        )
        resolved[bname].pop("name")
    cfg["backend"] = resolved
    cfg["output"] = {**OUTPUT_DEFAULTS, **cfg.get("output", {})}
    _check_types(cfg["output"], OUTPUT_KEYS, "[output]", source)
    return cfg


def is_family(cfg: dict[str, Any]) -> bool:
    """True for a resolved family case config (:mod:`ucsciml.family_case`)."""
    return cfg["model"]["name"] in registry.CASES


def build_family(cfg: dict[str, Any]) -> Any:
    """The family case object of a resolved family case config."""
    return build(cfg["model"], "family")


def _check_finite(value: Any, where: tuple[str, ...], source: str) -> None:
    """Refuse NaN and infinity anywhere in a case file (TOML allows ``nan`` and ``inf``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, (*where, str(key)), source)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, (*where[:-1], f"{where[-1]}[{i}]"), source)
    elif isinstance(value, float) and not math.isfinite(value):
        table = ".".join(where[:-1])
        raise ConfigError(
            f"{source}: [{table}] {where[-1]} = {value} is not a finite number; NaN and "
            "infinity are never valid in a case file: give a finite value, or remove the key "
            "to use its default"
        )


def _resolve_calibration(table: Any, source: str) -> dict[str, Any]:
    """Check ``[calibration]`` against :class:`ucsciml.replicates.CalibrationSettings`."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [calibration] must be a table")
    fields = {f.name: f for f in dataclasses.fields(CalibrationSettings)}
    _only(table, fields, "[calibration]", source)
    out = {k: table.get(k, f.default) for k, f in fields.items()}
    try:
        calibration_settings({"calibration": out})
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    return out


def _resolve_conservation(table: Any, pde: dict[str, Any], source: str) -> dict[str, Any]:
    """Check ``[conservation]`` against :class:`ucsciml.conservation.ConservationSettings`
    and the PDE's coordinates."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [conservation] must be a table")
    fields = {f.name: f for f in dataclasses.fields(ConservationSettings)}
    _only(table, fields, "[conservation]", source)
    if "total" not in table:
        raise ConfigError(
            f"{source}: [conservation] needs total, the conserved integral of the field over "
            "`over` at every slice, e.g. total = 0.0"
        )
    out = {k: table.get(k, f.default) for k, f in fields.items()}
    coords = registry.resolve(registry.PDES, pde["name"], "pde").coords
    try:
        ConservationSettings(**out).check_coords(tuple(coords))
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    return out


def conservation_settings(cfg: dict[str, Any]) -> ConservationSettings | None:
    """The case's ``[conservation]`` law, or ``None`` when it has no such table."""
    table = cfg.get("conservation")
    return None if table is None else ConservationSettings(**table)


def calibration_settings(cfg: dict[str, Any]) -> CalibrationSettings | None:
    """The case's ``[calibration]`` settings, or ``None`` when it has no such table."""
    table = cfg.get("calibration")
    if table is None:
        return None
    values = dict(table)
    for name in ("level", "holdout", "max_misfit"):
        if isinstance(values.get(name), int) and not isinstance(values[name], bool):
            values[name] = float(values[name])
    return CalibrationSettings(**values)


def build(table: dict[str, Any], kind: str, **extra: Any) -> Any:
    """Instantiate a resolved ``[pde]``/``[model]``/``[backend.x]`` table."""
    tables = {
        "pde": registry.PDES,
        "model": registry.MODELS,
        "backend": registry.BACKENDS,
        "family": registry.CASES,
    }
    settings = dict(table)
    cls = registry.resolve(tables[kind], settings.pop("name"), kind)
    sub_tables = {f.name: f.metadata["table"] for f in _table_fields(cls)}
    kwargs = {k: build_prior(v) if _is_prior(v) else v for k, v in settings.items()}
    try:
        for key, sub in sub_tables.items():
            if isinstance(kwargs.get(key), dict):
                kwargs[key] = sub(**kwargs[key])
        return cls(**kwargs, **extra)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"[{kind}]: {err}") from None


def build_backend(cfg: dict[str, Any], name: str) -> Any:
    """The backend ``name`` with the case's ``[backend.name]`` settings."""
    return build({"name": name, **cfg["backend"].get(name, {})}, "backend")


def build_prior(spec: dict[str, Any]) -> Unknown:
    """``{prior = "LogNormal", loc = ..., scale = ..., truth = ...}`` -> :class:`Unknown`."""
    params = {k: v for k, v in spec.items() if k not in ("prior", "truth")}
    cls = PRIORS.get(spec["prior"]) if isinstance(spec["prior"], str) else None
    if cls is None:
        raise ConfigError(f"unknown prior {spec['prior']!r}; choose one of {sorted(PRIORS)}")
    allowed = [p for p in inspect.signature(cls).parameters if p not in ("validate_args", "self")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"prior {spec['prior']} has no parameter(s) {unknown}; allowed: {allowed}"
        )
    for key, value in {**params, "truth": spec.get("truth", 0.0)}.items():
        if not _accepts(float, value) or not math.isfinite(value):
            raise ConfigError(
                f"prior {spec['prior']}: {key} must be a finite number, got {value!r}"
            )
    try:
        prior = cls(**{k: float(v) for k, v in params.items()}, validate_args=True)
        return Unknown(prior, truth=spec.get("truth"))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"prior {spec['prior']}{params}: {err}") from None


def _resolve_object(table, names, kind, source, skip):
    if not isinstance(table, dict) or not isinstance(table.get("name"), str):
        raise ConfigError(f"{source}: [{kind}] needs name = one of {sorted(names)}")
    try:
        cls = registry.resolve(names, table["name"], kind.split(".")[0])
    except ValueError as err:
        raise ConfigError(f"{source}: [{kind}] {err}") from None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in skip}
    current = [k for k, f in fields.items() if "deprecated" not in f.metadata]
    _only(table, ("name", *fields), f"[{kind}]", source, shown=("name", *current))
    table = _move_deprecated(table, fields, kind, source)
    hints = _hints(cls)
    out = {"name": table["name"]}
    for key, f in fields.items():
        if "deprecated" in f.metadata:
            continue
        if "table" in f.metadata:
            out[key] = _resolve_sub_table(table.get(key, {}), f, f"{kind}.{key}", source)
        elif key in table:
            value = table[key]
            _check_value(value, hints.get(key, Any), f"[{kind}] {key}", source)
            if _is_prior(value):
                _check_prior_spec(value, f"[{kind}] {key}", source)
            out[key] = value
        elif f.default is not dataclasses.MISSING:
            out[key] = _plain(f.default)
    return out


def _table_fields(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` written as sub-tables (``metadata["table"]``)."""
    if not dataclasses.is_dataclass(cls):
        return []
    return [f for f in dataclasses.fields(cls) if "table" in f.metadata]


def _move_deprecated(table, fields, kind, source):
    """``table`` with its deprecated keys moved to their new places (``metadata["deprecated"]
    = "map.adam_steps"``: key ``adam_steps`` of sub-table ``map``), logged as one warning per
    sub-table that names the old keys and the new spelling."""
    table = dict(table)
    moved: dict[str, list[tuple[str, str, Any]]] = {}
    for key, f in fields.items():
        new = f.metadata.get("deprecated")
        if new is None or key not in table:
            continue
        parent, sub = new.split(".", 1)
        moved.setdefault(parent, []).append((key, sub, table.pop(key)))
    for parent, items in moved.items():
        log.warning(
            "%s: [%s] %s %s deprecated; write %s in a [%s.%s] table: %s",
            source,
            kind,
            ", ".join(key for key, _, _ in items),
            "is" if len(items) == 1 else "are",
            "it" if len(items) == 1 else "them",
            kind,
            parent,
            ", ".join(f"{sub} = {value!r}" for _, sub, value in items),
        )
        nested = table.get(parent, {})
        if not isinstance(nested, dict):
            continue  # _resolve_sub_table reports it
        twice = [(key, sub) for key, sub, _ in items if sub in nested]
        if twice:
            key, sub = twice[0]
            raise ConfigError(
                f"{source}: [{kind}] sets {key} (deprecated) and [{kind}.{parent}] sets {sub}: "
                f"the same setting twice; keep only [{kind}.{parent}] {sub}"
            )
        table[parent] = {**nested, **{sub: value for _, sub, value in items}}
    return table


def _resolve_sub_table(value, f, where, source):
    """A sub-table (``[backend.nuts.map]``): its keys checked against the settings class in
    ``f.metadata["table"]``, the rest filled from the field's default, the values checked by
    building the settings."""
    cls = f.metadata["table"]
    allowed = [g.name for g in dataclasses.fields(cls)]
    if not isinstance(value, dict):
        raise ConfigError(
            f"{source}: [{where}] must be a table with keys from {allowed}, got {value!r}"
        )
    _only(value, allowed, f"[{where}]", source)
    hints = _hints(cls)
    for key, item in value.items():
        _check_value(item, hints.get(key, Any), f"[{where}] {key}", source)
    try:
        return dataclasses.asdict(cls(**{**dataclasses.asdict(f.default), **value}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: [{where}] {err}") from None


@functools.cache
def _hints(cls) -> dict[str, Any]:
    """The resolved field annotations of ``cls`` (``{}`` when they cannot be resolved)."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError, AttributeError):
        return {}


def _check_value(value: Any, hint: Any, where: str, source: str) -> None:
    """Refuse a case-file value that cannot be a field annotated ``hint``."""
    if _accepts(hint, value) is False:
        raise ConfigError(f"{source}: {where} must be {_describe(hint)}, got {value!r}")


def _accepts(hint: Any, value: Any) -> bool | None:
    """Whether a TOML value fits ``hint``; ``None`` for annotations a case file cannot meet
    or this check does not know (callables, arrays): the class's own checks decide."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        verdicts = [_accepts(a, value) for a in args if a is not type(None)]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is Unknown:
        return _is_prior(value)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, list):
            return False
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                return False
            pairs = list(zip(args, value, strict=True))
        else:
            pairs = [(args[0] if args else Any, item) for item in value]
        verdicts = [_accepts(h, item) for h, item in pairs]
        return False if False in verdicts else (None if None in verdicts else True)
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return False
        verdicts = [_accepts(args[1] if args else Any, item) for item in value.values()]
        return False if False in verdicts else (None if None in verdicts else True)
    return None


def _describe(hint: Any) -> str:
    """``hint`` in the words of a case file."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin in (tuple, list, collections.abc.Sequence):
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        return f"a list, each item {_describe(args[0]) if args else 'any value'}"
    if origin in (dict, collections.abc.Mapping):
        return "a table"
    words = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Unknown: 'a prior table such as { prior = "Normal", loc = 0.0, scale = 1.0 }',
    }
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def _plain(value):
    if isinstance(value, Unknown):
        return {"prior": type(value.prior).__name__, "truth": value.truth}
    return value


def _is_prior(value) -> bool:
    return isinstance(value, dict) and "prior" in value


def _check_prior_spec(value, where, source):
    if not isinstance(value["prior"], str) or value["prior"] not in PRIORS:
        raise ConfigError(
            f"{source}: {where}: unknown prior {value['prior']!r}; choose one of {sorted(PRIORS)}"
        )
    try:
        build_prior(value)
    except ConfigError as err:
        raise ConfigError(f"{source}: {where}: {err}") from None


def _only(table, allowed, where, source, shown=None):
    """Raise for keys of ``table`` outside ``allowed``, listing ``shown`` (default: all
    allowed; deprecated keys are accepted but not advertised)."""
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} in {where}; "
            f"allowed: {sorted(allowed if shown is None else shown)}"
        )


def _check_types(table, spec, where, source):
    _only(table, spec, where, source)
    for key, typ in spec.items():
        if key not in table:
            continue
        value = table[key]
        ok = isinstance(value, typ) and (typ is bool or not isinstance(value, bool))
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            table[key] = float(value)
            ok = True
        if not ok:
            raise ConfigError(f"{source}: {where} {key} must be {typ.__name__}, got {value!r}")
