# Sourced by the example scripts: sets PY to the Python that has sppo_megatron installed, or exits
# with one line saying how to get one (instead of a ModuleNotFoundError traceback later).
# Order: $PYTHON, the repository's .venv, then python3 on PATH.
_SPPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$_SPPO_ROOT/.venv/bin/python" ]]; then PY="$_SPPO_ROOT/.venv/bin/python"
else PY="$(command -v python3 || command -v python || echo python3)"; fi
if ! "$PY" -c "import sppo_megatron, torch" 2>/dev/null; then
  echo "error: $PY cannot import sppo_megatron and torch; install them (see README.md: pip install -e '.[gpu,sglang]'" \
       "on GPUs, requirements-cpu.txt on CPU), activate that environment, or set PYTHON=/path/to/python" >&2
  exit 2
fi
