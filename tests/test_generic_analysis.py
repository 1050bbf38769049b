"""`spd-analyze` and the app's graph and interventions on a `generic`-task run (a user's model
and data source, written into the test's directory)."""

from pathlib import Path

import pytest
import torch

from spd.analysis.analyze import PassOptions, analyze_run
from spd.analysis.sources import ANALYSIS_SEED
from spd.analysis.store import load_analysis
from spd.app.attribution import ci_masks, masked_output
from spd.app.runs import load_run
from spd.app.server import graph_json, intervention_json
from spd.config.loading import load_config
from spd.experiments.generic.data_source import source_batches
from spd.loading.targets import load_target_model
from spd.models.component_model import build_component_model
from spd.persistence.checkpoints import save_checkpoint
from spd.persistence.run_dir import CONFIG_FILE, RunDirectory, save_config
from tests.test_own_configs import _user_config, _user_package

N_EXAMPLES, BATCH = 640, 64


@pytest.fixture
def generic_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = load_config(_user_config(tmp_path, _user_package(tmp_path, monkeypatch)))
    model = build_component_model(load_target_model(config), config)
    model.init_components_from_target(0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(config, run_dir / CONFIG_FILE)
    save_checkpoint(RunDirectory(run_dir), 20, model, config)
    return run_dir


def test_a_generic_run_is_analysed_and_served(generic_run: Path) -> None:
    analyze_run(
        generic_run, PassOptions(n_tokens=N_EXAMPLES, batch_size=BATCH, show_progress=False)
    )
    analysis = load_analysis(generic_run)
    assert analysis.meta["kind"] == "inputs"
    assert analysis.vocab == ["f0", "f1", "f2", "f3", "(none)"]
    assert [layer.name for layer in analysis.layers] == ["encode", "readout"]

    # The fire counts by hand, over the same batches of the user's source.
    run = load_run(generic_run)
    config, model = run.config, run.model
    batches = source_batches(
        "userpkg.models:sparse_batches",
        BATCH,
        ANALYSIS_SEED + 1,
        {"n_inputs": 4, "p": 0.3},
        torch.device("cpu"),
    )
    fires = {name: torch.zeros(C, dtype=torch.long) for name, C in model.module_C.items()}
    for _ in range(N_EXAMPLES // BATCH):
        for name, ci in ci_masks(model, next(batches), config.sigmoid_type).items():
            fires[name] += (ci > config.ci_alive_threshold).sum(0)
    for layer in analysis.layers:
        assert layer["fire_count"].tolist() == fires[layer.name].tolist()

    graph = graph_json(run, {"prompt": "f0 f2=0.5", "threshold": 0.0})
    outputs = [n for n in graph["nodes"] if n["layer"] == 2]
    assert len(outputs) == 3 and graph["edges"]
    node = next(n for n in graph["nodes"] if n["layer"] == 0)
    result = intervention_json(
        run, {"prompt": "f0 f2=0.5", "nodes": [["encode", 0, node["index"]]], "mode": "ablate"}
    )
    x = torch.tensor([[1.0, 0.0, 0.5, 0.0]])
    masks = ci_masks(model, x, config.sigmoid_type)
    assert result["before"] == pytest.approx(masked_output(model, x, masks)[0].tolist())
    masks["encode"][0, node["index"]] = 0.0
    assert result["after"] == pytest.approx(masked_output(model, x, masks)[0].tolist())
