"""W&B tracking: a real offline W&B run, credentials handling, and no secret in any written file.

The decomposition runs as a subprocess exactly as a user starts it, with WANDB_MODE=offline and a
fake WANDB_API_KEY; wandb itself (its real offline mode) writes the W&B run directory.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import wandb
import yaml

# A generated protobuf module without type stubs.
from wandb.proto.wandb_internal_pb2 import Record  # pyright: ignore[reportAttributeAccessIssue]

from spd.experiments.registry import get_experiment
from spd.loading import env_files
from spd.loading.run_paths import REPO_ROOT
from spd.models.component_model import ComponentModel
from spd.persistence.run_dir import read_metrics
from spd.tracking import wandb_sink as wandb_tracking
from tests.tiny_runs import TINY_CLI_OVERRIDES, run_tiny_tms, tiny_tms_config

FAKE_KEY = "spdtestkey_" + "0123456789abcdef" * 2 + "_notreal"


@dataclass
class OfflineRun:
    run_dir: Path
    wandb_run_dir: Path  # <run_dir>/wandb/offline-run-…
    wandb_home: Path  # WANDB_CACHE_DIR / CONFIG_DIR / DATA_DIR parent
    output: str  # stdout + stderr of the run


def _read_wandb_records(path: Path) -> list[Record]:
    """Decode a `.wandb` transaction log (leveldb-style log: 32 KiB blocks, 7-byte record headers)."""
    data = path.read_bytes()
    block, header, records, pending = 32768, 7, [], b""
    pos = 7  # file header: ':W&B', 2 bytes of magic, 1 byte version
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + header : pos + header + length]
        pos += header + length
        if kind in (1, 2):  # full record / first fragment
            pending = chunk
        else:  # middle / last fragment
            pending += chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _history_row(history: Any) -> dict[str, Any]:
    """A history record as a dict; an image is a nested entry (its `nested_key` has several parts)."""
    row: dict[str, Any] = {}
    for item in history.item:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = row
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(item.value_json)
    return row


def offline_env(home: Path) -> dict[str, str]:
    """A subprocess environment for offline W&B with a fake key and W&B's own files under `home`."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": FAKE_KEY,
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_DATA_DIR": str(home / "data"),
    }
    for inherited in ("WANDB_DIR", "SPD_OUT_DIR"):
        env.pop(inherited, None)
    return env


