"""Path helpers shared by config, io and datasets: pure string work, no Spark, no file access.

Output roots may be local folders or URIs (hdfs://, s3a://, file:); these helpers treat both
alike so no caller has to branch on the scheme.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["absolute_uri", "is_local", "join_path", "local_path"]


def join_path(root: str, *parts: str) -> str:
    """Join path parts for local paths and URIs (hdfs://, s3a://) alike.

    >>> join_path("hdfs://nn/out/", "models", "/als")
    'hdfs://nn/out/models/als'
    """
    return "/".join([root.rstrip("/")] + [p.strip("/") for p in parts if p])


def is_local(uri: str) -> bool:
    """True for plain paths and file: URIs."""
    return "://" not in uri or uri.startswith("file:")


def local_path(uri: str) -> Path:
    """The local Path of a plain path or a file: URI (user folder expanded)."""
    for prefix in ("file://", "file:"):
        if uri.startswith(prefix):
            return Path(uri[len(prefix) :]).expanduser()
    return Path(uri).expanduser()


def absolute_uri(uri: str) -> str:
    """A local path as an absolute file: URI with symlinks resolved; other URIs unchanged.

    >>> absolute_uri("hdfs://nn/out/ratings")
    'hdfs://nn/out/ratings'
    """
    if not is_local(uri):
        return uri
    return local_path(uri).resolve().as_uri()
