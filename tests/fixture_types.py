"""Types of the shared fixtures in conftest.py, for annotating test parameters."""

from collections.abc import Callable

from spd.config.schema import Config
from spd.experiments.tms.models import TMSModel

ConfigFactory = Callable[..., Config]
TargetFactory = Callable[..., TMSModel]
