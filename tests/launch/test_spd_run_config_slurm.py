"""`spd-run --config` with a user's own module and data source, as a real SLURM job array."""

import re
from pathlib import Path

import torch
import yaml
from launch_helpers import spd_run, spd_run_env
from slurm_cluster import SlurmCluster

from tests.test_own_configs import QUICK, USER_PACKAGE


def test_a_users_config_runs_as_a_slurm_array_from_a_snapshot(
    slurm_cluster: SlurmCluster, spd_repo: Path, tmp_path: Path
) -> None:
    user = tmp_path / "user"
    (user / "userpkg").mkdir(parents=True)
    (user / "userpkg" / "__init__.py").write_text("")
    (user / "userpkg" / "models.py").write_text(USER_PACKAGE)
    namespace: dict[str, object] = {}
    exec(USER_PACKAGE, namespace)  # the user's class, to write its trained weights
    squeeze = namespace["Squeeze"]
    assert isinstance(squeeze, type)
    (user / "target").mkdir()
    torch.save(squeeze().state_dict(), user / "target" / "weights.pt")
    config = {
        **QUICK,
        "steps": 4,
        "save_freq": 2,
        "C": 6,
        "target_module_patterns": ["encode", "readout"],
        "pretrained_model_class": "userpkg.models.Squeeze",
        "pretrained_model_path": str(user / "target"),
        "task_config": {
            "task_name": "generic",
            "data_source": "userpkg.models:sparse_batches",
            "data_params": {"n_inputs": 4, "p": 0.3},
        },
    }
    config_path = user / "squeeze.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = spd_run_env(spd_repo, tmp_path, slurm_cluster)
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{user}"
    result = spd_run(
        spd_repo, env, "--config", str(config_path), "--cpu", "--job-suffix", "cfg",
        "--time-minutes", "7",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_id = re.search(r"submitted job array (\d+) \(1 task\(s\)", result.stdout)
    assert job_id, result.stdout
    slurm_cluster.wait_until_done(job_id.group(1), timeout=300)
    (launch_dir,) = (tmp_path / "out").iterdir()
    script = (launch_dir / "slurm_array.sh").read_text()
    assert "spd/experiments/decompose.py" in script and str(config_path) in script
    assert "#SBATCH --time=14\n" in script  # the expected 7 minutes with the launcher's margin
    (run_dir,) = [p for p in launch_dir.iterdir() if (p / "final_config.yaml").exists()]
    assert run_dir.name.endswith("squeeze")
    assert (run_dir / "checkpoints" / "model_00000004.pth").is_file()
    summary = yaml.safe_load((run_dir / "summary.json").read_text())
    assert {"ci_l0/encode", "ci_l0/readout"} <= set(summary)
