"""The analysis pass (`spd-analyze`) on planted decompositions of the tiny offline LM example and a TMS run."""

import json
import signal
import subprocess
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from spd.analysis.accumulators import AccumulatorSettings, AnalysisAccumulator
from spd.analysis.analyze import PassOptions, analyze_run
from spd.analysis.browser import write_browser
from spd.analysis.sources import ANALYSIS_SEED
from spd.analysis.store import load_analysis
from spd.data.lm_data import lm_batches
from spd.errors import SPDUserError
from spd.models.component_model import ComponentModel
from tests.analysis_runs import OTHER, PLANTED, TWIN, C, PlantedRun, build_tiny_example, planted_run
from tests.tiny_runs import run_tiny_tms

REPO = Path(__file__).resolve().parent.parent
OPTIONS = PassOptions(n_tokens=2000, batch_size=4, show_progress=False, top_k=5, n_random=5)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_example(tmp_path_factory.mktemp("out"))


@pytest.fixture
def planted(example: Path, tmp_path: Path) -> PlantedRun:
    return planted_run(example, tmp_path / "run")


def _streamed_tokens(run: PlantedRun, n_batches: int) -> torch.Tensor:
    """The tokens the pass reads, drawn independently from the same seeded stream."""
    task = run.config.task_config
    stream = lm_batches(task, run.tokenizer, "test", OPTIONS.batch_size or 0, ANALYSIS_SEED)  # pyright: ignore[reportArgumentType]
    return torch.cat([next(stream) for _ in range(n_batches)])


def test_planted_subcomponent_has_its_token_on_top_with_precision_one(
    planted: PlantedRun, device: torch.device
) -> None:
    analyze_run(planted.run_dir, replace(OPTIONS, device=str(device)))
    analysis = load_analysis(planted.run_dir)
    layer = analysis.layer("model.embed_tokens")
    n_batches = analysis.meta["n_batches"]
    tokens = _streamed_tokens(planted, n_batches)
    assert analysis.meta["n_tokens"] == tokens.numel() >= OPTIONS.n_tokens
    occurrences = int((tokens == planted.planted_token).sum())
    assert occurrences > 0

    token, fires, precision = analysis.top_tokens("model.embed_tokens", PLANTED)[0]
    assert token == analysis.vocab[planted.planted_token]
    assert (fires, precision) == (occurrences, 1.0)
    assert len(analysis.top_tokens("model.embed_tokens", PLANTED)) == 1  # fires on nothing else
    assert layer["density"][PLANTED] == pytest.approx(occurrences / tokens.numel())
    assert (
        analysis.top_tokens("model.embed_tokens", OTHER)[0][0]
        == analysis.vocab[planted.other_token]
    )
    silent = [c for c in range(C) if c not in (PLANTED, TWIN, OTHER)]
    assert (layer["fire_count"][silent] == 0).all()

    # Every kept context is centred on the planted token, with CI 1 there.
    centre = analysis.meta["settings"]["context_before"]
    for kind in ("top", "random"):
        valid = layer[f"{kind}_valid"][PLANTED]
        assert valid.sum() == min(OPTIONS.top_k, occurrences)
        assert (layer[f"{kind}_tokens"][PLANTED][valid, centre] == planted.planted_token).all()
        assert (layer[f"{kind}_window_ci"][PLANTED][valid, centre] == 1.0).all()
        window_tokens = layer[f"{kind}_tokens"][PLANTED][valid]
        window_ci = layer[f"{kind}_window_ci"][PLANTED][valid]
        np.testing.assert_array_equal(window_ci == 1.0, window_tokens == planted.planted_token)
    # The random contexts are different positions from one another.
    random = layer["random_tokens"][PLANTED][layer["random_valid"][PLANTED]]
    assert len({tuple(row) for row in random.tolist()}) > 1

    # Its twin fires on every one of its tokens; the CI histogram puts all its firing mass at 1.
    assert (layer["cofire_layer"][PLANTED][0], layer["cofire_index"][PLANTED][0]) == (0, TWIN)
    assert layer["cofire_fraction"][PLANTED][0] == 1.0
    assert layer["histogram"][PLANTED][-1] == occurrences
    assert layer["histogram"][PLANTED].sum() == tokens.numel()
    # The embedding's read direction is one-hot on the planted token.
    assert layer["read_token_ids"][PLANTED][0] == planted.planted_token


def test_a_longer_rerun_continues_the_saved_pass(planted: PlantedRun, tmp_path: Path) -> None:
    analyze_run(planted.run_dir, replace(OPTIONS, n_tokens=600))
    first = load_analysis(planted.run_dir)
    analyze_run(planted.run_dir, OPTIONS)  # continues from 600 tokens to 2000
    continued = load_analysis(planted.run_dir)
    assert first.meta["n_tokens"] < continued.meta["n_tokens"]
    fresh = analyze_run(planted.run_dir, replace(OPTIONS, fresh=True))
    straight = load_analysis(fresh)
    for key, value in straight.layer("model.embed_tokens").arrays.items():
        np.testing.assert_array_equal(continued.layer("model.embed_tokens")[key], value, key)
    with pytest.raises(SPDUserError, match=r"other options \(settings.top_k differ\).*--fresh"):
        analyze_run(planted.run_dir, replace(OPTIONS, top_k=7))


