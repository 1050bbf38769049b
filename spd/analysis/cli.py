"""`spd-analyze RUN_DIR` and `spd-browse RUN_DIR`.

    spd-analyze spd_out/<run dir> --tokens 200000          # writes <run dir>/analysis/
    spd-browse spd_out/<run dir>                           # writes <run dir>/analysis/browser.html

`spd-analyze` continues a stopped pass when run again with the same options (Ctrl-C, SIGTERM and
SIGUSR1 save its state first), and a larger `--tokens` extends a finished one.
"""

import argparse
from pathlib import Path

from spd.analysis.analyze import PassOptions, analyze_run
from spd.analysis.browser import write_browser
from spd.config.option_types import non_negative_int, positive_int, unit_interval
from spd.errors import OneLineArgumentParser, run_cli

DEFAULTS = PassOptions()


def analyze_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="spd-analyze",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("run_dir", type=Path, help="a decomposition's run directory")
    add(
        "--tokens",
        type=positive_int,
        default=DEFAULTS.n_tokens,
        help="tokens to stream (toys: rows)",
    )
    add("--split", choices=["eval", "train"], default=DEFAULTS.split, help="which data split")
    add(
        "--batch-size",
        type=positive_int,
        default=None,
        help="sequences per batch (default: the run's eval_batch_size)",
    )
    add(
        "--threshold",
        type=unit_interval,
        default=None,
        help="a subcomponent fires where its CI exceeds this (default: the run's ci_alive_threshold)",
    )
    add("--top-k", type=positive_int, default=DEFAULTS.top_k, help="top contexts per subcomponent")
    add(
        "--n-random",
        type=non_negative_int,
        default=DEFAULTS.n_random,
        help="random firing contexts kept per subcomponent",
    )
    add(
        "--context-before",
        type=non_negative_int,
        default=DEFAULTS.context_before,
        help="tokens shown before the firing one",
    )
    add(
        "--context-after",
        type=non_negative_int,
        default=DEFAULTS.context_after,
        help="tokens shown after the firing one",
    )
    add(
        "--save-every",
        type=positive_int,
        default=DEFAULTS.save_every,
        help="save the pass's state every this many batches",
    )
    add("--device", default=DEFAULTS.device, help="auto, cpu or cuda")
    add("--fresh", action="store_true", help="discard a saved state and start over")
    add("--no-progress", action="store_true", help="hide the progress bar")
    add("--browse", action="store_true", help="write the browser page afterwards too")
    return parser


def analyze_main(argv: list[str] | None = None) -> None:
    args = analyze_parser().parse_args(argv)
    options = PassOptions(
        n_tokens=args.tokens,
        split=args.split,
        batch_size=args.batch_size,
        threshold=args.threshold,
        top_k=args.top_k,
        n_random=args.n_random,
        context_before=args.context_before,
        context_after=args.context_after,
        save_every=args.save_every,
        device=args.device,
        fresh=args.fresh,
        show_progress=not args.no_progress,
    )
    path = analyze_run(args.run_dir, options)
    print(f"spd-analyze: wrote {path}", flush=True)
    if args.browse:
        print(f"spd-analyze: browser {write_browser(args.run_dir)}", flush=True)


def browse_main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(prog="spd-browse", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a run directory analysed by spd-analyze")
    args = parser.parse_args(argv)
    print(write_browser(args.run_dir))


def analyze_cli() -> None:
    run_cli(analyze_main)


def browse_cli() -> None:
    run_cli(browse_main)


if __name__ == "__main__":
    analyze_cli()
