"""Download, checksum and safe extraction, against a loopback HTTP server (no other traffic)."""

from __future__ import annotations

import hashlib
import http.server
import stat
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

from recospark.config import load_config
from recospark.datasets import download
from recospark.errors import SourceError, resolve_source, safe_extract


def make_zip(path: Path, entries: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "ml-100k/../../evil.txt"])
def test_extract_refuses_escaping_entries(tmp_path, name):
    archive = make_zip(tmp_path / "a.zip", {"ml-100k/u.data": b"1\t1\t5\t1\n", name: b"x"})
    with pytest.raises(SourceError, match="escapes the target folder"):
        safe_extract(archive, tmp_path / "out", max_bytes=1 << 20)
    assert not (tmp_path / "evil.txt").exists()


def test_extract_refuses_symlinks_and_bombs(tmp_path):
    with pytest.raises(SourceError, match="symbolic link"):
        safe_extract(make_zip(tmp_path / "l.zip", {"a": b"x"}, symlink="link"), tmp_path / "o1", 1 << 20)
    bomb = make_zip(tmp_path / "b.zip", {"big": b"0" * 5000})
    with pytest.raises(SourceError, match="max_extract_bytes=4096"):
        safe_extract(bomb, tmp_path / "o2", 4096)
    assert safe_extract(bomb, tmp_path / "o3", 5000) == 5000


def test_local_zip_source_is_extracted_once(tmp_path):
    archive = make_zip(tmp_path / "ml-100k.zip", {"ml-100k/u.data": b"1\t1\t5\t1\n", "ml-100k/u.item": b""})
    data = load_config(None, [f"data.source={archive}", f"data.cache_dir={tmp_path / 'cache'}"]).data
    folder = Path(resolve_source(data))
    assert folder.name == "ml-100k" and (folder / "u.data").read_bytes() == b"1\t1\t5\t1\n"
    assert resolve_source(data) == str(folder)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_verifies_checksum_and_caches(tmp_path, server, monkeypatch):
    root, url = server
    archive = make_zip(root / "ml-100k.zip", {"ml-100k/u.data": b"1\t1\t5\t1\n"})
    data = load_config(None, ["data.source=ml-100k", f"data.cache_dir={tmp_path / 'cache'}"]).data

    monkeypatch.setitem(download.MOVIELENS_MD5, "ml-100k", "0" * 32)
    with pytest.raises(SourceError, match="checksum mismatch"):
        resolve_source(data, base_url=url)
    assert not (tmp_path / "cache" / "ml-100k").exists()
    assert not list((tmp_path / "cache").glob("*.part"))

    monkeypatch.setitem(download.MOVIELENS_MD5, "ml-100k", hashlib.md5(archive.read_bytes()).hexdigest())
    folder = Path(resolve_source(data, base_url=url))
    assert (folder / "u.data").is_file()
    archive.unlink()  # cached now: no second download
    assert resolve_source(data, base_url=url) == str(folder)


def test_unpinned_release_uses_published_md5(tmp_path, server):
    root, url = server
    archive = make_zip(root / "ml-latest-small.zip", {"ml-latest-small/ratings.csv": b"userId,movieId,rating,timestamp\n"})
    (root / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {hashlib.md5(archive.read_bytes()).hexdigest()}\n")
    data = load_config(None, ["data.source=ml-latest-small", f"data.cache_dir={tmp_path / 'cache'}"]).data
    assert (Path(resolve_source(data, base_url=url)) / "ratings.csv").is_file()


def test_no_network_error_names_the_setting(tmp_path):
    data = load_config(None, ["data.source=ml-1m", f"data.cache_dir={tmp_path}"]).data
    with pytest.raises(SourceError, match=r"data\.source"):
        resolve_source(data, base_url="http://127.0.0.1:9")
