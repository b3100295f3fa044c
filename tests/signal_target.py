"""A process that holds the trainer's PreemptionFlag while its main thread is blocked (in a read
that never returns, as a rank waits in a collective), for test_signals. Prints `ready`, then
`requested` once the flag is set."""

import os
import threading
import time

from sppo_megatron.trainer.preemption import PreemptionFlag


def main() -> None:
    flag = PreemptionFlag()

    def report() -> None:
        while not flag.requested():
            time.sleep(0.05)
        print("requested", flush=True)

    threading.Thread(target=report, daemon=True).start()
    print("ready", flush=True)
    read_end, _ = os.pipe()
    os.read(read_end, 1)


if __name__ == "__main__":
    main()
