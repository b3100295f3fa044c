"""`python -m sppo_megatron.train`, the same as `sppo-train` (cli/train.py): the module path the
README, the Slurm examples and torchrun launches (`torchrun ... -m sppo_megatron.train`) use."""

import sys

from sppo_megatron.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
