"""Thin wrapper: `python tools/convert_megatron_to_hf.py ARGS` == `sppo-convert megatron-to-hf ARGS`."""

import sys

from sppo_megatron.cli.convert import main

if __name__ == "__main__":
    sys.exit(main(["megatron-to-hf"] + sys.argv[1:]))
