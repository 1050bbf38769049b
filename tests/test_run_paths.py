"""`wandb:` run paths: parsing, resolution through the W&B public API, caching, and loading.

The W&B server cannot be reached from here, so in these tests `wandb.Api` is replaced by a fake
at exactly that boundary (`FakeApi` below). The files it serves are real files on disk: a real
run directory written by a real decomposition, or the shipped TMS target. Everything after the
download (cache layout, config loading, target and decomposition loading) is the real code.
"""

import os
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import wandb

from spd.errors import SPDUserError
from spd.loading import env_files
from spd.loading.run_paths import (
    COMPLETE_MARKER,
    REPO_ROOT,
    WandbRunRef,
    cached_run_dir,
    parse_wandb_path,
    resolve_run_path,
)
from spd.loading.targets import load_target_model
from spd.models.component_model import ComponentModel
from tests.tiny_runs import run_tiny_tms, tiny_tms_config


class FakeFile:
    """One file of a fake W&B run, backed by a real file."""

    def __init__(self, name: str, source: Path | bytes) -> None:
        self.name = name
        self._source = source

    def download(self, root: str, replace: bool = False) -> None:
        destination = Path(root) / self.name
        destination.parent.mkdir(parents=True, exist_ok=True)
        data = self._source if isinstance(self._source, bytes) else self._source.read_bytes()
        destination.write_bytes(data)


class FakeApi:
    """Stands in for `wandb.Api` (the server): `run(path)` returns a run with the given files."""

    runs: ClassVar[dict[str, list[FakeFile]]] = {}
    calls: ClassVar[list[str]] = []

    def __init__(self, timeout: int | None = None) -> None:
        self.timeout = timeout

    def run(self, path: str) -> "FakeApi":
        FakeApi.calls.append(path)
        if path not in FakeApi.runs:
            raise ValueError(f"Could not find run {path}")  # what the real API raises for a bad id
        self._path = path
        return self

    def files(self) -> list[FakeFile]:
        return FakeApi.runs[self._path]


@pytest.fixture
def fake_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> type[FakeApi]:
    monkeypatch.setattr(wandb, "Api", FakeApi)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)  # the fake server takes any key
    monkeypatch.setattr(FakeApi, "runs", {})
    monkeypatch.setattr(FakeApi, "calls", [])
    monkeypatch.setenv("SPD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    return FakeApi


def run_dir_files(run_dir: Path) -> list[FakeFile]:
    """What a finished run uploads (see spd/tracking/wandb_sink.py), plus W&B's own files."""
    files = [
        FakeFile(p.relative_to(run_dir).as_posix(), p) for p in run_dir.rglob("*") if p.is_file()
    ]
    return [
        *files,
        FakeFile("wandb-metadata.json", b"{}"),
        FakeFile("config.yaml", b"wandb_version: 1\n"),
        FakeFile("media/images/figures/permuted_ci_0_abc.png", b"png"),
    ]


def test_parse_wandb_path() -> None:
    assert parse_wandb_path("wandb:my-team/spd_tms/runs/a1b2c3") == WandbRunRef(
        "my-team", "spd_tms", "a1b2c3"
    )
    assert WandbRunRef("e", "p", "r").api_path == "e/p/r"


@pytest.mark.parametrize(
    "bad",
    [
        "wandb:team/project/a1b2c3",
        "wandb:team/project/runs/",
        "wandb:/project/runs/a1b2c3",
        "wandb:team/project/runs/a1b2c3/extra",
        "wandb:team/project/run/a1b2c3",
        "wandb:team/my project/runs/a1b2c3",
        "wandb:",
        "team/project/runs/a1b2c3",
    ],
)
def test_bad_wandb_paths_are_user_errors(bad: str) -> None:
    with pytest.raises(SPDUserError, match=r"wandb:<entity>/<project>/runs/<run id>"):
        parse_wandb_path(bad)


def test_local_paths_resolve_as_given_or_from_the_repo_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # so that a relative path exists only under the repo root
    assert resolve_run_path(tmp_path) == tmp_path
    assert (
        resolve_run_path("spd/experiments/tms/targets/tms_5-2")
        == REPO_ROOT / "spd/experiments/tms/targets/tms_5-2"
    )
    assert resolve_run_path(tmp_path / "missing") is None


def test_download_keeps_latest_checkpoint_skips_wandb_files_and_is_cached(
    fake_api: type[FakeApi], tmp_path: Path
) -> None:
    source = tmp_path / "source"
    (source / "checkpoints").mkdir(parents=True)
    for step in (100, 200, 50):
        (source / "checkpoints" / f"model_{step:08d}.pth").write_bytes(f"step {step}".encode())
    (source / "final_config.yaml").write_text("C: 3\n")
    fake_api.runs["ent/proj/r1"] = run_dir_files(source)

    local = resolve_run_path("wandb:ent/proj/runs/r1")
    assert local is not None
    assert (
        local
        == cached_run_dir(WandbRunRef("ent", "proj", "r1"))
        == tmp_path / "cache/wandb/ent/proj/r1"
    )
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
        COMPLETE_MARKER,
        "checkpoints/model_00000200.pth",
        "final_config.yaml",
    ]
    assert (local / "checkpoints/model_00000200.pth").read_bytes() == b"step 200"
    assert fake_api.calls == ["ent/proj/r1"]

    # The next call is served from the cache, without asking the API.
    fake_api.runs.clear()
    assert resolve_run_path("wandb:ent/proj/runs/r1") == local
    assert fake_api.calls == ["ent/proj/r1"]