@pytest.mark.slow
def test_a_stopped_pass_continues_to_the_same_result(planted: PlantedRun) -> None:
    # A pass long enough to be stopped by SIGTERM (as SLURM does before a time limit) while running.
    args = [str(planted.run_dir), "--tokens", "20000", "--batch-size", "4", "--save-every", "5"]
    args += ["--top-k", str(OPTIONS.top_k), "--n-random", str(OPTIONS.n_random)]
    cmd = [sys.executable, "-m", "spd.analysis.cli", *args, "--no-progress"]
    state = planted.run_dir / "analysis" / "state.pt"
    process = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr
    assert "rerun the same command to continue" in stderr
    stopped_at = torch.load(state, weights_only=True)["accumulator"]["n_tokens"]
    assert 0 < stopped_at < 20000
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr
    continued = load_analysis(planted.run_dir)
    analyze_run(planted.run_dir, replace(OPTIONS, n_tokens=20000, fresh=True))
    straight = load_analysis(planted.run_dir)
    assert continued.meta["n_tokens"] == straight.meta["n_tokens"]
    for key, value in straight.layer("model.embed_tokens").arrays.items():
        np.testing.assert_array_equal(continued.layer("model.embed_tokens")[key], value, key)


def test_accumulator_memory_does_not_grow_with_tokens() -> None:
    settings = AccumulatorSettings(0.1, 10, 10, 8, 2, 20)
    generator = torch.Generator().manual_seed(0)

    def peak_after(n_batches: int) -> tuple[int, int]:
        acc = AnalysisAccumulator({"a": 64, "b": 32}, 500, settings, torch.device("cpu"))
        tracemalloc.start()
        for _ in range(n_batches):
            tokens = torch.randint(0, 500, (4, 32), generator=generator)
            ci = {
                name: torch.rand(4, 32, C_, generator=generator) ** 8
                for name, C_ in (("a", 64), ("b", 32))
            }
            acc.update(tokens, ci)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return acc.nbytes(), peak

    bytes_short, peak_short = peak_after(20)
    bytes_long, peak_long = peak_after(200)
    assert bytes_short == bytes_long
    assert peak_long < 1.5 * peak_short + 50_000


def test_every_layer_of_a_multi_layer_run_is_analysed(example: Path, tmp_path: Path) -> None:
    run = planted_run(example, tmp_path / "run", patterns=["model.layers.*.mlp.down_proj"])
    analyze_run(run.run_dir, replace(OPTIONS, n_tokens=300))
    analysis = load_analysis(run.run_dir)
    names = [layer.name for layer in analysis.layers]
    assert names == [
        "model.embed_tokens",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.mlp.down_proj",
    ]
    down = analysis.layer("model.layers.1.mlp.down_proj")
    # down_proj writes into the residual stream: its write directions are scored on the vocabulary,
    # and these scores are the unembedding applied to each U row.
    model = ComponentModel.from_pretrained(run.run_dir)
    get_unembed = getattr(model.target, "get_output_embeddings", None)
    assert callable(get_unembed)
    unembed = get_unembed()
    assert isinstance(unembed, torch.nn.Linear)
    scores = model.components["model.layers.1.mlp.down_proj"].U @ unembed.weight.T
    top = scores.topk(3, dim=1)
    np.testing.assert_array_equal(down["write_token_ids"][:, :3], top.indices.numpy())
    assert "read_token_ids" not in down.arrays  # reads the MLP's hidden width, not the residual


def test_toy_run_gets_one_hot_ci_and_feature_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path))
    run = run_tiny_tms()
    analyze_run(run.path, PassOptions(n_tokens=5000, batch_size=500, show_progress=False))
    analysis = load_analysis(run.path)
    assert analysis.vocab == [f"f{i}" for i in range(5)] + ["(none)"]
    layer = analysis.layer("linear1")
    model = run.result.model
    with torch.no_grad():
        _, pre_acts = model.forward_with_pre_acts(torch.eye(5))
        ci, _ = model.causal_importances(pre_acts, "leaky_hard")
    np.testing.assert_allclose(layer["onehot_ci"], ci["linear1"].numpy(), atol=1e-6)
    token_count = np.array(analysis.meta["token_count"])
    assert token_count.sum() == analysis.meta["n_tokens"] == 5000
    # At feature probability 0.05 most examples have no active feature.
    assert token_count[-1] > token_count[:-1].max()
    precision = layer["token_precision"][layer["token_fires"] > 0]
    assert ((precision > 0) & (precision <= 1)).all()
    # The browser page carries the toy's one-hot CI and feature vectors.
    html = write_browser(run.path).read_text()
    payload = json.loads(html.split('type="application/json">')[1].split("</script>")[0])
    (linear1,) = [lay for lay in payload["layers"] if lay["name"] == "linear1"]
    assert len(linear1["onehot"]) == len(linear1["readVec"]) == layer.C
    top_feature, top_ci = linear1["onehot"][0][0]
    assert top_ci == pytest.approx(float(layer["onehot_ci"][:, 0].max()), abs=1e-3)
    assert layer["onehot_ci"][top_feature, 0] == pytest.approx(top_ci, abs=1e-3)


def test_cli_reports_a_bad_run_directory_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spd.analysis.cli", str(tmp_path), "--no-progress"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"spd: error: {tmp_path} is not a run directory (no final_config.yaml)"
    )
