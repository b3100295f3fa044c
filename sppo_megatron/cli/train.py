"""`sppo-train [--config FILE.yaml] [dotted.key=value ...]`: validate the config, start the platform, train."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from sppo_megatron.cli.common import exit_on_user_error
from sppo_megatron.config.loader import load_config
from sppo_megatron.config.schema import GROUP_HELP
from sppo_megatron.errors import ConfigError
from sppo_megatron.platform.console import say
from sppo_megatron.platform.cpu_compat import silence_cpu_noise
from sppo_megatron.platform.distributed import default_cpu_threads, destroy_distributed, init_distributed
from sppo_megatron.platform.liveness import report_peer_death, start_peer_monitor, stop_peer_monitor
from sppo_megatron.trainer import PROG

EPILOG = "config groups (set any option as group.key=value; see docs/configuration.md):\n" + "\n".join(
    f"  {name:<10} {text}" for name, text in GROUP_HELP.items()
)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="SPPO post-training on megatron-core. Runs as one process or under torchrun / srun.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML with config groups; overrides win over it")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. parallel.tp=2")
    return parser.parse_args(argv)


@exit_on_user_error(PROG)
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    silence_cpu_noise()
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:  # with what preflight finds in the other groups: every mistake at once
        from sppo_megatron.trainer.preflight import with_preflight

        raise with_preflight(e) from None
    # the trainer's modules load only now (here and below): `--help` answers at once
    from sppo_megatron.trainer.preflight import preflight

    for notice in (preflight(cfg), default_cpu_threads()):
        if notice:
            say(PROG, notice)
    init_distributed(
        tp=cfg.parallel.tp,
        pp=cfg.parallel.pp,
        seed=cfg.trainer.seed,
        timeout_minutes=cfg.parallel.distributed_timeout_minutes,
        rollout_ranks=cfg.rollout.num_ranks,
        ep=cfg.parallel.ep,
        etp=cfg.parallel.etp,
    )
    start_peer_monitor(cfg.parallel.peer_timeout_s, PROG)
    from sppo_megatron.trainer.loop import train

    try:
        train(cfg)
    except BaseException as e:
        report_peer_death(e)  # a collective broken by a dead peer: one line saying so, not gloo's traceback
        stop_peer_monitor(e)  # the other ranks stop soon instead of waiting for this one
        raise
    else:
        stop_peer_monitor()
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
