"""SIGKILL at any moment while checkpoints are written leaves the newest checkpoint loadable."""

import random
import signal
import subprocess
import sys
from pathlib import Path

from spd.persistence.checkpoints import CHECKPOINT_GLOB, latest_checkpoint, read_checkpoint
from tests.resumable_runs import REPO, script_env

KEEP = 2
ROUNDS = 10
# A driver process (imports paid once) that, for every delay read from stdin, forks a saver
# writing real checkpoints of a tiny TMS decomposition as fast as it can, SIGKILLs it after that
# delay and reports. Each checkpoint carries a large extra entry so that most of the saver's time
# is spent inside the write a kill should interrupt.
DRIVER = f"""
import os, signal, sys, time
from pathlib import Path
import torch
sys.path.insert(0, {str(REPO / "tests")!r})
from tests.resumable_runs import tiny_config
from spd.persistence.checkpoints import latest_checkpoint, save_checkpoint
from spd.persistence.run_dir import RunDirectory
from spd.models.component_model import build_component_model
from spd.loading.targets import load_target_model

run_dir = RunDirectory(Path(sys.argv[1]))
config = tiny_config(keep_last_checkpoints={KEEP}, steps=10**9)
model = build_component_model(load_target_model(config), config)
model.init_components_from_target(0)
# One checkpoint before any kill, so there is always a previous one to keep.
save_checkpoint(run_dir, 1, model, config, {{"bulk": torch.full((4_000_000,), 1.0)}})
print("ready", flush=True)
for line in sys.stdin:
    step = int(latest_checkpoint(run_dir.path).stem.split("_")[1])
    pid = os.fork()
    if pid == 0:
        try:
            while True:
                step += 1
                bulk = torch.full((4_000_000,), float(step))
                save_checkpoint(run_dir, step, model, config, {{"bulk": bulk}})
        finally:
            os._exit(1)
    time.sleep(float(line))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1, flush=True)
"""


def test_sigkill_while_saving_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(checkpoints.parent)],
        env=script_env(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert driver.stdin is not None and driver.stdout is not None
    assert driver.stdout.readline().strip() == "ready"
    rng = random.Random(0)
    last_step = 1
    interrupted_writes = 0
    try:
        for _ in range(ROUNDS):
            driver.stdin.write(f"{rng.uniform(0.1, 0.6)}\n")
            driver.stdin.flush()
            assert driver.stdout.readline().strip() == str(int(signal.SIGKILL))

            interrupted_writes += bool(list(checkpoints.glob(".model_*.tmp")))
            found = sorted(checkpoints.glob(CHECKPOINT_GLOB))
            # A kill between the rename and the pruning leaves one more than KEEP.
            assert 1 <= len(found) <= KEEP + 1
            for path in found:
                data = read_checkpoint(path)
                step = int(path.stem.split("_")[1])
                assert data["step"] == step and float(data["bulk"][-1]) == step
            newest = int(latest_checkpoint(checkpoints.parent).stem.split("_")[1])
            assert newest >= last_step, "a kill lost a completed checkpoint"
            last_step = newest
    finally:
        driver.stdin.close()
        driver.wait(timeout=60)
    # Otherwise the savers wrote nothing, or no kill hit a write, and the test proved nothing.
    assert last_step > 1
    assert interrupted_writes >= 2
