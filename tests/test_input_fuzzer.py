"""The input fuzzer: every generated bad input (tests/input_fuzz.py) must end cleanly.

Clean means: exit code 2, exactly one line on stderr (starting `spd: error:`), no traceback,
no planted payload run, and nothing written under the output root; a reader meant to go past
damage (`expect="tolerated"`) may also finish (exit 0) with `spd: warning:` lines. The run
directory cases damage the files of a real two-step run (`run_template`), and a case may hold a
run directory's lock while it runs (another process training it). Most cases run in this process, through the same
boundary the command lines use (`spd.errors.cli_exit_code` wraps `run_cli`); a sample runs as
real subprocesses. The fast slice (one seed) is in the default suite; `slow` runs more seeds.

A generated case is invalid by construction, so none should start a run; in case one does,
`optimize`, the launcher's source tree and the training loops are replaced by tripwires that
fail loudly (they are not stand-ins: a clean case never reaches them).
"""

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import spd.analysis.analyze as analysis_pass
import spd.analysis.cli as analysis_cli
import spd.experiments.lm.lm_decomposition as lm_script
import spd.experiments.resid_mlp.resid_mlp_decomposition as resid_script
import spd.experiments.resid_mlp.train_resid_mlp as train_resid
import spd.experiments.run_decomposition as run_decomposition
import spd.experiments.tms.tms_decomposition as tms_script
import spd.experiments.tms.train_tms as train_tms
import spd.launch.launcher as launcher
import spd.scripts.config_cli as config_cli
import spd.scripts.report as report_script
import spd.scripts.run as run_script
from spd.config.loading import load_config
from spd.errors import cli_exit_code
from spd.persistence.run_lock import lock_run_directory
from tests.input_fuzz import CASE_DIR, PAYLOAD_MARKER, FuzzCase, generate
from tests.paths import REPO_ROOT
from tests.resumable_runs import TMS_CONFIG, override_args, run_tms

SCRIPTS = {
    "tms": REPO_ROOT / "spd" / "experiments" / "tms" / "tms_decomposition.py",
    "resid_mlp": REPO_ROOT / "spd" / "experiments" / "resid_mlp" / "resid_mlp_decomposition.py",
    "lm": REPO_ROOT / "spd" / "experiments" / "lm" / "lm_decomposition.py",
    "train_tms": REPO_ROOT / "spd" / "experiments" / "tms" / "train_tms.py",
    "train_resid_mlp": REPO_ROOT / "spd" / "experiments" / "resid_mlp" / "train_resid_mlp.py",
}
SPD_RUN = Path(sys.executable).parent / "spd-run"
FAST_SEEDS = [0]
SLOW_SEEDS = list(range(1, 11))
SUBPROCESS_SAMPLE = 4
SLOW_SUBPROCESS_SAMPLE = 30


class CaseAccepted(Exception):
    """Raised by a tripwire: a case meant to be rejected got as far as starting work."""


def _tripwire(*_: object, **__: object) -> None:
    raise CaseAccepted("a bad input was accepted and started a run")


def _fill(text: str, case_dir: Path) -> str:
    return text.replace(CASE_DIR, str(case_dir))


def _prepare(case: FuzzCase, case_dir: Path) -> tuple[list[str], dict[str, str]]:
    case_dir.mkdir(parents=True)
    for name, content in case.files.items():
        path = case_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.replace(CASE_DIR.encode(), str(case_dir).encode()))
    env = {
        "SPD_OUT_DIR": str(case_dir / "out"),
        **{k: _fill(v, case_dir) for k, v in case.env.items()},
    }
    return [_fill(a, case_dir) for a in case.argv], env


def _main_for(case: FuzzCase, argv: list[str]) -> Callable[[], None]:
    if case.entry == "spd-run":
        return lambda: run_script.main(argv)
    if case.entry == "spd-report":
        return lambda: report_script.main(argv)
    if case.entry == "spd-analyze":
        return lambda: analysis_cli.analyze_main(argv)
    if case.entry == "spd-browse":
        return lambda: analysis_cli.browse_main(argv)
    if case.entry == "spd-config":
        return lambda: config_cli.main(argv)
    if case.entry == "load_config":

        def library_call() -> None:
            load_config(argv[0])

        return library_call
    scripts = {
        "tms": tms_script.main,
        "resid_mlp": resid_script.main,
        "lm": lm_script.main,
        "train_tms": train_tms.main,
        "train_resid_mlp": train_resid.main,
    }
    return scripts[case.entry]


def _written_under(root: Path) -> list[str]:
    """Files and folders under the output root (a root that is a file holds nothing)."""
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def problems_of(
    code: int, stderr: str, out_root: Path, expect: str = "error", case_dir: Path | None = None
) -> list[str]:
    """Why a finished case is not clean (empty when it is); see `FuzzCase.expect`."""
    found = []
    lines = stderr.strip().splitlines()
    if expect == "tolerated":
        if code not in (0, 2):
            found.append(f"exit code {code}")
        if any(not line.startswith("spd: ") for line in lines):
            found.append("a line on stderr that is not an spd warning or error")
    else:
        if code != 2:
            found.append(f"exit code {code}")
        if len(lines) != 1:
            found.append(f"{len(lines)} lines on stderr")
        if lines and not lines[0].startswith("spd: error: "):
            found.append("the line is not an spd error")
    if "Traceback" in stderr:
        found.append("traceback")
    if case_dir is not None and (case_dir / PAYLOAD_MARKER).exists():
        found.append("a planted payload ran")
    written = _written_under(out_root)
    if written:
        found.append(f"wrote {written[:3]}")
    return found


