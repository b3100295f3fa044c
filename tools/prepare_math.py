"""Prepare MATH (problem, solution, level, type) as prompt parquet files in verl's schema.

    python tools/prepare_math.py --input FILE_OR_DIR [--input ...] --out DIR [--test-size N --seed S]
    python tools/prepare_math.py --hub [DATASET_ID] --out DIR

writes DIR/train.parquet and DIR/test.parquet; see sppo_megatron/data/prepare.py for the format.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sppo_megatron.data.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("math"))
