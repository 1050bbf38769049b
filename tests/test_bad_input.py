"""Malformed input: every case ends with exactly one line on stderr, exit code 2, no traceback,
and no change to the files of an earlier run.

Each case runs the real command line in a subprocess. Add a case by adding one line to CASES:
a name, the command line (`TMS` or `SPD_RUN` first) and a fragment the error line must contain.
Command-line items may be placeholders that the test turns into files first: `Cfg(...)` (the
tiny base config with changes), `Text(...)` (a file with that content), `RunCopy(damage)` (a copy
of the earlier run, damaged), `TargetCopy(damage)` (a copy of the shipped TMS target, damaged),
and `RUN`, `EMPTY_DIR`, `JUNK_DIR` (the earlier run itself, an empty and a non-run directory).
"""

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import yaml

from spd.persistence.checkpoints import latest_checkpoint
from spd.persistence.run_lock import LOCK_FILE
from tests.resumable_runs import (
    REPO,
    TINY,
    TMS_CONFIG,
    TMS_SCRIPT,
    override_args,
    run_tms,
    script_env,
)

SHIPPED_TARGET = REPO / "spd" / "experiments" / "tms" / "targets" / "tms_5-2"
OTHER_CONFIG = REPO / "spd" / "experiments" / "tms" / "tms_5_2_id_config.yaml"
TMS = "<tms_decomposition.py>"
SPD_RUN = "<spd-run>"
RUN, EMPTY_DIR, JUNK_DIR = "<earlier run>", "<empty dir>", "<junk dir>"
DELETE = object()  # as a Cfg value: remove the key


@dataclass(frozen=True)
class Cfg:
    """A config file: the tiny TMS base config with `changes` applied."""

    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Text:
    """A file holding `content`."""

    content: str


@dataclass(frozen=True)
class RunCopy:
    """A copy of the earlier run with `damage` applied to it."""

    damage: Callable[[Path], None]


@dataclass(frozen=True)
class TargetCopy:
    """A copy of the shipped TMS 5-2 target directory with `damage` applied to it."""

    damage: Callable[[Path], None]


def _latest(run: Path) -> Path:
    return latest_checkpoint(run)


