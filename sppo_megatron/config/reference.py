"""Generated views of the schema: defaults.yaml and the configuration reference in the docs.

Both files are committed; `python -m sppo_megatron.config.reference` rewrites them and a test
checks they match the schema, so the schema stays the single source of truth.
"""

from __future__ import annotations

import os

from sppo_megatron.config.loader import defaults_yaml, iter_fields
from sppo_megatron.config.schema import GROUP_HELP

DEFAULTS_PATH = os.path.join(os.path.dirname(__file__), "defaults.yaml")
DOCS_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "configuration.md")


def defaults_file_text() -> str:
    return (
        "# Generated from sppo_megatron/config/schema.py by `python -m sppo_megatron.config.reference`.\n"
        + defaults_yaml()
    )


def _show(value) -> str:
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def reference_markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `sppo_megatron/config/schema.py` (`python -m sppo_megatron.config.reference`).",
        "Set options in a YAML file (`sppo-train --config run.yaml`) and/or as dotted overrides",
        "(`sppo-train parallel.tp=2 trainer.total_steps=100`); overrides win. Unknown keys, wrong types,",
        "out-of-range values and inconsistent combinations are reported one per line, exit code 2,",
        "before any process group or model is created.",
        "",
    ]
    current = None
    for key, f in iter_fields():
        group = key.split(".")[0]
        if group != current:
            if current is not None:
                lines.append("")
            current = group
            lines += [
                f"## `{group}`",
                "",
                GROUP_HELP[group],
                "",
                "| key | default | allowed | meaning |",
                "| --- | --- | --- | --- |",
            ]
        factory = f.default_factory
        default = factory() if callable(factory) else f.default
        meta = f.metadata
        allowed = []
        if "choices" in meta:
            allowed.append(" \\| ".join(_show(c) for c in meta["choices"]))
        if "min" in meta:
            allowed.append(f">= {meta['min']}")
        if "max" in meta:
            allowed.append(f"<= {meta['max']}")
        if meta.get("must_exist"):
            allowed.append("must exist")
        lines.append(f"| `{key}` | `{_show(default)}` | {', '.join(allowed)} | {meta.get('help', '')} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(DEFAULTS_PATH, "w", encoding="utf-8") as fh:
        fh.write(defaults_file_text())
    os.makedirs(os.path.dirname(DOCS_PATH), exist_ok=True)
    with open(DOCS_PATH, "w", encoding="utf-8") as fh:
        fh.write(reference_markdown())
    print(f"wrote {DEFAULTS_PATH} and {os.path.normpath(DOCS_PATH)}")
