"""Prepare GSM8K (question, answer) as prompt parquet files in verl's schema.

    python tools/prepare_gsm8k.py --input FILE_OR_DIR [--input ...] --out DIR [--test-size N --seed S]
    python tools/prepare_gsm8k.py --hub [DATASET_ID] --out DIR

writes DIR/train.parquet and DIR/test.parquet; see sppo_megatron/data/prepare.py for the format.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sppo_megatron.data.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("gsm8k"))
