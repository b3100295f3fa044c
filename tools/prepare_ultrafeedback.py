"""Prepare UltraFeedback prompts (instruction, or prompt in the binarized copies) as prompt parquet
files in verl's schema, without ground truths (reward_model.style: model), for training with a
preference oracle (reward.source=pairwise | reward_model | judge | remote).

    python tools/prepare_ultrafeedback.py --input FILE_OR_DIR [--input ...] --out DIR [--test-size N --seed S]
    python tools/prepare_ultrafeedback.py --hub [DATASET_ID] --out DIR --test-size N

writes DIR/train.parquet and DIR/test.parquet; see sppo_megatron/data/prepare.py for the format.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sppo_megatron.data.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("ultrafeedback"))
