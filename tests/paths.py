"""Paths of the checkout under test, shared by the test modules."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TMS_DIR = REPO_ROOT / "spd" / "experiments" / "tms"
TMS_TARGETS = TMS_DIR / "targets"
TMS_5_2_CONFIG = TMS_DIR / "tms_5_2_config.yaml"
TMS_5_2_ID_CONFIG = TMS_DIR / "tms_5_2_id_config.yaml"
TMS_DECOMPOSITION = TMS_DIR / "tms_decomposition.py"
