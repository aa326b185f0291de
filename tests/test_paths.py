from pathlib import Path

import pytest

from qpolicy.errors import WeightsError
from qpolicy.paths import datasets_dir, download, home_dir, models_dir


def test_home_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("QPOLICY_HOME", str(tmp_path / "h"))
    assert home_dir() == tmp_path / "h"
    assert models_dir() == tmp_path / "h" / "models" and datasets_dir() == tmp_path / "h" / "datasets"
    assert models_dir(tmp_path / "flag") == tmp_path / "flag"  # the flag wins
    monkeypatch.setenv("QPOLICY_HOME", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert home_dir() == tmp_path / "xdg" / "qpolicy"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert home_dir() == Path.home() / ".cache" / "qpolicy"


def test_download_checks_hash_and_leaves_nothing_on_failure(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello")
    dest = tmp_path / "out" / "f-2cf24dba.bin"
    download(src.as_uri(), dest, sha256_prefix="2cf24dba")  # sha256("hello") starts with 2cf24dba
    assert dest.read_bytes() == b"hello"
    with pytest.raises(WeightsError, match="expected prefix"):
        download(src.as_uri(), tmp_path / "out" / "g.bin", sha256_prefix="deadbeef")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f-2cf24dba.bin"]
