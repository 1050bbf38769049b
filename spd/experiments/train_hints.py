"""What to tell a user whose toy target checkpoint is missing: the command that creates it."""

from pathlib import Path

from spd.loading.env_files import REPO_ROOT


def train_hint(script: Path, recipes: Path, shipped_out: Path, missing: str) -> str:
    """How to create the missing target directory `missing` with the training `script`.

    A directory named after a shipped recipe is trained from that recipe (into `missing`'s
    folder, or the shipped one); any other is the user's own target, trained from their own
    training config into exactly that directory (docs/own_models.md, 'A toy target of any size').
    """
    shown = script.relative_to(REPO_ROOT) if script.is_relative_to(REPO_ROOT) else script
    path = Path(missing)
    names = sorted(p.stem for p in recipes.glob("*.yaml"))
    if path.name in names:
        shipped_place = (REPO_ROOT / path.parent).resolve() == shipped_out.resolve()
        out = "" if shipped_place else f" --out {path.parent}"
        return f"train it with: python {shown} --experiment {path.name}{out}"
    return (
        f"train it with: python {shown} YOUR_TRAIN_CONFIG.yaml --out {missing} (docs/own_models.md, "
        f"'A toy target of any size'), or a shipped recipe: python {shown} --experiment NAME "
        f"--out {path.parent} (NAME: {', '.join(names)}), then point pretrained_model_path at "
        f"{path.parent}/NAME"
    )
