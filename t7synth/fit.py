"""``python -m t7synth.fit``: train a model, then score its best checkpoint on the test split.

Examples::

    python -m t7synth.fit --model unet                               # demo data, CPU
    python -m t7synth.fit --config experiments/demo_unet.yaml --max-epochs 3
    python -m t7synth.fit --model gan_unet --gpus 4 --data /data/paired
    python -m t7synth.fit --config experiments/demo_unet.yaml --resume last
    python -m t7synth.fit --model unet --config experiments/paper_unet.yaml --summary
    python -m t7synth.fit --config experiments/demo_unet.yaml --out /scratch/runs --print-config
    python -m t7synth.fit --config experiments/public_loso_unet.yaml --data /data/public --fold all
    python -m t7synth.fit --config experiments/public_finetune_unet.yaml --init unet_official.ckpt

This module parses arguments, calls :func:`t7synth.training.trainer.fit` and prints;
the training itself (run folders under DDP, checkpoints, loggers) lives in
:mod:`t7synth.training`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from t7synth.cli import ArgumentParser, console_entry, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m t7synth.fit", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", help="model name (unet, gan_unet, vnet, watnet)")
    add("--config", help="experiment YAML file (experiments/*.yaml)")
    add("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (dotted), repeatable")
    add("--data", help="dataset folder (default: the embedded demo dataset)")
    add("--gpus", type=int, default=0, help="GPUs per node: 0 = the CPU, 1 = one GPU, >1 = DDP")
    add("--nodes", type=int, default=1, help="number of nodes (multi-node DDP; SLURM/torchrun are detected)")
    add("--cpus", type=int, default=1, help="with --gpus 0: CPU processes (>1 = DDP over gloo, for testing)")
    add("--precision", help="auto (default: what the hardware runs fastest), 32-true, bf16-mixed, 16-mixed")
    add("--max-epochs", type=int, help="number of epochs")
    add("--seed", type=int, help="random seed (runs with the same seed give the same metrics on the CPU)")
    add("--deterministic", action="store_true", help="deterministic GPU kernels only (slower; warns where none)")
    add("--name", help="experiment name: <out>/<name>/<version> (default: config file name)")
    add("--out", metavar="DIR", help="where runs go: DIR/<name>/<version> (config key runs_dir; default: runs)")
    add("--resume", metavar="last|PATH", help="continue from the last checkpoint of the experiment, or from a file")
    add("--fold", metavar="I|all", help="cross-validation (data.folds): run fold I, or all folds not yet finished")
    add("--init", metavar="FILE", help="start from the weights of a checkpoint, package or official file")
    add("--wandb", choices=["online", "offline", "disabled"], help="W&B mode (default: online with credentials)")
    add("--tags", nargs="+", metavar="TAG", help="W&B run tags, beside the model name (config key wandb.tags)")
    add("--notes", help="W&B run notes: a sentence on what this run tries (config key wandb.notes)")
    add("--fast-dev-run", action="store_true", help="one training and one validation batch, then exit")
    add("--summary", action="store_true", help="print the parameter count, geometry and GPU memory plan, then exit")
    add("--print-config", action="store_true", help="print the resolved config (YAML), then exit")
    return parser


def resolve_config(args: argparse.Namespace):
    """The resolved :class:`~t7synth.config.Config` of the command line."""
    from t7synth.registry import resolve

    extra: dict = {}
    if args.data:
        extra.setdefault("data", {})["root"] = str(Path(args.data).expanduser().resolve())
    if args.max_epochs is not None:
        extra.setdefault("trainer", {})["max_epochs"] = args.max_epochs
    if args.seed is not None:
        extra["seed"] = args.seed
    if args.name:
        extra["name"] = args.name
    if args.out:
        extra["runs_dir"] = str(Path(args.out).expanduser())
    if args.precision:
        extra.setdefault("trainer", {})["precision"] = args.precision
    extra.setdefault("wandb", {}).update({k: v for k, v in (("tags", args.tags), ("notes", args.notes)) if v})
    return resolve(args.model, args.config, args.set, extra)


def main(argv: Sequence[str] | None = None, callbacks: Sequence = ()) -> int:
    """Parse ``argv`` and train; ``callbacks`` are extra Lightning callbacks (sweeps, tests)."""
    args = build_parser().parse_args(argv)
    config = resolve_config(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.summary:
        from t7synth.training.summary import model_summary

        print(model_summary(config, args.gpus * args.nodes if args.gpus else None))
        return 0
    from t7synth.training.trainer import FitOptions

    options = FitOptions(
        gpus=args.gpus,
        nodes=args.nodes,
        cpus=args.cpus,
        resume=args.resume,
        wandb=args.wandb,
        fast_dev_run=args.fast_dev_run,
        deterministic=args.deterministic,
    )
    init_weights = None
    if args.init:
        from t7synth.inference.initial import initial_weights

        init_weights = initial_weights(args.init, config)
    from t7synth.training.cross_validation import fit_runs

    for result in fit_runs(config, options, callbacks, args.fold, init_weights):
        if result.report:
            print(result.report)
    return 0


#: The ``t7synth-fit`` console script.
console = console_entry(main)

if __name__ == "__main__":
    sys.exit(run_main(main))
