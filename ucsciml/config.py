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

import copy
import dataclasses
import inspect
import logging
import os
import tomllib
from pathlib import Path
from typing import Any

import numpyro.distributions as dist

from ucsciml import registry
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
TOP_KEYS = ("case", "pde", "data", "model", "backend", "evaluation", "calibration")
EVAL_KEYS = {"grid": list}


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
    if cfg["data"]["source"] == "file":
        cfg["data"]["path"] = str(data_path(cfg["data"]["path"], path.parent))
    return cfg


def data_path(value: str, case_dir: str | os.PathLike) -> Path:
    """``[data] path`` as an absolute path: ``~`` expanded, a relative path taken from the
    case file's folder ``case_dir``."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(case_dir).resolve() / path


def resolve_config(raw: dict[str, Any], source: str = "<config>") -> dict[str, Any]:
    """Validate a raw config mapping and fill defaults."""
    cfg = copy.deepcopy(raw)
    _only(cfg, TOP_KEYS, "the top level", source)
    for table in ("case", "pde", "model"):
        if table not in cfg:
            raise ConfigError(f"{source}: missing table [{table}]")
    case = cfg["case"]
    _check_types(case, CASE_KEYS, "[case]", source)
    if "name" not in case:
        raise ConfigError(f"{source}: [case] needs a name")
    case.setdefault("seed", 0)
    case.setdefault("backend", "nuts")
    case.setdefault("description", "")
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
    cfg["evaluation"] = {"grid": [64, 32], **cfg.get("evaluation", {})}
    _check_types(cfg["evaluation"], EVAL_KEYS, "[evaluation]", source)
    return cfg


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
    tables = {"pde": registry.PDES, "model": registry.MODELS, "backend": registry.BACKENDS}
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
    cls = PRIORS.get(spec["prior"])
    if cls is None:
        raise ConfigError(f"unknown prior '{spec['prior']}'; choose one of {sorted(PRIORS)}")
    allowed = [p for p in inspect.signature(cls).parameters if p not in ("validate_args", "self")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"prior {spec['prior']} has no parameter(s) {unknown}; allowed: {allowed}"
        )
    try:
        prior = cls(**{k: float(v) for k, v in params.items()}, validate_args=True)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"prior {spec['prior']}{params}: {err}") from None
    return Unknown(prior, truth=spec.get("truth"))


def _resolve_object(table, names, kind, source, skip):
    if not isinstance(table, dict) or "name" not in table:
        raise ConfigError(f"{source}: [{kind}] needs name = one of {sorted(names)}")
    try:
        cls = registry.resolve(names, table["name"], kind.split(".")[0])
    except ValueError as err:
        raise ConfigError(f"{source}: [{kind}] {err}") from None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in skip}
    current = [k for k, f in fields.items() if "deprecated" not in f.metadata]
    _only(table, ("name", *fields), f"[{kind}]", source, shown=("name", *current))
    table = _move_deprecated(table, fields, kind, source)
    out = {"name": table["name"]}
    for key, f in fields.items():
        if "deprecated" in f.metadata:
            continue
        if "table" in f.metadata:
            out[key] = _resolve_sub_table(table.get(key, {}), f, f"{kind}.{key}", source)
        elif key in table:
            value = table[key]
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
    try:
        return dataclasses.asdict(cls(**{**dataclasses.asdict(f.default), **value}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: [{where}] {err}") from None


def _plain(value):
    if isinstance(value, Unknown):
        return {"prior": type(value.prior).__name__, "truth": value.truth}
    return value


def _is_prior(value) -> bool:
    return isinstance(value, dict) and "prior" in value


def _check_prior_spec(value, where, source):
    if value["prior"] not in PRIORS:
        raise ConfigError(
            f"{source}: {where}: unknown prior '{value['prior']}'; choose one of {sorted(PRIORS)}"
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
        ok = isinstance(value, typ) and not isinstance(value, bool)
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            table[key] = float(value)
            ok = True
        if not ok:
            raise ConfigError(f"{source}: {where} {key} must be {typ.__name__}, got {value!r}")
