"""What every console script shares: user errors become one clean message and exit code 2."""

from __future__ import annotations

import functools
import sys
import time
from typing import Callable

from sppo_megatron.errors import UserError
from sppo_megatron.platform.console import say
from sppo_megatron.platform.distributed import is_rank0


def exit_on_user_error(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Print a UserError's lines as `prog: error: ...` (rank 0 only, no traceback), exit with its code.

    Other ranks exit a moment later: torchrun tears the job down at the first exit, and the
    user should see rank 0's explanation rather than only torchrun's report.
    """

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except UserError as e:
                for line in str(e).splitlines():
                    say(prog, f"error: {line}", stderr=True)
                if not is_rank0():
                    time.sleep(2.0)
                sys.exit(e.exit_code)

        return wrapper

    return decorate
