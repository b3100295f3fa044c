"""Thin wrapper: `python tools/convert_hf_to_megatron.py ARGS` == `sppo-convert hf-to-megatron ARGS`."""

import sys

from sppo_megatron.cli.convert import main

if __name__ == "__main__":
    sys.exit(main(["hf-to-megatron"] + sys.argv[1:]))
