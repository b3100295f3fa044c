"""Load a run config: schema defaults <- YAML file <- dotted overrides, then validate.

Every problem becomes one line of a ConfigError (the CLI prints them and exits 2). Validation
needs only the world size (read from the launcher's environment), so it runs before any process
group or model exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sppo_megatron.config.schema import Config
from sppo_megatron.errors import ConfigError

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
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=False)


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
        return "one of " + ", ".join("null" if c is None else str(c) for c in choices)
    return t


def _range_problems(cfg: DictConfig) -> List[str]:
    problems = []
    for key, f in iter_fields():
        value = OmegaConf.select(cfg, key)
        meta = f.metadata
        values = list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
        for v in values:
            if "choices" in meta and v not in meta["choices"]:
                problems.append(f"{key}: invalid value {v!r}; allowed: {_describe_type(f)[len('one of '):]}")
            if v is None or isinstance(v, (bool, str)):
                continue
            if "min" in meta and v < meta["min"]:
                problems.append(f"{key}: {v!r} is below the minimum {meta['min']}")
            if "max" in meta and v > meta["max"]:
                problems.append(f"{key}: {v!r} is above the maximum {meta['max']}")
    return problems


def _path_problems(cfg: DictConfig) -> List[str]:
    problems = []
    for key, f in iter_fields():
        if not f.metadata.get("must_exist"):
            continue
        value = OmegaConf.select(cfg, key)
        paths = list(value) if OmegaConf.is_list(value) else [value]
        for p in paths:
            if p is not None and not os.path.exists(str(p)):
                problems.append(f"{key}: path does not exist: {p}")
    return problems


def _cross_field_problems(cfg: DictConfig, world_size: int, check_paths: bool = True) -> List[str]:
    p, d, r, t, a = cfg.parallel, cfg.data, cfg.rollout, cfg.train, cfg.algorithm
    problems = []
    if cfg.model.path is None:
        problems.append("model.path: required (a Hugging Face model directory with config.json and tokenizer)")
    elif check_paths and os.path.isfile(cfg.model.path):
        problems.append(f"model.path: {cfg.model.path} is a file; expected a Hugging Face model directory")
    elif check_paths and os.path.isdir(cfg.model.path) and not os.path.exists(os.path.join(cfg.model.path, "config.json")):
        problems.append(f"model.path: {cfg.model.path} has no config.json (not a Hugging Face model directory)")
    if not d.train_files:
        problems.append("data.train_files: required (one or more parquet files)")
    if world_size % (p.tp * p.pp):
        problems.append(
            f"parallel.tp={p.tp} x parallel.pp={p.pp} = {p.tp * p.pp} does not divide the world size {world_size}"
        )
        return problems  # the DP-dependent rules below would only repeat the problem
    dp = world_size // (p.tp * p.pp)
    if p.sequence_parallel and p.tp == 1:
        problems.append("parallel.sequence_parallel: needs parallel.tp > 1")
    if world_size % r.tp and r.engine != "hf":
        problems.append(f"rollout.tp={r.tp} does not divide the world size {world_size}")
    if a.preference != "batch_softmean" and r.n < 2:
        problems.append(
            f"rollout.n={r.n}: SPPO win rates need >= 2 samples per prompt (or algorithm.preference=batch_softmean)"
        )
    for key in ("top_p", "val_top_p"):
        if r[key] == 0:
            problems.append(f"rollout.{key}=0: must be > 0 (1.0 = off)")
    if cfg.optim.min_lr > cfg.optim.lr:
        problems.append(f"optim.min_lr={cfg.optim.min_lr} must not exceed optim.lr={cfg.optim.lr}")
    if cfg.model.dtype == "fp16":
        problems.append("model.dtype=fp16: fp16 training (loss scaling) is not supported; use bf16 (or auto)")
    if r.temperature == 0:
        problems.append("rollout.temperature=0: greedy rollouts give K identical samples and nothing to prefer; "
                        "SPPO needs sampling (e.g. 1.0)")
    if a.preference == "batch_softmean" and a.loss != "soft":
        problems.append(f"algorithm.loss={a.loss}: batch_softmean targets work only with algorithm.loss=soft")
    if d.train_batch_size % t.mini_batch_size:
        problems.append(
            f"data.train_batch_size={d.train_batch_size} is not divisible by train.mini_batch_size={t.mini_batch_size}"
        )
    samples = t.mini_batch_size * r.n
    if samples % dp:
        problems.append(
            f"train.mini_batch_size={t.mini_batch_size} x rollout.n={r.n} = {samples} samples do not split across "
            f"{dp} data-parallel ranks"
        )
    elif t.max_tokens_per_micro_batch is None and (samples // dp) % t.micro_batch_size:
        problems.append(
            f"train.micro_batch_size={t.micro_batch_size} does not divide the {samples // dp} samples per "
            f"data-parallel rank of a mini-batch (train.mini_batch_size x rollout.n / dp)"
        )
    if cfg.model.fp8 is not None and cfg.model.transformer_impl == "local":
        problems.append("model.fp8: needs Transformer Engine (model.transformer_impl=auto or transformer_engine)")
    resume = cfg.trainer.resume
    if check_paths and resume not in ("auto", "none") and not os.path.exists(resume):
        problems.append(f"trainer.resume: checkpoint path does not exist: {resume} (or use auto | none)")
    return problems


def load_config(
    config_file: Optional[str] = None,
    overrides: Sequence[str] = (),
    world_size: Optional[int] = None,
    check_paths: bool = True,
    cross_field: bool = True,
) -> DictConfig:
    """Build, merge and validate the config; raise ConfigError listing every problem.

    world_size defaults to the launcher's (torchrun / srun / single process). check_paths=False
    skips the existence checks (to validate a recipe on a machine without its data);
    cross_field=False skips the rules that only concern training (for `sppo-eval`).
    """
    merged = OmegaConf.structured(Config)
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
        layers.append((raw, f" (in {config_file})"))
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
    problems = _range_problems(merged) + (_path_problems(merged) if check_paths else [])
    if not problems and cross_field:
        problems = _cross_field_problems(merged, world_size, check_paths)
    if problems:
        raise ConfigError("\n".join(problems))
    OmegaConf.set_readonly(merged, True)
    return merged


def save_config(cfg: DictConfig, path: str) -> None:
    """Write the fully resolved config (atomically) so a run can be reproduced from it."""
    from sppo_megatron.platform.files import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def defaults_yaml() -> str:
    """The schema defaults as YAML (the content of defaults.yaml)."""
    return OmegaConf.to_yaml(OmegaConf.structured(Config))
