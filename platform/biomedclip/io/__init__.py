"""The one storage layer: local paths, `s3://` (any S3-compatible endpoint) and any other pyarrow filesystem URI,
with one credential policy. Extraction, training, checkpoints, evaluation and Serve all reach storage through it.

- `filesystem(uri)` -> (pyarrow filesystem, path): what Ray Data, Ray Train and pyarrow readers take.
- `SourceTree`: read-only keyed access to an input tree (the PMC corpus), refusing keys that climb out of it.
- `OutputStore`: atomic whole-file writes under an output root.
- `transfer`: whole directories to and from a location (`staged_dir` for writers that need a local folder,
  `local_copy` for readers that do: a verified per-node cache of a remote directory).

Credentials: anonymous only where asked for (the public PMC bucket); otherwise signed from the usual AWS sources.
Static keys found where the job starts (environment, credential files) travel with the pickled filesystem to Ray
workers, whose environment was fixed when their node started; role-based credentials are resolved (and refreshed) by
each process itself. Endpoint: the one a config names, else the standard `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`.
"""
from biomedclip.io.filesystems import absolute, filesystem, is_local, s3_endpoint, static_credentials, storage_location
from biomedclip.io.output import OutputStore
from biomedclip.io.transfer import download_dir, local_copy, staged_dir, upload_dir
from biomedclip.io.trees import SourceTree, safe_key

__all__ = ["OutputStore", "SourceTree", "absolute", "download_dir", "filesystem", "is_local", "local_copy",
           "s3_endpoint", "safe_key", "staged_dir", "static_credentials", "storage_location", "upload_dir"]
