"""Load a run config: schema defaults <- YAML file <- dotted overrides, then validate.

Every problem becomes one line of a ConfigError (the CLI prints them and exits 2). Validation
needs only the world size (read from the launcher's environment), so it runs before any process
group or model exists. The result is the frozen dataclass `Config`, not an OmegaConf node.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sppo_megatron.config import rules
from sppo_megatron.config.schema import Config
from sppo_megatron.errors import ConfigError
from sppo_megatron.platform.files import atomic_write_text

# platform.distributed (torch) is imported where the world size is read: loading a config stays
# torch-free (it runs first, and tools read configs).


def iter_fields(cls: type = Config, prefix: str = "") -> Iterator[Tuple[str, dataclasses.Field]]:
    """Yield (dotted key, field) for every leaf option of the schema."""
    for f in dataclasses.fields(cls):
        group = f.default_factory
        if isinstance(group, type) and dataclasses.is_dataclass(group):
            yield from iter_fields(group, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def all_keys() -> List[str]:
    return [key for key, _ in iter_fields()]


def _flatten(node: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _flatten(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


def _unknown_key_problems(raw: Dict[str, Any], source: str) -> List[str]:
    valid = set(all_keys())
    groups = {k.split(".")[0] for k in valid}
    problems = []
    for key, _ in _flatten(raw):
        if key in valid:
            continue
        if key in groups:
            problems.append(f"{key}: is a config group, set its keys (e.g. {key}.<option>=...)")
            continue
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else f"; valid groups: {', '.join(sorted(groups))}"
        problems.append(f"{key}: unknown config key{source}{hint}")
    return problems


def _parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError("\n".join(f"{o!r}: overrides must look like dotted.key=value" for o in bad))
    return cast(Dict[str, Any], OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=False))


def _type_problem(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or "?"
    field = dict(iter_fields()).get(key)
    allowed = _describe_type(field) if field else "a value of the schema's type"
    value = getattr(err, "value", None)
    return f"{key}: invalid value {value!r}; expected {allowed}"


def _describe_type(field: dataclasses.Field) -> str:
    t = str(field.type).replace("typing.", "")
    choices = field.metadata.get("choices")
    if choices:
        return "one of " + ", ".join(_show_choice(c) for c in choices)
    return t


def _show_choice(choice: Any) -> str:
    """As the YAML would spell it: null, true, false, or the value."""
    return "null" if choice is None else str(choice).lower() if isinstance(choice, bool) else str(choice)


def _value(cfg: Config, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), cfg)


def _range_problems(cfg: Config) -> List[str]:
    problems = []
    for key, f in iter_fields():
        value = _value(cfg, key)
        meta = f.metadata
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if "choices" in meta and v not in meta["choices"]:
                problems.append(f"{key}: invalid value {v!r}; allowed: {_describe_type(f)[len('one of ') :]}")
            if v is None or isinstance(v, (bool, str)):
                continue
            if "min" in meta and v < meta["min"]:
                problems.append(f"{key}: {v!r} is below the minimum {meta['min']}")
            if "max" in meta and v > meta["max"]:
                problems.append(f"{key}: {v!r} is above the maximum {meta['max']}")
    return problems


def _path_problems(cfg: Config) -> List[str]:
    problems = []
    for key, f in iter_fields():
        if not f.metadata.get("must_exist"):
            continue
        value = _value(cfg, key)
        for p in value if isinstance(value, (list, tuple)) else [value]:
            if p is not None and not os.path.exists(str(p)):
                problems.append(f"{key}: path does not exist: {p}")
    return problems


def load_config(
    config_file: Optional[str] = None,
    overrides: Sequence[str] = (),
    world_size: Optional[int] = None,
    check_paths: bool = True,
    cross_field: bool = True,
) -> Config:
    """Build, merge and validate the config; raise ConfigError listing every problem.

    world_size defaults to the launcher's (torchrun / srun / single process). check_paths=False
    skips the existence checks (to validate a recipe on a machine without its data);
    cross_field=False skips the rules that only concern training (for `sppo-eval`).
    """
    merged = OmegaConf.structured(Config)
    OmegaConf.set_readonly(merged, False)  # the frozen schema makes it read-only; the layers merge in
    layers: List[Tuple[Dict[str, Any], str]] = []
    if config_file is not None:
        if not os.path.isfile(config_file):
            raise ConfigError(f"--config: file not found: {config_file}")
        try:
            raw = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False)
        except Exception as e:  # noqa: BLE001 - any YAML error is a user error
            raise ConfigError(f"--config: cannot parse {config_file}: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"--config: {config_file} must hold a mapping of config groups")
        layers.append((cast(Dict[str, Any], raw), f" (in {config_file})"))
    layers.append((_parse_overrides(overrides), ""))
    problems = [p for raw, source in layers for p in _unknown_key_problems(raw, source)]
    if problems:
        raise ConfigError("\n".join(problems))
    for raw, _ in layers:
        try:
            merged = OmegaConf.merge(merged, raw)
        except OmegaConfBaseException as e:
            problems.append(_type_problem(e))
    if problems:
        raise ConfigError("\n".join(problems))
    if world_size is None:
        from sppo_megatron.platform.distributed import detect_launch

        world_size = detect_launch().world_size
    cfg = _to_config(merged)
    problems = _range_problems(cfg) + (_path_problems(cfg) if check_paths else [])
    if not problems and cross_field:
        problems = rules.problems(cfg, world_size, check_paths)
    if problems:
        raise ConfigError("\n".join(problems), candidate=cfg)
    return cfg


def _to_config(merged: DictConfig) -> Config:
    """The merged layers as the frozen `Config` (interpolations resolved)."""
    try:
        return cast(Config, OmegaConf.to_object(merged))
    except OmegaConfBaseException as e:  # e.g. an interpolation naming a missing key
        raise ConfigError(_type_problem(e)) from None


def config_yaml(cfg: Config) -> str:
    """The YAML of a config, as config.yaml holds it (a reproducible run's contract)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: str) -> None:
    """Write the fully resolved config (atomically) so a run can be reproduced from it."""
    atomic_write_text(path, config_yaml(cfg))


def defaults_yaml() -> str:
    """The schema defaults as YAML (the content of defaults.yaml)."""
    return OmegaConf.to_yaml(OmegaConf.structured(Config))
