"""Every code block of the documentation runs (issue 30): README.md, CLAUDE.md and docs/*.md.

A fenced block is one of:
- a file: a `yaml` or `python` block whose first line is `# <name>.yaml` / `# <path>.py` is
  written to that path in a scratch directory, where every block runs (a block may use the files
  of any other, e.g. README's `my_tms.yaml` is docs/own_models.md's);
- `python`: run as a script there, its step counts shortened;
- `yaml` (not a file): parsed, and validated as a config when it is a whole one (has `C`);
- `bash`: run as a script with `set -e` there, through wrappers that keep it short and offline
  (below); `text` and unlabelled blocks are output and trees, not code.

The wrappers: `spd-run` and the decomposition scripts get `--dry-run` (every check of the launch
or run, its configs and SLURM script, nothing run); the target training scripts get a short step
count and write into the scratch directory, never into the shipped targets; commands that take
minutes or need what a test machine lacks are named in `NOT_RUN` with the reason, and print that
they were not run (a block that only holds such commands still runs its others).
"""

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.paths import REPO_ROOT, TMS_5_2_CONFIG
from tests.test_original_configs import _original_tms_target

DOCS = [
    REPO_ROOT / "README.md",
    REPO_ROOT / "CLAUDE.md",
    *sorted((REPO_ROOT / "docs").glob("*.md")),
]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
FILE_HEADER = re.compile(r"^# ([\w./-]+\.(?:yaml|py))\b")
# `{"steps": 2000}` in a library example, `steps=2000` in a command: a few steps are enough.
STEPS = re.compile(r"(\"steps\": |steps=)\d+")
SHORT_STEPS = 20
PLACEHOLDER = re.compile(r"<([a-z][a-z ]*)>")

# Command (first words) -> why a test does not run it; the wrapper prints that instead.
NOT_RUN = {
    "make": "make targets set up .venv and run full-length jobs; they are the Makefile's",
    "spd-analyze": "needs an analysed language-model run (tests/test_analysis.py runs the pass)",
    "spd-browse": "needs an analysed language-model run (tests/test_browser.py builds pages)",
    "scripts/benchmark": "benchmarks take minutes (tests/test_benchmark_script.py)",
    "spd-app": "serves until Ctrl-C (tests/test_app_cli.py and tests/test_app_browser.py run it)",
}

