"""Sizes are bounded, environment variables and options validated, `off` means off, and readers
go past one damaged line: each case ends in one clear line (or, for a reader, a warning).

Entry points run in this process through the command-line boundary (`cli_exit_code`); where a bad
input would otherwise start work, that work is a tripwire that fails loudly.
"""

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import spd.experiments.run_decomposition as run_decomposition
import spd.experiments.tms.train_tms as train_tms
import spd.scripts.run as run_script
from spd.analysis import cli as analysis_cli
from spd.config.loading import load_config
from spd.errors import SPDUserError, cli_exit_code
from spd.experiments.run_decomposition import parse_override
from spd.experiments.tms import tms_decomposition
from spd.launch import launcher
from spd.launch.sweeps import MAX_SWEEP_RUNS, expand_grid
from spd.persistence.run_dir import read_metrics
from spd.scripts import report as report_script
from tests.resumable_runs import TMS_CONFIG


class Started(Exception):
    """A bad input got as far as starting work."""


def _tripwire(*_: object, **__: object) -> None:
    raise Started("a bad input started work")


@pytest.fixture
def tripwires(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(run_decomposition, "optimize", _tripwire)
    monkeypatch.setattr(launcher, "source_tree", _tripwire)
    monkeypatch.setattr(train_tms, "train", _tripwire)
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)


def one_error_line(main: Callable[[], None], monkeypatch: pytest.MonkeyPatch, argv: str) -> str:
    """Run `main` (with `sys.argv` split from `argv`) at the CLI boundary; it must exit 2 with
    one `spd: error:` line, which is returned."""
    monkeypatch.setattr(sys, "argv", argv.split())
    code, stderr = cli_exit_code(main)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("spd: error: "), stderr[-2000:]
    return lines[0]


# --- sizes


def test_nested_aliases_are_refused_before_they_expand(tmp_path: Path) -> None:
    levels = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\nC: *a6\n")  # 10**7 values from 600 bytes
    assert bomb.stat().st_size < 1000
    with pytest.raises(SPDUserError, match="aliases expand to more than") as raised:
        load_config(bomb)
    assert len(str(raised.value)) < 300


def test_a_huge_sweep_is_refused_before_it_is_planned() -> None:
    grid = {"seed": list(range(100)), "lr": [0.1] * 100}
    assert MAX_SWEEP_RUNS < 100 * 100
    with pytest.raises(SPDUserError, match="expands to 10000 runs"):
        expand_grid(grid)


def test_a_run_name_too_long_for_a_directory_is_refused() -> None:
    with pytest.raises(SPDUserError, match="run_name is 300 bytes long"):
        load_config(TMS_CONFIG, {"run_name": "r" * 300})
    with pytest.raises(SPDUserError, match="run_name is 300 bytes"):
        load_config(TMS_CONFIG, {"run_name": "é" * 150})  # 150 characters, 300 bytes


@pytest.mark.usefixtures("tripwires")
def test_target_training_beyond_memory_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        sys,
        "argv",
        ["train_tms", "--experiment", "tms_5-2", "--override", "model.n_features=10000000000"],
    )
    code, stderr = cli_exit_code(train_tms.main)
    assert code == 2, stderr
    assert "training target tms_5-2 does not fit in memory" in stderr


# --- environment and options

BAD_ENVIRONMENTS = [
    ({"SPD_MAX_GPUS_PER_NODE": "eight"}, "SPD_MAX_GPUS_PER_NODE"),
    ({"SPD_MAX_GPUS_PER_NODE": "0"}, "SPD_MAX_GPUS_PER_NODE"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE"),
    ({"WANDB_MODE": "ofline"}, "WANDB_MODE"),
]


@pytest.mark.usefixtures("tripwires")
@pytest.mark.parametrize(("env", "name"), BAD_ENVIRONMENTS, ids=[n for _, n in BAD_ENVIRONMENTS])
@pytest.mark.parametrize("entry", ["spd-run", "tms script"])
def test_a_bad_environment_variable_is_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str, entry: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if entry == "spd-run":
        line = one_error_line(
            lambda: run_script.main(["--experiments", "tms_5-2", "--local"]), monkeypatch, "spd-run"
        )
    else:
        line = one_error_line(tms_decomposition.main, monkeypatch, f"tms {TMS_CONFIG}")
    assert name in line


BAD_OPTIONS = [
    ["--batch-size", "-4"],
    ["--top-k", "-1"],
    ["--n-random", "-1"],
    ["--context-before", "-2"],
    ["--save-every", "0"],
    ["--threshold", "1.5"],
]


@pytest.mark.parametrize("option", BAD_OPTIONS, ids=[o[0] for o in BAD_OPTIONS])
def test_a_bad_spd_analyze_option_is_named(
    option: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = one_error_line(
        lambda: analysis_cli.analyze_main([str(tmp_path), *option]), monkeypatch, "spd-analyze"
    )
    assert f"argument {option[0]}" in line


# --- a well-meant value


def test_compile_off_is_accepted_from_yaml_and_override(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(TMS_CONFIG.read_text() + "\ncompile: off\n")
    assert load_config(config).compile == "off"
    key, value = parse_override("compile=off")
    assert load_config(TMS_CONFIG, {key: value}).compile == "off"
    # Booleans still read as booleans, in either spelling YAML 1.2 knows.
    assert (
        load_config(TMS_CONFIG, {"slow_eval_on_first_step": False}).slow_eval_on_first_step is False
    )
    assert parse_override("slow_eval_on_first_step=False")[1] is False


# --- readers


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "final_config.yaml").write_text(TMS_CONFIG.read_text())
    rows = ['{"step": 0, "train/loss": 2.0}', "{not json", '{"step": 5, "train/loss": 1.0}']
    (run_dir / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    return run_dir


def test_a_cut_short_last_metrics_line_is_skipped_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A write cut short (a kill, a full disk) leaves a last line without its newline: resume
    # truncates it, so it is not damage to warn about; the same text mid-file is.
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 0, "train/loss": 2.0}\n{"step": 5, "train/lo')
    assert [row["step"] for row in read_metrics(metrics)] == [0]
    assert capsys.readouterr().err == ""
    metrics.write_text('{"step": 0, "train/loss": 2.0}\n{"step": 5, "train/lo\n')
    assert [row["step"] for row in read_metrics(metrics)] == [0]
    assert "skipped 1 damaged line(s) (first: line 2)" in capsys.readouterr().err


def test_a_damaged_metrics_line_is_skipped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _run_dir(tmp_path)
    assert [row["step"] for row in read_metrics(run_dir)] == [0, 5]
    assert "skipped 1 damaged line(s) (first: line 2)" in capsys.readouterr().err
    summary = tmp_path / "summary.html"
    code, stderr = cli_exit_code(lambda: report_script.main([str(run_dir), "--out", str(summary)]))
    assert code == 0, stderr
    assert "train/loss" in summary.read_text()


def test_spd_report_never_writes_into_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _run_dir(tmp_path)
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    for out in (run_dir / "metrics.jsonl", run_dir / "figures" / "page.html"):
        line = one_error_line(
            lambda out=out: report_script.main([str(run_dir), "--out", str(out)]),
            monkeypatch,
            "spd-report",
        )
        assert "inside the run directory" in line
    other = tmp_path / "notes.txt"
    other.write_text("my notes")
    line = one_error_line(
        lambda: report_script.main([str(run_dir), "--out", str(other)]), monkeypatch, "spd-report"
    )
    assert "was not written by this command" in line
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
    assert other.read_text() == "my notes"
