"""Every kind of file spd reads, planted with a payload that would run code: nothing runs.

The torch files hold a pickle whose `__reduce__` creates a marker file when unpickled; the NumPy
arrays an object array with the same pickle inside; the YAML files a `!!python/object/apply`
tag that would create it. Each reader must refuse the file with one `SPDUserError` line, and the
marker must not exist afterwards.
"""

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config

from spd.analysis.accumulators import AccumulatorSettings, AnalysisAccumulator
from spd.analysis.pass_loop import restore_state
from spd.analysis.store import FORMAT_VERSION, JSON_FILE, NPZ_FILE, load_analysis
from spd.config.loading import config_from_dict, load_config, parse_yaml_text
from spd.errors import SPDUserError, cli_exit_code
from spd.experiments.resid_mlp.models import ResidMLP
from spd.experiments.run_decomposition import parse_override
from spd.experiments.tms.models import TMSModel
from spd.launch.sweeps import load_sweep
from spd.loading.targets import load_target_model
from spd.models.component_model import ComponentModel
from spd.persistence.checkpoints import read_checkpoint
from spd.persistence.resume import find_resume_point
from spd.scripts import report as report_script
from tests.resumable_runs import TMS_CONFIG, tiny_config

EXPERIMENTS = Path(__file__).resolve().parent.parent / "spd" / "experiments"
MARKER = "payload_ran"


