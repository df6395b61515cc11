"""The artifacts a replica reads (models, the VQA model): a local folder as it is, a URI (`s3://...`) through this
node's verified cache (`biomedclip.io.transfer.local_copy`), checked against the store again whenever a replica first
needs it, so a replica started by a rollout never serves a stale copy. No torch here: the ingress imports the error."""
from __future__ import annotations

from pathlib import Path

from biomedclip.io.transfer import local_copy


class ArtifactUnavailable(RuntimeError):
    """An artifact could not be copied here or loaded; the message names it and its location."""


def fetch_artifact(name: str, location: str) -> Path:
    """A local folder holding the artifact `name` (e.g. "model 'alpha'") found at `location`."""
    try:
        directory = local_copy(location, refresh=True)
    except (OSError, ValueError) as err:  # pyarrow's I/O errors are OSErrors; a malformed URI a ValueError
        raise ArtifactUnavailable(f"{name} at {location}: cannot copy it to this node ({err})") from err
    if not directory.is_dir():
        raise ArtifactUnavailable(f"{name} at {location}: no such directory")
    return directory
