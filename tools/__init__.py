"""Scripts run from a checkout (`python tools/NAME.py`). The package is `tools` so that tests and
other tools import one as `tools.NAME` (a tool inserts the repository root into sys.path for
that and for `sppo_megatron` when it is not installed); tools never import tests."""
