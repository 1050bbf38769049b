"""What a new user trips on (issue 30): hints that fit, references that say enough, logs that stay
small. Each test here failed on the code before the issue was fixed."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from matplotlib.axis import Axis

from spd.errors import SPDUserError
from spd.eval.context import EvalContext
from spd.experiments.registry import EXPERIMENT_REGISTRY, describe_experiments
from spd.loading.targets import load_target_model
from spd.scripts import config_cli
from spd.train.progress import progress_bar
from tests.paths import REPO_ROOT
from tests.test_original_configs import _original_tms_target
from tests.tiny_runs import tiny_tms_config

ORIGINAL_TMS_5_2 = REPO_ROOT / "tests" / "fixtures" / "original_tms_5-2_config.yaml"
SCRIPTS = Path(sys.executable).parent
QUICK = ["steps=4", "batch_size=32", "eval_batch_size=32", "eval_freq=4", "figures=[]"]


def _offline(tmp_path: Path, *args: str | Path) -> "subprocess.CompletedProcess[str]":
    """A command as a user without W&B credentials or network runs it (empty download cache)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env |= {
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
        "SPD_CACHE_DIR": str(tmp_path / "cache"),
        "SPD_OUT_DIR": str(tmp_path / "out"),
        "NETRC": str(tmp_path / "no-netrc"),
        "HOME": str(tmp_path),
    }
    return subprocess.run(
        [str(a) for a in args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_an_original_config_with_a_wandb_target_upgrades_offline(tmp_path: Path) -> None:
    result = _offline(tmp_path, SCRIPTS / "spd-config", "upgrade", ORIGINAL_TMS_5_2)
    assert result.returncode == 0, result.stderr
    upgraded = yaml.safe_load(result.stdout)
    assert upgraded["pretrained_model_path"] == "wandb:spd-original/spd-tms/runs/tms5x2"
    assert "tied_weights" not in upgraded  # decided from the target once it is fetched
    assert [m["name"] for m in upgraded["metrics"]] == ["ci_l0", "identity_ci_error"]
    assert "is not fetched to translate the config" in result.stderr


def test_upgrade_target_points_an_original_config_at_a_local_copy(tmp_path: Path) -> None:
    weights = _original_tms_target(tmp_path / "copy", tied=True)
    result = _offline(
        tmp_path, SCRIPTS / "spd-config", "upgrade", ORIGINAL_TMS_5_2, "--target", weights.parent
    )
    assert result.returncode == 0, result.stderr
    upgraded = yaml.safe_load(result.stdout)
    assert upgraded["pretrained_model_path"] == str(weights.parent)
    assert upgraded["tied_weights"] == [["linear1", "linear2"]]


def test_a_wandb_target_that_cannot_be_fetched_is_one_line_naming_the_keys(tmp_path: Path) -> None:
    result = _offline(tmp_path, SCRIPTS / "spd-run", "--config", ORIGINAL_TMS_5_2, "--local")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith("spd: warning")]
    assert len(errors) == 1, result.stderr
    assert "cannot read W&B run spd-original/spd-tms/tms5x2" in errors[0]
    assert "WANDB_API_KEY" in errors[0] and "--override pretrained_model_path=" in errors[0]
    assert not (tmp_path / "out").exists()


def test_the_original_tms_5_2_config_decomposes_offline_from_a_local_target(
    tmp_path: Path,
) -> None:
    weights = _original_tms_target(tmp_path / "copy", tied=True)
    overrides = [f"pretrained_model_path={weights.parent}", *QUICK]
    result = _offline(
        tmp_path,
        SCRIPTS / "spd-run",
        "--config",
        ORIGINAL_TMS_5_2,
        "--local",
        "--no-progress",
        *(arg for override in overrides for arg in ("--override", override)),
    )
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "out").glob("*/*-original_tms_5-2_config")
    final = yaml.safe_load((run_dir / "final_config.yaml").read_text())
    assert final["tied_weights"] == [["linear1", "linear2"]]  # from the target's training config
    assert final["C"] == 20 and final["steps"] == 4
    assert (run_dir / "summary.json").is_file()