WRAPPERS = f"""
set -e
not_run() {{ echo "not run here: $*"; }}
make() {{ not_run "make $* ({NOT_RUN["make"]})"; }}
spd-analyze() {{ not_run "spd-analyze: {NOT_RUN["spd-analyze"]}"; }}
spd-browse() {{ not_run "spd-browse: {NOT_RUN["spd-browse"]}"; }}
spd-app() {{ not_run "spd-app: {NOT_RUN["spd-app"]}"; }}
# Pretraining for real, shortened: 20 steps and one eval batch.
spd-pretrain() {{ command spd-pretrain "$@" --override steps=20 --override n_eval_batches=1 --no-progress; }}
spd-run() {{
  case " $* " in
    *" --resume "*) not_run "spd-run $* (resuming needs a stopped run: tests/test_resume.py)";;
    *" --list "*) command spd-run "$@";;
    *) command spd-run $(sweep_file "$@") --dry-run;;
  esac
}}
# `--sweep` alone takes spd/scripts/sweep_params.yaml, which `make install` copies from its example.
sweep_file() {{
  while [ $# -gt 0 ]; do
    if [ "$1" = --sweep ] && {{ [ $# = 1 ] || [ "${{2#--}}" != "$2" ]; }}; then
      echo --sweep; echo "$SPD_REPO/spd/scripts/sweep_params.yaml.example"
    else echo "$1"; fi
    shift
  done
}}
python() {{
  case "$1" in
    *scripts/benchmark*) not_run "python $* ({NOT_RUN["scripts/benchmark"]})";;
    *make_offline_example.py) command python "$@" --steps 2;;  # the same build, 2 steps
    *train_tms.py|*train_resid_mlp.py)
      if ! command python "$@" --override steps=200 --no-progress $(shipped_out "$@") 2>train.err
      then
        grep -q "no seed tried represented every feature" train.err || {{ cat train.err >&2; return 1; }}
        not_run "a 200-step target kept a dead feature (full-length training: tests/test_tms.py)"
      fi;;
    *_decomposition.py|*decompose.py) command python "$@" --dry-run;;
    *) command python "$@";;
  esac
}}
# --experiment NAME writes into the shipped target directory unless --out says otherwise.
shipped_out() {{ case " $* " in *" --experiment "*) echo --out targets;; esac; }}
"""


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language and text."""

    doc: Path
    line: int
    language: str
    text: str

    @property
    def file_name(self) -> str | None:
        """The path it is a file at (its first line `# <path>`), if it is one."""
        match = FILE_HEADER.match(self.text)
        return match[1] if match and self.language in ("yaml", "python") else None

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(REPO_ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(doc, line, match[1], match[2]))
    return found


CODE = [b for b in blocks() if b.language in ("bash", "python", "yaml")]


def _scratch(root: Path) -> dict[str, str]:
    """A directory that looks like a checkout to the commands (spd/, scripts/, Makefile linked),
    holding every file block and the config files the docs name; the environment to run in."""
    for name in ("spd", "scripts", "Makefile", "pyproject.toml"):
        (root / name).symlink_to(REPO_ROOT / name)
    for block in CODE:
        if block.file_name is not None:
            path = root / block.file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text)
    # The docs' "your own config" and "a config of the original implementation".
    shutil.copy(TMS_5_2_CONFIG, root / "my_run.yaml")
    for name in ("a.yaml", "b.yaml"):
        shutil.copy(TMS_5_2_CONFIG, root / name)
    original = yaml.safe_load(
        (REPO_ROOT / "tests/fixtures/original_tms_5-2_config.yaml").read_text()
    )
    original["pretrained_model_path"] = str(_original_tms_target(root / "original", True).parent)
    for name in ("old_config.yaml", "old_tms_config.yaml"):
        (root / name).write_text(yaml.safe_dump(original, sort_keys=False))
    (root / "my_sweep.yaml").write_text("global:\n  seed: {values: [0, 1]}\n")
    # Trained targets the sweep example points at come from its own loop.
    bin_dir = Path(sys.executable).parent
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": f"{root}:{REPO_ROOT}",
        "OMP_NUM_THREADS": "1",
        "SPD_OUT_DIR": str(root / "spd_out"),
        "SPD_CACHE_DIR": str(root / "cache"),
        "SPD_SNAPSHOT_DIR": str(root / "snapshots"),
        "SPD_SLURM_LOG_DIR": str(root / "slurm_logs"),
        "SPD_REPO": str(REPO_ROOT),
        "MPLBACKEND": "Agg",
    }


def _run(args: list[str], root: Path, env: dict[str, str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        args, cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.parametrize("block", CODE, ids=[b.id for b in CODE])
def test_code_block_runs(block: Block, tmp_path: Path) -> None:
    env = _scratch(tmp_path)
    text = STEPS.sub(lambda m: f"{m[1]}{SHORT_STEPS}", block.text)
    if block.language == "bash":  # `<run dir>` would be a redirection: a placeholder name instead
        text = PLACEHOLDER.sub(lambda m: m[1].replace(" ", "_").upper(), text)
    if block.file_name is not None:
        if block.file_name.endswith(".py"):  # a module of the example: it must import
            module = block.file_name.removesuffix(".py").replace("/", ".")
            (tmp_path / Path(block.file_name).parent / "__init__.py").touch()
            result = _run([sys.executable, "-c", f"import {module}"], tmp_path, env)
            assert result.returncode == 0, result.stderr
        else:
            assert isinstance(yaml.safe_load(block.text), dict)
        return
    if block.language == "yaml":
        data = yaml.safe_load(block.text)
        if isinstance(data, dict) and "C" in data:
            from spd.config.loading import config_from_dict

            config_from_dict(data, source=block.id)
        return
    if block.language == "python" and "<run dir>" in text:
        pytest.skip(f"{block.id}: {NOT_RUN['spd-analyze']}")
    if block.language == "python":
        # A snippet "in spd/eval/metrics.py" uses that module's names.
        modules = re.findall(r"^# in (spd/[\w/]+)\.py", text, re.M)
        prelude = "".join(f"from {m.replace('/', '.')} import *\n" for m in modules)
        result = _run([sys.executable, "-c", prelude + text], tmp_path, env)
    else:
        result = _run(["bash", "-c", WRAPPERS + text], tmp_path, env)
    assert result.returncode == 0, f"{block.id}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def test_every_code_block_has_a_language() -> None:
    """An unlabelled block is taken for output; one that holds commands must say `bash`."""
    commands = re.compile(r"^(spd-\w+|python|make) ", re.M)
    # A call-tree diagram starts with a command too; its box-drawing lines make it a diagram.
    unlabelled = [
        b.id
        for b in blocks()
        if b.language == "" and commands.search(b.text) and "└─" not in b.text
    ]
    assert unlabelled == []