def truncate_checkpoint(run: Path) -> None:
    # Every checkpoint: with an older good one left, a resume rightly goes on from that.
    for path in (run / "checkpoints").glob("model_*.pth"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_checkpoint(run: Path, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    path = _latest(run)
    torch.save(edit(torch.load(path, weights_only=True)), path)


def foreign_checkpoint(run: Path) -> None:
    _edit_checkpoint(run, lambda d: {**d, "config": {**d["config"], "C": 10}})


def model_only_checkpoint(run: Path) -> None:
    for path in (run / "checkpoints").glob("model_*.pth"):
        data = torch.load(path, weights_only=True)
        torch.save({k: data[k] for k in ("step", "config", "decomposition")}, path)


def wrong_shapes_checkpoint(run: Path) -> None:
    def shrink(d: dict[str, Any]) -> dict[str, Any]:
        components = {k: v[..., :5] for k, v in d["decomposition"]["components"].items()}
        return {**d, "decomposition": {**d["decomposition"], "components": components}}

    _edit_checkpoint(run, shrink)


def no_checkpoints(run: Path) -> None:
    shutil.rmtree(run / "checkpoints")


def garbage_run_config(run: Path) -> None:
    (run / "final_config.yaml").write_text("C: [20,\n")


def truncate_target(target: Path) -> None:
    path = target / "model.pth"
    path.write_bytes(path.read_bytes()[:100])


def no_train_config(target: Path) -> None:
    (target / "train_config.yaml").unlink()


class Case(NamedTuple):
    name: str
    argv: list[Any]
    expect: str
    # Each case costs a process start (seconds, mostly importing torch); the default suite runs
    # a spread of 26, `-m slow` the rest.
    slow: bool = False


# One line per case (hence no formatting here): name, command line, expected error fragment.
# fmt: off
CASES = [
    # --- config files: YAML, unknown keys, types, ranges, consistency ---
    Case("config-missing", [TMS, "/nonexistent/config.yaml"], "config file not found"),
    Case("yaml-syntax", [TMS, Text("C: [1, 2\n")], "invalid YAML"),
    Case("yaml-not-a-mapping", [TMS, Text("- C\n- 20\n")], "must contain a YAML mapping", slow=True),
    Case("unknown-key", [TMS, Cfg({"stepz": 10})], "unknown config key 'stepz'"),
    Case("unknown-nested-key", [TMS, Cfg({"task_config": {"task_name": "tms", "feature_prob": 0.1}})], "'task_config.feature_prob'"),
    Case("wrong-type", [TMS, Cfg({"C": "twenty"})], "invalid value for 'C'"),
    Case("C-zero", [TMS, Cfg({"C": 0})], "invalid value for 'C'", slow=True),
    Case("negative-lr", [TMS, Cfg({"lr": -0.1})], "invalid value for 'lr'", slow=True),
    Case("probability-above-one", [TMS, Cfg({"task_config": {"task_name": "tms", "feature_probability": 1.5}})], "feature_probability"),
    Case("unknown-ci-fn-type", [TMS, Cfg({"ci_fn_type": "transformer"})], "ci_fn_type", slow=True),
    Case("unknown-task", [TMS, Cfg({"task_config": {"task_name": "vision"}})], "task_config", slow=True),
    Case("missing-C", [TMS, Cfg({"C": DELETE})], "missing required config key 'C'"),
    Case("batch-not-divisible", [TMS, Cfg({"batch_size": 30, "gradient_accumulation_steps": 4})], "divisible"),
    Case("exponential-without-halflife", [TMS, Cfg({"lr_schedule": "exponential"})], "lr_exponential_halflife", slow=True),
    Case("every-coeff-null", [TMS, Cfg(dict.fromkeys(["faithfulness_coeff", "stochastic_recon_coeff", "stochastic_recon_layerwise_coeff", "importance_minimality_coeff"]))], "nothing would be optimised", slow=True),
    Case("unknown-metric", [TMS, Cfg({"metrics": [{"name": "no_such_metric"}]})], "no_such_metric", slow=True),
    Case("keep-no-checkpoints", [TMS, Cfg({"keep_last_checkpoints": 0})], "keep_last_checkpoints", slow=True),
    # --- command-line options ---
    Case("override-without-equals", [TMS, Cfg(), "--override", "steps"], "must look like key.path=value"),
    Case("override-unknown-key", [TMS, Cfg(), "--override", "nosuch=1"], "unknown config key 'nosuch'", slow=True),
    Case("override-into-scalar", [TMS, Cfg(), "--override", "C.x=1"], "not a nested config block", slow=True),
    Case("override-bad-yaml", [TMS, Cfg(), "--override", "C=[1"], "not valid YAML", slow=True),
    Case("unknown-option", [TMS, Cfg(), "--frobnicate"], "unrecognized arguments: --frobnicate"),
    Case("no-config", [TMS], "give a config file, or --resume RUN_DIR", slow=True),
    Case("resume-and-run-dir", [TMS, "--resume", RUN, "--run-dir", EMPTY_DIR], "not both", slow=True),
    Case("run-dir-not-a-run", [TMS, Cfg(), "--run-dir", JUNK_DIR], "neither an empty directory nor an spd run"),
    Case("run-dir-is-a-file", [TMS, Cfg(), "--run-dir", Text("x")], "neither an empty directory nor an spd run", slow=True),
    Case("spd-run-unknown-experiment", [SPD_RUN, "--experiments", "tms_9-9", "--local"], "unknown experiment 'tms_9-9'"),
    Case("spd-run-empty-experiments", [SPD_RUN, "--experiments", ",", "--local"], "--experiments is empty"),
    Case("spd-run-unknown-option", [SPD_RUN, "--bogus"], "unrecognized arguments: --bogus"),
    Case("spd-run-resume-and-experiments", [SPD_RUN, "--resume", RUN, "--experiments", "tms_5-2", "--local"], "drop --experiments"),
    Case("spd-run-resume-not-a-run", [SPD_RUN, "--resume", JUNK_DIR, "--local"], "not an spd run directory"),
    # --- model paths ---
    Case("target-path-missing", [TMS, Cfg({"pretrained_model_path": "/nonexistent/target"})], "target checkpoint not found"),
    Case("target-module-missing", [TMS, Cfg({"pretrained_model_class": "spd.no_such_module.Model"})], "cannot import module"),
    Case("target-class-missing", [TMS, Cfg({"pretrained_model_class": "spd.experiments.tms.models.NoSuchModel"})], "has no class 'NoSuchModel'", slow=True),
    Case("target-class-cannot-load", [TMS, Cfg({"pretrained_model_class": "torch.nn.Linear"})], "has no classmethod from_pretrained", slow=True),
    Case("target-file-truncated", [TMS, Cfg({"pretrained_model_path": TargetCopy(truncate_target)})], "cannot load target"),
    Case("target-config-missing", [TMS, Cfg({"pretrained_model_path": TargetCopy(no_train_config)})], "cannot load target", slow=True),
    Case("pattern-matches-nothing", [TMS, Cfg({"target_module_patterns": ["nosuch*"], "tied_weights": None})], "'nosuch*' matches no module", slow=True),
    Case("tied-to-undecomposed", [TMS, Cfg({"tied_weights": [["linear1", "linear3"]]})], "tied_weights names 'linear3'", slow=True),
    # --- checkpoints and resuming ---
    Case("resume-missing-dir", [TMS, "--resume", "/nonexistent/run"], "no such directory", slow=True),
    Case("resume-a-file", [TMS, "--resume", Text("x")], "not a directory", slow=True),
    Case("resume-not-a-run", [TMS, "--resume", JUNK_DIR], "not an spd run directory"),
    Case("resume-no-checkpoint", [TMS, "--resume", RunCopy(no_checkpoints)], "no checkpoint", slow=True),
    Case("resume-truncated-checkpoint", [TMS, "--resume", RunCopy(truncate_checkpoint)], "cannot read checkpoint"),
    Case("resume-checkpoint-of-other-config", [TMS, "--resume", RunCopy(foreign_checkpoint)], "changes C (10 -> 20)"),
    Case("resume-model-only-checkpoint", [TMS, "--resume", RunCopy(model_only_checkpoint)], "holds no training state"),
    Case("resume-checkpoint-wrong-shapes", [TMS, "--resume", RunCopy(wrong_shapes_checkpoint)], "does not match its config", slow=True),
    Case("resume-damaged-run-config", [TMS, "--resume", RunCopy(garbage_run_config)], "invalid YAML", slow=True),
    Case("resume-changes-C", [TMS, "--resume", RUN, "--override", "C=10"], "changes C (20 -> 10)"),
    Case("resume-changes-loss", [TMS, "--resume", RUN, "--override", "losses.importance_minimality.coeff=0.5"], "changes losses.importance_minimality.coeff"),
    Case("resume-with-other-experiment", [TMS, str(OTHER_CONFIG), "--resume", RUN], "changes target_module_patterns", slow=True),
    Case("resume-steps-below-checkpoint", [TMS, "--resume", RUN, "--override", "steps=2"], "beyond steps=2"),
]
# fmt: on


def base_config() -> dict[str, Any]:
    raw = yaml.safe_load(TMS_CONFIG.read_text())
    return {**raw, **TINY, "steps": 4}


def digest(directory: Path) -> dict[str, str]:
    """Content hash of every file under `directory` (but the run lock, which records who last
    held it)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("earlier") / "run"
    args = [str(TMS_CONFIG), *override_args(steps=4, save_freq=2), "--run-dir", str(run_dir)]
    result = run_tms([*args, "--no-progress"], run_dir.parent)
    assert result.returncode == 0, result.stderr
    return run_dir


class Materializer:
    """Turns a case's placeholders into real files under one temporary directory."""

    def __init__(self, root: Path, earlier_run: Path) -> None:
        self.root = root
        self.earlier_run = earlier_run
        self.count = 0

    def _new_path(self, stem: str) -> Path:
        self.count += 1
        return self.root / f"{stem}{self.count}"

    def value(self, item: Any) -> Any:
        if isinstance(item, TargetCopy):
            target = self._new_path("target")
            shutil.copytree(SHIPPED_TARGET, target)
            item.damage(target)
            return str(target)
        return item

    def arg(self, item: Any) -> str:
        if item == TMS:
            return str(TMS_SCRIPT)
        if item == SPD_RUN:
            return "spd.scripts.run"
        if item == RUN:
            return str(self.earlier_run)
        if item in (EMPTY_DIR, JUNK_DIR):
            directory = self._new_path("dir")
            directory.mkdir()
            if item == JUNK_DIR:
                (directory / "notes.txt").write_text("not a run\n")
            return str(directory)
        if isinstance(item, Text):
            path = self._new_path("file")
            path.write_text(item.content)
            return str(path)
        if isinstance(item, Cfg):
            data = base_config()
            for key, value in item.changes.items():
                if value is DELETE:
                    del data[key]
                else:
                    data[key] = self.value(value)
            path = self._new_path("config").with_suffix(".yaml")
            path.write_text(yaml.safe_dump(data))
            return str(path)
        if isinstance(item, RunCopy):
            copy = self._new_path("run")
            shutil.copytree(self.earlier_run, copy)
            item.damage(copy)
            return str(copy)
        assert isinstance(item, str), f"unknown placeholder {item!r}"
        return item


def test_cases_are_distinct() -> None:
    assert len([case for case in CASES if not case.slow]) >= 25
    assert len({case.name for case in CASES}) == len(CASES)
    assert len({repr(case.argv) for case in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_bad_input(case: Case, earlier_run: Path, tmp_path: Path) -> None:
    before = digest(earlier_run)
    materialize = Materializer(tmp_path, earlier_run)
    argv = [materialize.arg(item) for item in case.argv]
    prefix = ["-m"] if case.argv[0] == SPD_RUN else []
    result = subprocess.run(
        [sys.executable, *prefix, *argv],
        env=script_env(tmp_path / "out"),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert case.expect in lines[0]
    assert digest(earlier_run) == before
