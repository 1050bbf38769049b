"""The experiment registry: what a launcher needs for each experiment exists and is consistent."""

import pytest

from spd.config.loading import load_config
from spd.errors import SPDUserError
from spd.experiments.registry import EXPERIMENT_REGISTRY, get_experiment
from spd.launch.options import selected_experiments


@pytest.mark.parametrize("name", ["tms_5-2", "tms_5-2-id", "tms_40-10", "tms_40-10-id"])
def test_registered_tms_experiment_points_at_real_files(name: str) -> None:
    spec = get_experiment(name)
    assert spec.task_name == "tms" and spec.expected_runtime > 0
    assert spec.decomp_script.is_file() and spec.config_path.is_file()
    assert spec.target_train_script is not None and spec.target_train_script.is_file()
    assert load_config(spec.config_path).task_config.task_name == spec.task_name


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(SPDUserError) as info:
        get_experiment("tms_9-9")
    assert all(name in str(info.value) for name in EXPERIMENT_REGISTRY)


def test_experiment_selection() -> None:
    with pytest.raises(SPDUserError, match="choose what to run with --experiments") as info:
        selected_experiments(None)  # never "all of them": some need the network or take days
    assert all(name in str(info.value) for name in EXPERIMENT_REGISTRY)
    assert selected_experiments(" tms_5-2 ,tms_40-10") == ["tms_5-2", "tms_40-10"]
    with pytest.raises(SPDUserError, match="empty"):
        selected_experiments(" , ")


@pytest.mark.parametrize("name", list(EXPERIMENT_REGISTRY))
def test_network_needs_match_the_config(name: str) -> None:
    """`spd-run --list` says which experiments fetch from the hub: those naming a hub model."""
    spec = get_experiment(name)
    hub_model = load_config(spec.config_path).pretrained_model_name_hf
    assert spec.needs_network == (
        hub_model is not None and not hub_model.startswith(("lm_offline_example/", "pretrain/"))
    )