def run_tms_script(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run the tms_5-2 decomposition script to completion (failing the test with its stderr if it
    fails); returns everything it printed."""
    script = get_experiment("tms_5-2").decomp_script
    result = subprocess.run(
        [sys.executable, str(script), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineRun]:
    root = tmp_path_factory.mktemp("offline")
    home = root / "wandb_home"
    env = {**offline_env(home), "SPD_OUT_DIR": str(root / "out")}
    spec = get_experiment("tms_5-2")
    overrides = [
        "--override", "wandb_project=spd-tests",
        "--override", "wandb_group=test-group",
        "--override", "wandb_tags=[tiny, offline]",
        "--override", "wandb_run_name_prefix=pre-",
    ]  # fmt: skip
    printed = run_tms_script(
        [str(spec.config_path), *TINY_CLI_OVERRIDES, *overrides, "--no-progress"], env, root
    )
    (run_dir,) = (root / "out").iterdir()
    (wandb_run_dir,) = (run_dir / "wandb").glob("offline-run-*")
    yield OfflineRun(run_dir, wandb_run_dir, home, printed)


def test_offline_run_holds_uploaded_files(offline_run: OfflineRun) -> None:
    files = offline_run.wandb_run_dir / "files"
    for name in (
        "final_config.yaml",
        "summary.json",
        "report.html",
        "checkpoints/model_00000020.pth",
    ):
        copy = files / name
        assert copy.is_file() and not copy.is_symlink(), name
        assert copy.read_bytes() == (offline_run.run_dir / name).read_bytes(), name
    assert sorted(p.name for p in (files / "checkpoints").iterdir()) == [
        "model_00000010.pth",
        "model_00000020.pth",
    ]


def test_offline_run_records_config_name_and_history(offline_run: OfflineRun) -> None:
    (log,) = offline_run.wandb_run_dir.glob("run-*.wandb")
    records = _read_wandb_records(log)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    importance = [entry for entry in config["losses"] if entry["name"] == "importance_minimality"]
    assert config["C"] == 20 and [entry["coeff"] for entry in importance] == [3e-3]
    assert config["wandb_tags"] == ["tiny", "offline"]
    assert run.display_name.startswith("pre-tms-C20-")
    assert run.run_group == "test-group"
    assert list(run.tags) == ["tiny", "offline"]
    assert run.project == "spd-tests"

    history: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = _history_row(record.history)
            history.setdefault(row["_step"], {}).update(row)
    # The same scalars as metrics.jsonl, at the same steps.
    logged = read_metrics(offline_run.run_dir)
    assert {row["step"] for row in logged} == set(history)
    for row in logged:
        for key, value in row.items():
            if key != "step":
                assert history[int(row["step"])][key] == pytest.approx(value, rel=1e-12), key
    # Figures went in as images at the slow evaluations (steps 0 and 20).
    for step in (0, 20):
        image = history[step]["figures/permuted_ci"]
        assert image["_type"] == "image-file" and image["format"] == "png"
        assert (offline_run.wandb_run_dir / "files" / image["path"]).is_file()
    assert "figures/permuted_ci" not in history[10]


def test_wandb_sync_accepts_the_offline_run(offline_run: OfflineRun) -> None:
    env = {
        **os.environ,
        "WANDB_API_KEY": FAKE_KEY,
        "WANDB_CONFIG_DIR": str(offline_run.wandb_home / "config"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", "--dry-run", str(offline_run.wandb_run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Would sync 1 run(s)" in result.stdout + result.stderr


def test_api_key_is_in_no_written_file_or_output(offline_run: OfflineRun) -> None:
    roots = [offline_run.run_dir, offline_run.wandb_home]
    written = [p for root in roots for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(written) > 20  # the run dir, its W&B run (logs, files, media) really are there
    leaking = [p for p in written if FAKE_KEY.encode() in p.read_bytes()]
    assert leaking == []
    assert FAKE_KEY not in offline_run.output


def test_uploaded_files_load_back_identically(
    offline_run: OfflineRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The W&B server cannot be reached here, so `wandb.Api` is replaced at exactly that boundary:
    # the fake serves the files of the real offline W&B run (what `wandb sync` would upload).
    files_dir = offline_run.wandb_run_dir / "files"

    class ServedFile:
        def __init__(self, path: Path) -> None:
            self.name = path.relative_to(files_dir).as_posix()
            self._path = path

        def download(self, root: str, replace: bool = False) -> None:
            destination = Path(root) / self.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(self._path.read_bytes())

    class ServedRun:
        def files(self) -> list[ServedFile]:
            return [ServedFile(p) for p in files_dir.rglob("*") if p.is_file()]

    class FakeApi:
        def __init__(self, timeout: int | None = None) -> None:
            self.timeout = timeout

        def run(self, path: str) -> ServedRun:
            assert path == "me/spd-tests/abc123"
            return ServedRun()

    monkeypatch.setattr(wandb, "Api", FakeApi)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("SPD_CACHE_DIR", str(tmp_path / "cache"))
    from_wandb = ComponentModel.from_pretrained("wandb:me/spd-tests/runs/abc123")
    local = ComponentModel.from_pretrained(offline_run.run_dir)
    x = torch.rand(16, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = []
        for model in (from_wandb, local):
            out, pre_acts = model.forward_with_pre_acts(x)
            ci, _ = model.causal_importances(pre_acts, "leaky_hard")
            outputs.append((out, ci, model.forward_with_components(x, dict(ci))))
    (out_a, ci_a, masked_a), (out_b, ci_b, masked_b) = outputs
    assert torch.equal(out_a, out_b) and torch.equal(masked_a, masked_b)
    assert all(torch.equal(ci_a[k], ci_b[k]) for k in ci_b)


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No key, no mode, no `.env` anywhere the tracker looks; restores whatever `.env` loading sets."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        # setenv first, so that undoing it also removes what loading a .env file sets
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(env_files, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(wandb_tracking, "_told_local_only", False)
    # No `wandb login` either: a home of its own, without a netrc file.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))


@pytest.mark.usefixtures("no_credentials")
def test_without_credentials_runs_locally_and_says_so_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    quick = {"steps": 2, "eval_freq": 1, "slow_eval_freq": 2, "figures": [{"name": "permuted_ci"}]}
    first = run_tiny_tms(wandb_project="spd-tests", **quick)
    second = run_tiny_tms(wandb_project="spd-tests", **quick)
    said = capsys.readouterr().out
    assert said.count("tracking locally only") == 1
    for run in (first, second):
        assert not (run.path / "wandb").exists()
        assert (run.path / "report.html").is_file()
        assert (run.path / "checkpoints" / "model_00000002.pth").is_file()


@pytest.mark.usefixtures("no_credentials")
def test_credentials_come_from_a_dotenv_file_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert wandb_tracking.tracking_mode() == "local"
    (tmp_path / ".env").write_text(f"WANDB_API_KEY={FAKE_KEY}\nWANDB_MODE=offline\n")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    env_files.load_env_files()
    assert os.environ["WANDB_API_KEY"] == FAKE_KEY
    assert (
        wandb_tracking.tracking_mode() == "local"
    )  # WANDB_MODE=disabled from the environment kept
    monkeypatch.delenv("WANDB_MODE")
    env_files.load_env_files()
    assert wandb_tracking.tracking_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_tracking.tracking_mode() == "online"


@pytest.mark.usefixtures("no_credentials")
def test_a_wandb_login_in_the_netrc_file_counts_as_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the decision is tested: an online run would need the W&B server (not reachable here)."""
    home = tmp_path / "home"
    home.mkdir()

    def write_netrc(path: Path, machine: str) -> None:
        path.write_text(f"machine {machine}\n  login user\n  password {FAKE_KEY}\n")
        path.chmod(0o600)  # as `wandb login` leaves it

    assert wandb_tracking.tracking_mode() == "local"
    write_netrc(home / ".netrc", "example.org")  # a login for another host
    assert wandb_tracking.tracking_mode() == "local"
    write_netrc(home / ".netrc", "api.wandb.ai")  # where `wandb login` puts the key
    assert wandb_tracking.tracking_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_tracking.tracking_mode() == "local"
    monkeypatch.delenv("WANDB_MODE")

    # $NETRC names the file instead; a self-hosted server (WANDB_BASE_URL) has its own entry.
    (home / ".netrc").unlink()
    elsewhere = tmp_path / "netrc"
    write_netrc(elsewhere, "wandb.example.org")
    monkeypatch.setenv("NETRC", str(elsewhere))
    assert wandb_tracking.tracking_mode() == "local"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_tracking.tracking_mode() == "online"


def test_run_name_fixed_or_generated_with_prefix() -> None:
    generated = tiny_tms_config(wandb_run_name_prefix="sweep7-", seed=3, C=12)
    assert (
        wandb_tracking.wandb_run_name(generated, "tms")
        == "sweep7-tms-C12-lr0.001-imp0.003-p1-seed3"
    )
    fixed = tiny_tms_config(wandb_run_name="my-run", wandb_run_name_prefix="ignored-")
    assert wandb_tracking.wandb_run_name(fixed, "tms") == "my-run"


def test_resumed_run_continues_the_same_wandb_run(offline_run: OfflineRun, tmp_path: Path) -> None:
    # A copy, so the module's other tests keep seeing exactly one offline run.
    run_dir = tmp_path / offline_run.run_dir.name
    shutil.copytree(offline_run.run_dir, run_dir)
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert offline_run.wandb_run_dir.name.endswith(f"-{run_id}")
    env = offline_env(offline_run.wandb_home)
    steps = yaml.safe_load((run_dir / "final_config.yaml").read_text())["steps"]
    args = ["--resume", str(run_dir), "--override", f"steps={steps + 4}", "--no-progress"]
    run_tms_script(args, env, tmp_path)
    offline_dirs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_dirs) == 2  # the first session's and the resumed one's
    assert all(d.name.endswith(f"-{run_id}") for d in offline_dirs)