def test_progress_off_a_terminal_is_whole_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """pytest's captured stderr is no terminal: a bar would redraw itself with carriage returns."""
    total = sum(step for step in progress_bar(range(5000), True, desc="spd"))
    assert total == sum(range(5000))
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    # A line when it starts and one at the end; the interval (30 s) leaves none in between here.
    assert lines[0].startswith("spd:   0%") and lines[-1].startswith("spd: 100%")
    assert "5000/5000" in lines[-1] and len(lines) == 2


def test_hidden_progress_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(progress_bar(range(3), False, desc="spd")) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def _missing_target_line(path: str) -> str:
    with pytest.raises(SPDUserError) as raised:
        load_target_model(tiny_tms_config(pretrained_model_path=path))
    return str(raised.value)


def test_a_missing_target_of_your_own_is_trained_from_your_own_config() -> None:
    line = _missing_target_line("my_targets/tms_12-4")
    assert "target checkpoint not found: my_targets/tms_12-4" in line
    assert "train_tms.py YOUR_TRAIN_CONFIG.yaml --out my_targets/tms_12-4" in line
    assert "--experiment tms_5-2" not in line  # no shipped recipe makes a 12-feature target


def test_a_missing_target_named_after_a_recipe_is_trained_from_that_recipe(tmp_path: Path) -> None:
    line = _missing_target_line(str(tmp_path / "tms_40-10"))
    assert line.endswith(
        f"train it with: python spd/experiments/tms/train_tms.py --experiment tms_40-10 "
        f"--out {tmp_path}"
    )


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("metrics", ["- name: ci_l0", "params: {threshold: float = 0.1}", "layer: str (required)"]),
        ("figures", ["- name: permuted_ci", "- name: feature_vectors", "n_subcomponents: int = 8"]),
    ],
)
def test_fields_lists_every_metric_and_figure_with_its_parameters(
    block: str, expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    config_cli.main(["fields", block])
    out = capsys.readouterr().out
    for text in expected:
        assert text in out
    assert "name: str (required)" in out  # the {name, params} entry itself comes first


def test_spd_report_help_names_its_default_output() -> None:
    spd_report = Path(sys.executable).parent / "spd-report"
    result = subprocess.run(
        [str(spd_report), "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"},
    )
    assert "default: summary.html" in result.stdout


def test_spd_run_list_says_the_device_and_agrees_with_the_readme() -> None:
    lines = describe_experiments()
    assert "GPU" in lines[0] and "CPU" in lines[0]
    readme = (REPO_ROOT / "README.md").read_text()
    measured = re.search(r"`make run-tms` runs.*?measured: (\d+) min (\d+) s", readme, re.S)
    assert measured is not None
    minutes = math.ceil(int(measured[1]) + int(measured[2]) / 60)
    assert EXPERIMENT_REGISTRY["tms_5-2"].expected_runtime == minutes
    assert any(line.startswith("tms_5-2 ") and f"~{minutes} min" in line for line in lines)


def _tree_state(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_spd_run_dry_run_shows_every_run_and_the_slurm_script_and_writes_nothing(
    tmp_path: Path,
) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("global:\n  seed: {values: [3, 4]}\n")
    fake_bin = tmp_path / "bin"  # an sbatch that records being called: it must not be
    fake_bin.mkdir()
    (fake_bin / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/sbatch-called\n")
    (fake_bin / "sbatch").chmod(0o755)
    before = _tree_state(tmp_path)
    result = subprocess.run(
        [
            *(str(SCRIPTS / "spd-run"), "--experiments", "tms_5-2", "--sweep", str(sweep)),
            *("--n-agents", "2", "--dry-run", "--override", "C=17"),
        ],
        env={
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "OMP_NUM_THREADS": "1",
            "SPD_OUT_DIR": str(tmp_path / "out"),
            "SPD_SNAPSHOT_DIR": str(tmp_path / "snapshots"),
            "SPD_SLURM_LOG_DIR": str(tmp_path / "logs"),
            "PATH": f"{fake_bin}:{os.environ['PATH']}",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[0] tms_5-2-seed=3" in out and "[1] tms_5-2-seed=4" in out
    # Each run's config: the indented block after its "  config:" line.
    blocks = re.findall(r"^  config:\n((?:    .*\n)+)", out, re.M)
    configs = [yaml.safe_load(re.sub(r"^    ", "", b, flags=re.M)) for b in blocks]
    assert [c["seed"] for c in configs] == [3, 4] and {c["C"] for c in configs} == {17}
    assert out.count("memory: a training step needs about") == 2
    assert "#SBATCH --array=0-1%2" in out and "#SBATCH --gres=gpu:1" in out
    assert _tree_state(tmp_path) == before  # no launch dir, snapshot, log dir, or sbatch call


def test_an_invalid_run_fails_the_dry_run_as_it_fails_the_launch(tmp_path: Path) -> None:
    result = _offline(
        tmp_path, SCRIPTS / "spd-run", "--experiments", "tms_5-2", "--local", "--dry-run",
        "--override", "target_module_patterns=[nope]",
    )  # fmt: skip
    assert result.returncode == 2
    assert "run 'tms_5-2' is invalid, nothing was launched" in result.stderr
    assert "'nope'" in result.stderr


def test_script_dry_run_checks_the_run_prints_its_config_and_writes_nothing(
    tmp_path: Path,
) -> None:
    script = REPO_ROOT / "spd" / "experiments" / "decompose.py"
    config = REPO_ROOT / "spd" / "experiments" / "tms" / "tms_5_2_config.yaml"
    result = _offline(tmp_path, sys.executable, script, config, "--dry-run", "--override", "C=9")
    assert result.returncode == 0, result.stderr
    assert "estimated peak memory" in result.stdout
    printed = result.stdout.split("resolved config:\n")[1].split("spd: dry run: nothing")[0]
    assert yaml.safe_load(printed)["C"] == 9
    assert not (tmp_path / "out").exists()
    # A batch far too large for any machine fails the dry run as it fails the run.
    huge = _offline(
        tmp_path, sys.executable, script, config, "--dry-run",
        "--override", "batch_size=100000000000", "--override", "eval_batch_size=1000000000",
    )  # fmt: skip
    assert huge.returncode == 2 and "does not fit in memory" in huge.stderr
    assert not (tmp_path / "out").exists()


RESID_MLP2 = "spd/experiments/resid_mlp/targets/resid_mlp2"
STARTER_RESID = [
    *("starter", "--model-class", "spd.experiments.resid_mlp.models.ResidMLP"),
    *("--checkpoint", RESID_MLP2),
]


def test_starter_lists_the_decomposable_modules_with_kind_and_shape(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_cli.main(STARTER_RESID)
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:5]]
    # resid_mlp2: d_embed 1000, two layers of 25 neurons (README, 'Experiments').
    assert rows == [
        ["layers.0.mlp_in", "Linear", "1000", "x", "25"],
        ["layers.0.mlp_out", "Linear", "25", "x", "1000"],
        ["layers.1.mlp_in", "Linear", "1000", "x", "25"],
        ["layers.1.mlp_out", "Linear", "25", "x", "1000"],
    ]


def test_starter_config_for_chosen_patterns_loads_once_its_data_source_is_named(
    tmp_path: Path,
) -> None:
    out = tmp_path / "starter.yaml"
    config_cli.main([*STARTER_RESID, "--patterns", "layers.*.mlp_in", "--out", str(out)])
    text = out.read_text()
    assert "#   layers.1.mlp_in (Linear, 1000 x 25)" in text and "mlp_out (" not in text
    assert "# CI function" in text  # the values are explained where they stand
    data = yaml.safe_load(text)
    assert data["C"] == 4 * 25 and data["target_module_patterns"] == ["layers.*.mlp_in"]
    assert not any(m["name"] == "ground_truth_recovery" for m in data["metrics"])
    from spd.config.loading import load_config

    config = load_config(out, {"task_config.data_source": "mypkg.data:make_batches"})
    assert config.task_config.task_name == "generic"
    with pytest.raises(SPDUserError, match="'nope' matches no decomposable module"):
        config_cli.main([*STARTER_RESID, "--patterns", "nope"])


def test_starter_config_for_a_hugging_face_directory(tmp_path: Path) -> None:
    from spd.experiments.lm.make_offline_example import build_example
    from tests.tiny_lm import TINY

    build_example(tmp_path / "example", TINY, log=False)
    model_dir = str(tmp_path / "example" / "model")
    out = tmp_path / "lm.yaml"
    config_cli.main(
        ["starter", "--hf", model_dir, "--patterns", "model.layers.0.mlp.*", "--out", str(out)]
    )
    data = yaml.safe_load(out.read_text())
    assert data["pretrained_model_name_hf"] == model_dir
    assert data["task_config"]["task_name"] == "lm" and data["output_loss_type"] == "kl"
    # gate/up/down projections of the tiny Llama: 32 wide, 64 neurons.
    assert data["C"] == 4 * 32
    assert "#   model.layers.0.mlp.down_proj (Linear, 64 x 32)" in out.read_text()


def test_the_offline_lm_example_has_one_embedding_row_per_token(tmp_path: Path) -> None:
    from dataclasses import replace

    from transformers import AutoTokenizer, LlamaForCausalLM

    from spd.experiments.lm.make_offline_example import ExampleSpec, build_example

    # The registered example's corpus and tokenizer; 1 training step is enough for the shapes.
    info = build_example(tmp_path / "example", replace(ExampleSpec(), steps=1), log=False)
    model = LlamaForCausalLM.from_pretrained(tmp_path / "example" / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "example" / "model")
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Embedding)
    rows = embeddings.num_embeddings
    assert rows == len(tokenizer) == info.tokenizer_vocab_size
    readme = (REPO_ROOT / "README.md").read_text()
    stated = re.search(r"make_offline_example\.py +# stories, ([\d ]+)-token BPE tokenizer", readme)
    assert stated is not None and int(stated[1].replace(" ", "")) == rows
    assert f"{info.n_parameters / 1e6:.1f}M-parameter Llama" in readme


def _figure_context() -> EvalContext:
    from spd.experiments.tms.models import TMSModel
    from spd.models.component_model import build_component_model

    config = tiny_tms_config(C=30, tied_weights=None)
    target = TMSModel.from_pretrained(REPO_ROOT / "spd/experiments/tms/targets/tms_5-2")
    model = build_component_model(target, config)
    model.init_components_from_target(0)
    return EvalContext(model=model, config=config, inputs=[torch.rand(4, 5)], step=3)


def _tick_labels(axis: Axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


def test_feature_vectors_is_a_grid_not_a_strip() -> None:
    from spd.config.evaluators import registry

    figure = registry("figure")["feature_vectors"].fn(_figure_context(), layer="linear1")
    [fig] = figure.values()
    width, height = fig.get_size_inches()
    assert width / height <= 1.5  # target + 8 subcomponents: 3 x 3, not one row of 9
    assert len(fig.axes) == 9


def test_uv_and_permuted_ci_label_integer_subcomponent_indices() -> None:
    from spd.config.evaluators import registry
    from spd.eval.context import diagonal_permutation

    ctx = _figure_context()
    order = diagonal_permutation(ctx.one_hot_ci(1.0)["linear1"])
    uv = registry("figure")["uv_matrices"].fn(ctx, max_components=12)["uv_matrices"]
    v_axes, u_axes = uv.axes[0], uv.axes[2]  # each heatmap is followed by its colorbar
    assert _tick_labels(v_axes.xaxis) == [str(c) for c in order[:12]]
    assert _tick_labels(u_axes.yaxis) == [str(c) for c in order[:12]]
    assert _tick_labels(v_axes.yaxis) == ["0", "1", "2", "3", "4"]  # d_in rows, no 0.5 steps
    permuted = registry("figure")["permuted_ci"].fn(ctx)["permuted_ci"]
    title = permuted.axes[0].get_title()
    # 5 features: 10 of the 30 subcomponents shown, the other 20 named as hidden.
    assert title.startswith("linear1: 10 of 30 (20 hidden, max CI ")
    assert _tick_labels(permuted.axes[0].xaxis) == [str(c) for c in order[:10]]
    assert "(value 1)," in permuted.texts[0].get_text()  # TMS: full one-hot features, as docs say
