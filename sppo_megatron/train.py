"""`python -m sppo_megatron.train` is the same as `sppo-train`."""

import sys

from sppo_megatron.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