class Payload:
    """Unpickling this creates the file `path` (standing for any code an attacker chooses)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return open, (str(self.path), "w")


def plant_torch(path: Path, marker: Path, around: dict[str, object] | None = None) -> None:
    """A torch file at `path` whose content, inside `around` if given, is the payload."""
    content: object = Payload(marker) if around is None else {**around, "payload": Payload(marker)}
    torch.save(content, path)


def yaml_payload(marker: Path) -> str:
    return f"!!python/object/apply:builtins.open ['{marker}', 'w']\n"


def assert_refused(load: Callable[[], object], marker: Path) -> str:
    """`load()` raises one SPDUserError line and the payload did not run; returns the message."""
    with pytest.raises(SPDUserError) as raised:
        load()
    assert not marker.exists(), "the payload ran"
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_payload_in_the_analysis_state_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    state = tmp_path / "state.pt"
    plant_torch(state, marker, {"source": {}, "accumulator": {}})
    settings = AccumulatorSettings(
        threshold=0.1, top_k=2, n_random=2, context_before=1, context_after=1, n_bins=4
    )
    acc = AnalysisAccumulator({"layer": 3}, 5, settings, torch.device("cpu"))
    message = assert_refused(lambda: restore_state(acc, state, {}), marker)
    assert "--fresh" in message


def test_payload_in_a_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(TMS_CONFIG, run_dir / "final_config.yaml")
    checkpoint = run_dir / "checkpoints" / "model_00000010.pth"
    plant_torch(checkpoint, marker, {"step": 10, "config": {}, "decomposition": {}})
    assert_refused(lambda: read_checkpoint(checkpoint), marker)
    assert_refused(lambda: ComponentModel.from_pretrained(run_dir), marker)
    assert_refused(lambda: find_resume_point(run_dir, tiny_config(steps=20)), marker)


@pytest.mark.parametrize(
    ("model_class", "target"),
    [(TMSModel, "tms/targets/tms_5-2"), (ResidMLP, "resid_mlp/targets/resid_mlp1")],
)
def test_payload_in_target_weights_is_refused(
    tmp_path: Path, model_class: type[TMSModel] | type[ResidMLP], target: str
) -> None:
    marker = tmp_path / MARKER
    directory = tmp_path / "target"
    shutil.copytree(EXPERIMENTS / target, directory)
    plant_torch(directory / "model.pth", marker)
    assert_refused(lambda: model_class.from_pretrained(directory), marker)
    # The original implementation's layout (`tms.pth` + `tms_train_config.yaml`) too.
    original = tmp_path / "original"
    original.mkdir()
    name = "tms" if model_class is TMSModel else "resid_mlp"
    plant_torch(original / f"{name}.pth", marker)
    (original / f"{name}_train_config.yaml").write_text(
        f"{name}_model_config: {{n_features: 5, n_hidden: 2, d_embed: 8, d_mlp: 4, n_layers: 1}}\n"
    )
    assert_refused(lambda: model_class.from_pretrained(original), marker)


def test_object_array_in_the_analysis_arrays_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    directory = tmp_path / "analysis"
    directory.mkdir()
    (directory / JSON_FILE).write_text(
        json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "vocab": ["a"],
                "layers": [{"name": "l", "C": 1, "arrays": ["x"]}],
            }
        )
    )
    # np.savez would refuse to write an object array without pickling it: write one by hand.
    array = np.empty(1, dtype=object)
    array[0] = Payload(marker)
    with zipfile.ZipFile(directory / NPZ_FILE, "w") as archive, archive.open("0/x.npy", "w") as f:
        np.lib.format.write_array(f, array, allow_pickle=True)
    assert not marker.exists()
    assert_refused(lambda: load_analysis(directory), marker)


def test_python_tags_in_every_yaml_file_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    config = tmp_path / "config.yaml"
    config.write_text(f"C: {yaml_payload(marker)}")
    assert_refused(lambda: load_config(config), marker)
    assert_refused(lambda: parse_yaml_text(yaml_payload(marker), "text"), marker)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"global:\n  seed: {yaml_payload(marker)}")
    assert_refused(lambda: load_sweep(sweep, ["tms_5-2"]), marker)
    assert_refused(lambda: parse_override(f"seed={yaml_payload(marker).strip()}"), marker)
    target = tmp_path / "target"
    shutil.copytree(EXPERIMENTS / "tms" / "targets" / "tms_5-2", target)
    (target / "train_config.yaml").write_text(f"model: {yaml_payload(marker)}")
    assert_refused(lambda: TMSModel.from_pretrained(target), marker)


def test_python_tag_in_a_run_config_does_not_run_in_spd_report(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "final_config.yaml").write_text(yaml_payload(marker))
    (run_dir / "metrics.jsonl").write_text('{"step": 0, "train/loss": 1.0}\n')
    code, stderr = cli_exit_code(
        lambda: report_script.main([str(run_dir), "--out", str(tmp_path / "s.html")])
    )
    assert not marker.exists(), "the payload ran"
    assert code == 0, stderr
    assert "config is left out" in stderr


def test_pickle_is_never_the_reader() -> None:
    """No module of spd or scripts/ calls a loader that can run code (the mechanism, checked)."""
    root = Path(__file__).resolve().parent.parent
    unsafe = (
        "weights_only=False",
        "pickle.load",
        "yaml.load(",
        "yaml.unsafe_load",
        "yaml.full_load",
        "allow_pickle=True",
        "yaml.Loader",
    )
    found = [
        f"{path.relative_to(root)}: {pattern}"
        for path in [*(root / "spd").rglob("*.py"), *(root / "scripts").rglob("*.py")]
        for pattern in unsafe
        if pattern in path.read_text()
    ]
    assert not found, found


def test_payload_in_a_language_model_checkpoint_is_refused(tmp_path: Path) -> None:
    """A transformers model directory whose pytorch_model.bin holds the payload."""
    marker = tmp_path / MARKER
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    gpt2 = GPT2Config(vocab_size=16, n_embd=8, n_layer=1, n_head=2, n_positions=8)
    (model_dir / "config.json").write_text(gpt2.to_json_string())
    plant_torch(
        model_dir / "pytorch_model.bin", marker, {"transformer.wte.weight": torch.zeros(16, 8)}
    )
    config = config_from_dict(
        {
            **{k: v for k, v in tiny_config().model_dump().items() if k != "pretrained_model_path"},
            "pretrained_model_class": "transformers.GPT2LMHeadModel",
            "pretrained_model_name_hf": str(model_dir),
            "target_module_patterns": ["transformer.h.0.mlp.c_fc"],
            "tied_weights": None,
            "task_config": {
                "task_name": "lm",
                "dataset_name": str(tmp_path),
                "text_column": "text",
                "tokenizer_name": str(model_dir),
            },
        }
    )
    assert_refused(lambda: load_target_model(config), marker)