def test_interrupted_download_is_redone(fake_api: type[FakeApi], tmp_path: Path) -> None:
    stale = cached_run_dir(WandbRunRef("ent", "proj", "r2"))
    stale.mkdir(parents=True)
    (stale / "final_config.yaml").write_text("half written")  # no completion marker
    fake_api.runs["ent/proj/r2"] = [FakeFile("final_config.yaml", b"C: 4\n")]
    local = resolve_run_path("wandb:ent/proj/runs/r2")
    assert local is not None
    assert local == stale
    assert (local / "final_config.yaml").read_text() == "C: 4\n"
    assert (local / COMPLETE_MARKER).is_file()


def test_unknown_run_and_empty_run_are_user_errors(fake_api: type[FakeApi]) -> None:
    with pytest.raises(SPDUserError, match="cannot read W&B run ent/proj/nope"):
        resolve_run_path("wandb:ent/proj/runs/nope")
    fake_api.runs["ent/proj/empty"] = [FakeFile("wandb-metadata.json", b"{}")]
    with pytest.raises(SPDUserError, match="no uploaded files"):
        resolve_run_path("wandb:ent/proj/runs/empty")


def test_target_model_loads_from_a_wandb_run(fake_api: type[FakeApi]) -> None:
    target_dir = REPO_ROOT / "spd/experiments/tms/targets/tms_5-2"
    fake_api.runs["ent/targets/tms52"] = [FakeFile(p.name, p) for p in target_dir.iterdir()]
    from_wandb = load_target_model(
        tiny_tms_config(pretrained_model_path="wandb:ent/targets/runs/tms52")
    )
    local = load_target_model(tiny_tms_config())
    state_a, state_b = from_wandb.state_dict(), local.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_b)


def test_run_directory_and_cached_wandb_run_load_identically(fake_api: type[FakeApi]) -> None:
    run_dir = run_tiny_tms(figures=[]).path  # figures play no part in loading
    fake_api.runs["ent/proj/d1"] = run_dir_files(run_dir)
    from_dir = ComponentModel.from_pretrained(run_dir)
    from_wandb = ComponentModel.from_pretrained("wandb:ent/proj/runs/d1")
    assert fake_api.calls == ["ent/proj/d1"]
    x = torch.rand(32, 5, generator=torch.Generator().manual_seed(1))
    results = []
    with torch.no_grad():
        for model in (from_dir, from_wandb):
            out, pre_acts = model.forward_with_pre_acts(x)
            ci, _ = model.causal_importances(pre_acts, "leaky_hard")
            results.append((out, ci, model.forward_with_components(x, dict(ci))))
    (out_a, ci_a, masked_a), (out_b, ci_b, masked_b) = results
    assert torch.equal(out_a, out_b) and torch.equal(masked_a, masked_b)
    assert ci_a.keys() == ci_b.keys() and all(torch.equal(ci_a[k], ci_b[k]) for k in ci_a)
    # And the cached copy is what gets loaded again later, without the API.
    again = ComponentModel.from_pretrained("wandb:ent/proj/runs/d1")
    assert fake_api.calls == ["ent/proj/d1"]
    with torch.no_grad():
        assert torch.equal(again.forward_with_components(x, dict(ci_a)), masked_a)


def test_download_takes_the_api_key_from_a_dotenv_file(
    fake_api: type[FakeApi], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # setenv first, so that undoing it also removes what loading the .env file sets
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(env_files, "REPO_ROOT", tmp_path)
    (tmp_path / ".env").write_text("WANDB_API_KEY=key-from-dotenv\n")
    keys_seen: list[str | None] = []

    class KeyCheckingApi(FakeApi):
        def run(self, path: str) -> FakeApi:
            keys_seen.append(os.environ.get("WANDB_API_KEY"))  # what the real client would read
            return super().run(path)

    monkeypatch.setattr(wandb, "Api", KeyCheckingApi)
    fake_api.runs["ent/proj/r3"] = [FakeFile("final_config.yaml", b"C: 5\n")]
    resolve_run_path("wandb:ent/proj/runs/r3")
    assert keys_seen == ["key-from-dotenv"]
