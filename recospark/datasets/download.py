"""Where the MovieLens files come from: a local folder, a local zip, or GroupLens (once, cached).

Downloads are verified against the MD5 that GroupLens publishes beside each archive (pinned
here for the frozen releases; fetched from `<url>.md5` for ml-32m and the ever-changing
ml-latest*), and extracted safely: no entry may escape the target folder, no symlinks, and the
bytes actually written are bounded by `data.max_extract_bytes` (zip headers can lie).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import stat
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path, PurePosixPath

from recospark.config import DataConf
from recospark.errors import SourceError

log = logging.getLogger(__name__)

BASE_URL = "https://files.grouplens.org/datasets/movielens"
# MD5s as published by GroupLens (<name>.zip.md5); None: fetched at download time.
MOVIELENS_MD5: dict[str, str | None] = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-10m": "ce571fd55effeba0271552578f2648bd",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
    "ml-32m": None,
    "ml-latest-small": None,
    "ml-latest": None,
}
RATINGS_FILES = ("u.data", "ratings.dat", "ratings.csv")
_COMPLETE = ".recospark-complete"
_CHUNK = 1 << 20


def _hint() -> str:
    return "set data.source to a local MovieLens folder, e.g. --set data.source=../shared/data/ml-100k"


def resolve_source(data: DataConf, base_url: str = BASE_URL) -> str:
    """The folder holding the ratings file, downloading and extracting a named release if needed."""
    source = data.source
    if source in MOVIELENS_MD5:
        return str(_cached_release(source, data, base_url))
    if "://" in source and not source.startswith("file:"):
        return source.rstrip("/")
    path = Path(source.removeprefix("file://").removeprefix("file:")).expanduser()
    if not path.exists():
        known = ", ".join(MOVIELENS_MD5)
        raise SourceError(f"data.source {source!r} does not exist: set it to a folder with MovieLens files or to one of {known}")
    if path.is_file() and zipfile.is_zipfile(path):
        return str(_extracted_zip(path, data))
    if not path.is_dir():
        raise SourceError(f"data.source {source!r} is neither a folder nor a zip archive")
    return str(_data_folder(path, source))


def _data_folder(root: Path, source: str) -> Path:
    """The folder with a ratings file: `root` itself or its single MovieLens subfolder.

    With none, `root` is returned and layout detection names the files it found instead.
    """
    if any((root / name).is_file() for name in RATINGS_FILES):
        return root.resolve()
    found = sorted({p.parent for name in RATINGS_FILES for p in root.glob(f"*/{name}")})
    if len(found) == 1:
        return found[0].resolve()
    if not found:
        return root.resolve()
    raise SourceError(f"data.source {source!r} holds several MovieLens folders ({', '.join(p.name for p in found)}): point it at one")


def _cached_release(name: str, data: DataConf, base_url: str) -> Path:
    cache = Path(data.cache_dir).expanduser()
    target = cache / name
    if (target / _COMPLETE).is_file():
        return _data_folder(target, name)
    if not data.download:
        raise SourceError(f"data.source={name} is not in the cache ({target}) and data.download is false: {_hint()}")
    cache.mkdir(parents=True, exist_ok=True)
    url = f"{base_url}/{name}.zip"
    archive = cache / f"{name}.zip"
    part = cache / f".{name}.zip.{uuid.uuid4().hex[:8]}.part"
    try:
        digest = _fetch(url, part)
        expected = MOVIELENS_MD5[name] or _published_md5(url)
        if digest != expected:
            raise SourceError(f"checksum mismatch for {url}: md5 {digest}, expected {expected}; the download was discarded")
        part.replace(archive)
    finally:
        part.unlink(missing_ok=True)
    _extract_into(archive, target, data.max_extract_bytes)
    return _data_folder(target, name)


def _fetch(url: str, dest: Path) -> str:
    log.info("downloading %s", url)
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=30) as response, dest.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, next_report = 0, 0.1
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                md5.update(chunk)
                done += len(chunk)
                if total and done / total >= next_report:
                    log.info("downloaded %d%% of %s (%.1f MB)", int(100 * done / total), url, done / 1e6)
                    next_report += 0.1
    except (urllib.error.URLError, OSError) as err:
        raise SourceError(f"cannot download {url} ({err}): {_hint()}") from None
    return md5.hexdigest()


def _published_md5(url: str) -> str:
    try:
        with urllib.request.urlopen(url + ".md5", timeout=30) as response:
            text = response.read(4096).decode("ascii", "replace")
    except (urllib.error.URLError, OSError) as err:
        raise SourceError(f"cannot fetch the checksum {url}.md5 ({err}): {_hint()}") from None
    token = next((t for t in text.split() if len(t) == 32 and all(c in "0123456789abcdef" for c in t.lower())), None)
    if token is None:
        raise SourceError(f"{url}.md5 holds no MD5 checksum")
    return token.lower()


def _extracted_zip(path: Path, data: DataConf) -> Path:
    md5 = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
    target = Path(data.cache_dir).expanduser() / f"{path.stem}-{md5.hexdigest()[:12]}"
    if not (target / _COMPLETE).is_file():
        _extract_into(path, target, data.max_extract_bytes)
    return _data_folder(target, str(path))


def _extract_into(archive: Path, target: Path, max_bytes: int) -> None:
    """Extract next to the target, then rename: a crash never leaves a half-extracted cache."""
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.extract")
    try:
        safe_extract(archive, staging, max_bytes)
        (staging / _COMPLETE).write_text(archive.name + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def safe_extract(archive: Path, dest: Path, max_bytes: int) -> int:
    """Extract `archive` into `dest`; refuse escaping paths, links and more than `max_bytes`."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = PurePosixPath(info.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
                raise SourceError(f"{archive}: entry {info.filename!r} escapes the target folder; refusing to extract")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise SourceError(f"{archive}: entry {info.filename!r} is a symbolic link; refusing to extract")
            out = (root / Path(*name.parts)).resolve() if name.parts else root
            if out != root and root not in out.parents:
                raise SourceError(f"{archive}: entry {info.filename!r} escapes the target folder; refusing to extract")
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, out.open("wb") as dst:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise SourceError(f"{archive} expands to more than data.max_extract_bytes={max_bytes}; refusing to extract")
                    dst.write(chunk)
    return written