@pytest.fixture
def tripwires(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(run_decomposition, "optimize", _tripwire)
    monkeypatch.setattr(launcher, "source_tree", _tripwire)
    monkeypatch.setattr(train_tms, "train", _tripwire)
    monkeypatch.setattr(train_resid, "train", _tripwire)
    monkeypatch.setattr(analysis_pass, "run_pass", _tripwire)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture(scope="module")
def run_template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files of a real two-step TMS run directory, under 'run/' (a checkpoint at each step)."""
    out = tmp_path_factory.mktemp("template")
    result = run_tms([str(TMS_CONFIG), *override_args(steps=2, save_freq=1, train_log_freq=1)], out)
    assert result.returncode == 0, result.stderr
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return {
        f"run/{p.relative_to(run_dir)}": p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.suffix in (".pth", ".yaml", ".jsonl")
    }


def run_in_process(case: FuzzCase, case_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run one case through the CLI boundary in this process; its problems (empty: clean)."""
    argv, env = _prepare(case, case_dir)
    with monkeypatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.setattr(sys, "argv", [case.entry, *argv])
        patch.syspath_prepend(str(case_dir))
        patch.chdir(case_dir)
        lock = lock_run_directory(case_dir / case.locked) if case.locked is not None else None
        try:
            code, stderr = cli_exit_code(_main_for(case, argv))
        finally:
            if lock is not None:
                lock.release()
    problems = problems_of(code, stderr, Path(env["SPD_OUT_DIR"]), case.expect, case_dir)
    return [*problems, f"stderr: {stderr.strip()[-300:]!r}"] if problems else []


def run_in_subprocess(case: FuzzCase, case_dir: Path) -> list[str]:
    """Run one case as a real command line; its problems (empty: clean)."""
    argv, env = _prepare(case, case_dir)
    entry = "tms" if case.entry == "load_config" else case.entry
    if entry == "spd-run":
        command = [str(SPD_RUN), *argv]
    elif entry in ("spd-report", "spd-analyze", "spd-browse", "spd-config"):
        command = [str(Path(sys.executable).parent / entry), *argv]
    else:
        command = [sys.executable, str(SCRIPTS[entry]), *argv]
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(case_dir)]),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    result = subprocess.run(
        command,
        cwd=case_dir,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    problems = problems_of(
        result.returncode, result.stderr, Path(env["SPD_OUT_DIR"]), case.expect, case_dir
    )
    return [*problems, f"stderr: {result.stderr.strip()[-300:]!r}"] if problems else []


def fuzz(
    seeds: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_template: dict[str, bytes] | None = None,
) -> tuple[int, list[str]]:
    tried, failures = 0, []
    for seed in seeds:
        for index, case in enumerate(generate(seed, run_template=run_template)):
            tried += 1
            problems = run_in_process(case, tmp_path / f"s{seed}-{index}", monkeypatch)
            if problems:
                failures.append(f"[seed {seed}] {case.name}: {'; '.join(problems)}")
    return tried, failures


def _report(
    record_property: Callable[[str, object], None], kind: str, tried: int, failures: list[str]
) -> None:
    clean = tried - len(failures)
    record_property(f"{kind}_tried", tried)
    record_property(f"{kind}_clean", clean)
    print(f"\ninput fuzzer ({kind}): {tried} tried, {clean} clean")


@pytest.mark.usefixtures("tripwires")
def test_fuzz_fast_slice(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
    run_template: dict[str, bytes],
) -> None:
    tried, failures = fuzz(FAST_SEEDS, tmp_path, monkeypatch, run_template)
    _report(record_property, "fast", tried, failures)
    assert not failures, "\n".join(failures[:40])
    assert tried >= 430  # the new boundaries (run dirs, LM files, env, options) add ~130


def subprocess_sample(
    size: int, record_property: Callable[[str, object], None], tmp_path: Path
) -> None:
    cases = generate(0)
    step = max(1, len(cases) // size)
    sample = cases[::step][:size]
    failures = []
    for index, case in enumerate(sample):
        problems = run_in_subprocess(case, tmp_path / str(index))
        if problems:
            failures.append(f"{case.name}: {'; '.join(problems)}")
    _report(record_property, f"subprocess-{size}", len(sample), failures)
    assert not failures, "\n".join(failures)


def test_fuzz_sample_in_subprocesses(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    subprocess_sample(SUBPROCESS_SAMPLE, record_property, tmp_path)


@pytest.mark.slow
def test_fuzz_larger_sample_in_subprocesses(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    subprocess_sample(SLOW_SUBPROCESS_SAMPLE, record_property, tmp_path)


@pytest.mark.slow
@pytest.mark.usefixtures("tripwires")
def test_fuzz_long(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
    run_template: dict[str, bytes],
) -> None:
    tried, failures = fuzz(SLOW_SEEDS, tmp_path, monkeypatch, run_template)
    _report(record_property, "long", tried, failures)
    assert not failures, "\n".join(failures[:40])
