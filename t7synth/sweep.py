"""``python -m t7synth.sweep``: an Optuna hyperparameter search over ``fit`` runs.

Examples::

    python -m t7synth.sweep sweeps/demo_unet.yaml                  # demo data, CPU
    python -m t7synth.sweep sweeps/unet.yaml --n-trials 50 --gpus 4 --data /data/paired
    python -m t7synth.sweep sweeps/demo_unet.yaml --workers 2      # two worker processes, one study
    # more workers on the same study: the same command, elsewhere, with one storage
    python -m t7synth.sweep sweeps/unet.yaml --storage postgresql://db/optuna --gpus 1

How trials run and are pruned: :mod:`t7synth.tuning.study`; where the study is stored:
:mod:`t7synth.tuning.storage`; what it leaves behind: :mod:`t7synth.tuning.report`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from t7synth.cli import ArgumentParser, console_entry, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m t7synth.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="sweep file (sweeps/*.yaml)")
    parser.add_argument(
        "--n-trials", type=int, help="finished trials the study should hold (default: the sweep file's)"
    )
    parser.add_argument(
        "--storage",
        help="Optuna storage: a database URL or a journal file path (default: <runs_dir>/<study>/optuna.journal)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="fixed override for every trial, repeatable"
    )
    parser.add_argument("--data", help="dataset folder (default: the embedded demo dataset)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per trial (0 = CPU)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes per trial")
    parser.add_argument("--precision", help="override the precision of every trial")
    parser.add_argument("--wandb", choices=["online", "offline", "disabled"], help="W&B mode of the trials")
    parser.add_argument("--seed", type=int, help="sampler seed (default: the experiment's seed)")
    from t7synth.tuning.options import DEFAULT_HEARTBEAT  # light: no Optuna

    parser.add_argument(
        "--heartbeat",
        type=int,
        default=DEFAULT_HEARTBEAT,
        metavar="SECONDS",
        help="database storages: a running trial's heartbeat interval; a trial silent for twice as long "
        "(its worker died) is marked failed by the other workers (default %(default)s, 0 = off)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine, each running trials of the one study (default 1); workers never "
        "run the same parameters, and the study keeps one summary",
    )
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)  # set by --workers
    parser.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)  # seconds between metrics.csv reads
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, then run trials until the study holds ``n_trials`` finished ones."""
    from t7synth.tuning.options import SweepOptions

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from t7synth.tuning.study import run_sweep  # after parsing: --help answers without Optuna or torch

    options = SweepOptions(
        n_trials=args.n_trials,
        storage=args.storage,
        sets=tuple(args.set),
        data=args.data,
        gpus=args.gpus,
        nodes=args.nodes,
        precision=args.precision,
        wandb=args.wandb,
        seed=args.seed,
        poll=args.poll,
        heartbeat=args.heartbeat,
        workers=args.workers,
        worker_index=args.worker_index,
        argv=tuple(argv),
    )
    run_sweep(args.sweep, options)
    return 0


#: The ``t7synth-sweep`` console script.
console = console_entry(main)

if __name__ == "__main__":
    sys.exit(run_main(main))
