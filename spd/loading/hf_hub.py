"""The boundary to the Hugging Face hub: can a named model, tokenizer or dataset be had here?

Loading a hub id with no connection makes `transformers` and `datasets` retry for about a
minute and then fail deep inside the library. Instead, every hub id a run needs is checked
before anything is loaded (`require_hub_resources`), and all that are unavailable are reported
in one `SPDUserError` that says how to use a local copy. A load that still fails (a repository
that does not exist, a file missing from the cache) is reported the same way (`fetch_guard`).

A name that is an existing local path never touches the hub and is not checked here.
"""

import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import huggingface_hub
from huggingface_hub import constants as hub_constants

from spd.errors import SPDUserError

ResourceKind = Literal["model", "tokenizer", "dataset"]

PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HubResource:
    """One thing a run fetches from the hub: its kind, hub id and the config key that names it."""

    kind: ResourceKind
    name: str
    config_key: str

    def describe(self) -> str:
        return f"{self.kind} '{self.name}' ({self.config_key})"


def is_offline() -> bool:
    """Whether the hub libraries run in offline mode (HF_HUB_OFFLINE=1, read when they start)."""
    return hub_constants.HF_HUB_OFFLINE


@cache
def hub_reachable(endpoint: str | None = None) -> bool:
    """Whether a TCP connection to the hub endpoint (HF_ENDPOINT) opens within a few seconds."""
    url = urlsplit(endpoint or hub_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def in_local_cache(resource: HubResource) -> bool:
    """Whether the hub cache (HF_HOME) holds a snapshot of the resource's repository.

    A dataset also counts as cached when the `datasets` library's own cache has an entry for it
    (its directory name is the id with '/' written as '___').
    """
    repo_type = "dataset" if resource.kind == "dataset" else "model"
    try:
        huggingface_hub.snapshot_download(resource.name, repo_type=repo_type, local_files_only=True)
        return True
    except (OSError, ValueError):
        pass
    if resource.kind == "dataset":
        import datasets.config  # here, not at the top: only dataset checks need the library

        return (
            Path(datasets.config.HF_DATASETS_CACHE) / resource.name.replace("/", "___")
        ).exists()
    return False


def unavailable_error(resources: Sequence[HubResource], reason: str) -> SPDUserError:
    """The one message for hub resources that cannot be fetched, with how to use local copies."""
    names = "; ".join(r.describe() for r in resources)
    return SPDUserError(
        f"cannot fetch from the Hugging Face hub ({reason}): {names}. Use local copies: download "
        "each where there is network (`hf download <id> --local-dir <dir>`, adding "
        "`--repo-type dataset` for a dataset) and set its config key to that directory, or fill "
        "the Hugging Face cache (HF_HOME) there and run here with HF_HUB_OFFLINE=1"
    )


def require_hub_resources(resources: Sequence[HubResource]) -> None:
    """Raise one `SPDUserError` naming every resource that cannot be fetched or found in the cache.

    Offline mode: each must be in the local cache. Online: the hub must answer; when it does
    not, resources that are cached are named with the hint to switch to offline mode (the
    libraries would otherwise retry the network for a minute before using the cache).
    """
    if not resources:
        return
    if is_offline():
        missing = [r for r in resources if not in_local_cache(r)]
        if missing:
            raise unavailable_error(missing, "HF_HUB_OFFLINE is set and they are not in the cache")
        return
    if hub_reachable(hub_constants.ENDPOINT):
        return
    cached = [r for r in resources if in_local_cache(r)]
    reason = f"{hub_constants.ENDPOINT} cannot be reached"
    if len(cached) == len(resources):
        reason += "; all of them are in the local cache, so HF_HUB_OFFLINE=1 alone will do"
    elif cached:
        reason += f"; in the local cache already: {', '.join(r.name for r in cached)}"
    raise unavailable_error(list(resources), reason)


def is_local(name: str) -> bool:
    """Whether `name` is an existing local path (then it is loaded from disk, never the hub)."""
    return Path(name).expanduser().exists()


@contextmanager
def fetch_guard(kind: ResourceKind, name: str, config_key: str) -> Iterator[None]:
    """Around a library load of `name`: for a hub id, check the hub first and turn a failed fetch
    (an `OSError` of the hub libraries) into the one-line `SPDUserError`. A local path passes
    through untouched."""
    if is_local(name):
        yield
        return
    resource = HubResource(kind, name, config_key)
    require_hub_resources([resource])
    try:
        yield
    except OSError as err:
        text = str(err).strip()
        raise unavailable_error(
            [resource], text.splitlines()[0] if text else type(err).__name__
        ) from None
