"""`.env` files: where the W&B variables (`.env.example` lists them) may be kept instead of the shell."""

from pathlib import Path

from dotenv import find_dotenv, load_dotenv

# The directory holding the `spd` package (a checkout's root when installed in editable mode).
REPO_ROOT = Path(__file__).resolve().parents[2]


def load_env_files() -> None:
    """Read `.env` (working directory or a parent, then the repository root) into the environment.

    Variables that are already set are left alone.
    """
    found = find_dotenv(usecwd=True)
    if found:
        load_dotenv(found, override=False)
    repo_env = REPO_ROOT / ".env"
    if repo_env.is_file():
        load_dotenv(repo_env, override=False)
