"""`spd-pretrain`: train a target language model (spd/experiments/lm/target_models) on a corpus.

    spd-pretrain CONFIG.yaml [--override KEY=VALUE]...   a new run in <output root>/pretrain/<name>
    spd-pretrain CONFIG.yaml --out DIR                   ... in DIR instead
    spd-pretrain --resume DIR [--override steps=N]       continue a run from its newest checkpoint
    spd-pretrain CONFIG.yaml --dp 2                      2 data-parallel processes under torchrun

The trained model lands in <run dir>/model (config.json, model.safetensors, the tokenizer,
pretrain_info.json): a decomposition config names it with `pretrained_model_class:
spd.experiments.lm.target_models.LlamaLM` and `pretrained_model_name_hf: pretrain/<name>/model`.

Exit codes: 0 finished (or pretrained already); 2 bad input, one line on stderr, nothing
written; 75 stopped on SIGTERM/SIGUSR1 after checkpointing (continue with --resume); 130
interrupted.
"""

import argparse
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from spd.config.environment import check_environment
from spd.errors import OneLineArgumentParser, SPDUserError, run_cli
from spd.experiments.lm.pretrain.checks import PreparedRun, prepare_run, run_root
from spd.experiments.lm.pretrain.config import PretrainConfig, load_pretrain_config
from spd.experiments.lm.pretrain.run_files import PretrainRunFiles
from spd.experiments.lm.pretrain.train import pretrain
from spd.experiments.run_decomposition import parse_override
from spd.persistence.preemption import PREEMPTION_SIGNALS, StopOnSignal, exit_preempted
from spd.train import distributed

# What a resumed run may change: how long it goes on and how it reports, not what it trains.
RESUMABLE_KEYS = frozenset(
    {"steps", "log_freq", "eval_freq", "save_freq", "keep_last_checkpoints", "device"}
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="spd-pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, nargs="?", help="pretraining config (YAML)")
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="set a dotted key"
    )
    parser.add_argument(
        "--out", type=Path, help="run directory (default <output root>/pretrain/<name>)"
    )
    parser.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing run directory and its model"
    )
    parser.add_argument(
        "--dp", type=int, default=1, metavar="N", help="N data-parallel processes (torchrun)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _config_and_files(args: argparse.Namespace) -> tuple[PretrainConfig, PretrainRunFiles]:
    overrides = dict(parse_override(o) for o in args.override)
    if args.resume is None:
        if args.config is None:
            raise SPDUserError("give a pretraining config (or --resume DIR)")
        config = load_pretrain_config(args.config, overrides)
        return config, PretrainRunFiles(run_root(config, args.out))
    if args.config is not None or args.out is not None or args.force:
        raise SPDUserError(
            "--resume DIR takes the run's own config; drop CONFIG, --out and --force"
        )
    refused = sorted(set(overrides) - RESUMABLE_KEYS)
    if refused:
        raise SPDUserError(
            f"--override {refused[0]} cannot change a run being resumed (only "
            f"{', '.join(sorted(RESUMABLE_KEYS))}); start a new run for that"
        )
    files = PretrainRunFiles(args.resume)
    if not files.config_file.is_file():
        raise SPDUserError(
            f"--resume {args.resume}: not a pretraining run ({files.config_file} missing)"
        )
    return load_pretrain_config(files.config_file, overrides), files


class _Forward:
    """Pass the preemption signals on to the torchrun process and remember that one came."""

    def __init__(self, child: "subprocess.Popen[bytes]") -> None:
        self.child = child
        self.received = False

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.received = True
        self.child.send_signal(signum)


def _launch_torchrun(args: argparse.Namespace, files: PretrainRunFiles) -> None:
    """Run this command again under torchrun, one process per rank, and exit as it did."""
    argv = [a for a in sys.argv[1:] if a != "--force"]
    if "--dp" in argv:
        index = argv.index("--dp")
        del argv[index : index + 2]
    argv = [a for a in argv if not a.startswith("--dp=")]
    if args.force and args.resume is None:
        shutil.rmtree(files.root, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.dp}",
        "-m",
        "spd.experiments.lm.pretrain.cli",
        *argv,
    ]
    if args.resume is None:
        command += ["--out", str(files.root)] if args.out is None else []
    child = subprocess.Popen(command)
    forward = _Forward(child)
    previous = {sig: signal.signal(sig, forward) for sig in PREEMPTION_SIGNALS}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code != 0 and forward.received and files.checkpoint_paths():
        exit_preempted(f"stopped on a signal; continue with `spd-pretrain --resume {files.root}`")
    if code != 0:
        raise SystemExit(code)


def _prepared(
    args: argparse.Namespace, config: PretrainConfig, files: PretrainRunFiles
) -> PreparedRun:
    resume = args.resume is not None
    return prepare_run(config, files, args.dp, resume=resume, force=args.force)


def main() -> None:
    args = build_parser().parse_args()
    check_environment()
    if args.dp < 1:
        raise SPDUserError(f"--dp must be at least 1, got {args.dp}")
    config, files = _config_and_files(args)
    if args.resume is None and not args.force and files.model_dir.is_dir():
        # Not an error: `make pretrain-llama` run again finds its model and has nothing to do.
        print(f"{config.name} is pretrained already: {files.model_dir} (--force trains it again)")
        return
    under_torchrun = distributed.launched_by_torchrun()
    if under_torchrun and distributed.rank_info().world_size != args.dp:
        args.dp = distributed.rank_info().world_size  # the launcher's count is the truth
    prepared = _prepared(args, config, files)
    if args.dp > 1 and not under_torchrun:
        _launch_torchrun(args, files)
        return
    if args.force and args.resume is None and files.root.exists():
        shutil.rmtree(files.root)
    distributed.setup(prepared.device)
    try:
        with StopOnSignal() as stop:
            result = pretrain(
                prepared,
                files,
                resume=args.resume is not None,
                should_stop=stop,
                show_progress=not args.no_progress,
            )
    finally:
        distributed.teardown()
    if result.stopped:
        exit_preempted(
            f"stopped on a signal after step {result.step}, checkpointed; continue with "
            f"`spd-pretrain --resume {files.root}`"
        )
    if distributed.rank_info().is_main:
        print(
            f"pretrained {config.name}: eval CE {result.eval_ce:.4f} nats/token after "
            f"{result.step} steps; model in {result.model_dir}",
            flush=True,
        )


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
