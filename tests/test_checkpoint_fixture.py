"""A checkpoint written before the package was split into stages still loads and computes the same.

`tests/fixtures/tms_5-2_step20_c5f8abb.pth` is the last checkpoint of the 20-step tms_5-2 run of
`tests/tiny_runs.py`, written by commit c5f8abb (the flat layout). Beside it are a fixed input and
what that code computed from the checkpoint (the CI and the masked components' output), and
the run's `metrics.jsonl`.

That code trained tied matrices as one parameter, so the checkpoint resumes under
`tied_weights_mode: single_parameter` and is refused, in one line, under today's default.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from spd.errors import SPDUserError
from spd.experiments.tms.task import make_data
from spd.loading.targets import load_target_model
from spd.models.component_model import ComponentModel
from spd.persistence.run_dir import RunDirectory, read_metrics
from spd.train.data_shard import data_shard
from spd.train.optimize import optimize
from tests.paths import REPO_ROOT
from tests.tiny_runs import tiny_tms_config

FIXTURES = REPO_ROOT / "tests" / "fixtures"
CHECKPOINT = FIXTURES / "tms_5-2_step20_c5f8abb.pth"
EXPECTED = FIXTURES / "tms_5-2_step20_c5f8abb_expected.pt"
OLD_METRICS = FIXTURES / "tms_5-2_step20_c5f8abb_metrics.jsonl"


def test_a_checkpoint_from_before_the_move_loads_and_gives_the_same_outputs() -> None:
    model = ComponentModel.from_pretrained(CHECKPOINT)
    expected = torch.load(EXPECTED, weights_only=True)
    with torch.no_grad():
        _, pre_acts = model.forward_with_pre_acts(expected["x"])
        ci, ci_upper = model.causal_importances(pre_acts, "leaky_hard")
        out = model.forward_with_components(expected["x"], ci)
    # The expected values were computed on another CPU, whose float kernels may round a sum
    # differently (3.6e-7 seen here); a loading mistake moves them by orders of magnitude more.
    for name in expected["ci"]:
        torch.testing.assert_close(ci[name], expected["ci"][name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ci_upper[name], expected["ci_upper"][name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, expected["component_out"], rtol=1e-5, atol=1e-6)


def test_the_run_resumes_from_it_and_logs_what_the_old_code_logged(tmp_path: Path) -> None:
    """Step 20 is the run's last: resuming logs and evaluates it from the restored state alone
    (model, RNG, data streams, alive tracker), so its rows must equal the old run's
    (to rounding; see below for the stochastic terms)."""
    config = tiny_tms_config(tied_weights_mode="single_parameter")
    checkpoint = shutil.copy(CHECKPOINT, tmp_path / "model_00000020.pth")
    target = load_target_model(config)
    train, evaluation = make_data(config, target, torch.device("cpu"), data_shard(config))
    run_dir = RunDirectory.create(tmp_path, "resumed")
    optimize(
        target,
        config,
        torch.device("cpu"),
        train,
        evaluation,
        run_dir,
        show_progress=False,
        resume_from=Path(checkpoint),
    )
    # The run's `final/` row came from the decomposition script, not from `optimize`.
    old = [json.loads(line) for line in OLD_METRICS.read_text().splitlines()]
    old = [row for row in old if not any(key.startswith("final/") for key in row)]
    new_rows = [row for row in read_metrics(run_dir.path) if row["step"] == 20]
    old_rows = [row for row in old if row["step"] == 20]
    assert [row.keys() for row in new_rows] == [row.keys() for row in old_rows]
    # Since the speed work of #12 the CI is laid out row-major, which reorders a few sums (so
    # equal to rounding, not bitwise) and changes which uniform draw lands on which mask entry
    # (`rand_like` followed the memory layout): the stochastic terms, the total that holds them
    # and the gradient norm are a different but equally distributed draw.
    for new_row, old_row in zip(new_rows, old_rows, strict=True):
        drawn = ("train/loss/total", "train/grad_norm")
        same = {k: v for k, v in old_row.items() if "stochastic" not in k and k not in drawn}
        assert {k: new_row[k] for k in same} == pytest.approx(same, rel=1e-5, abs=1e-8)


def test_resuming_it_under_the_shared_storage_tie_is_refused_by_name(tmp_path: Path) -> None:
    # Its optimiser state holds one moment per tied factor; the shared-storage form needs two.
    config = tiny_tms_config()
    assert config.tied_weights_mode == "shared_storage"
    target = load_target_model(config)
    train, evaluation = make_data(config, target, torch.device("cpu"), data_shard(config))
    with pytest.raises(SPDUserError) as err:
        optimize(
            target,
            config,
            torch.device("cpu"),
            train,
            evaluation,
            RunDirectory.create(tmp_path, "resumed"),
            show_progress=False,
            resume_from=CHECKPOINT,
        )
    message = str(err.value)
    assert "\n" not in message
    assert "tied_weights_mode ('single_parameter' -> 'shared_storage')" in message
