"""The data-fetch helper of `make bench-noisy` (Fashion-MNIST from the Debian package)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from losslab.lab.data.fetch import (
    FetchError,
    ensure_fashion_mnist,
    fetch_fashion_mnist_deb,
    find_fashion_mnist,
)
from tests.lab.conftest import write_fmnist as _fixture


def test_find_prefers_data_dir_then_system_then_cache(fmnist_dir, tmp_path):
    cache = tmp_path / "cache"
    assert find_fashion_mnist(None, cache, system_dir=tmp_path / "none") is None
    assert find_fashion_mnist(fmnist_dir, cache, system_dir=tmp_path / "none") == fmnist_dir
    assert find_fashion_mnist(None, cache, system_dir=fmnist_dir) == fmnist_dir
    unpacked = _fixture(cache / "debroot" / "usr/share/datasets/fashion-mnist")
    assert find_fashion_mnist(None, cache, system_dir=tmp_path / "none") == unpacked
    with pytest.raises(FetchError, match="does not hold"):
        ensure_fashion_mnist(tmp_path / "none", cache)


def test_fetch_with_apt_get_download_and_dpkg_x(tmp_path):
    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw.get("cwd")))
        if cmd[:2] == ["apt-get", "download"]:
            (Path(kw["cwd"]) / "dataset-fashion-mnist_1.0_all.deb").write_bytes(b"deb")
        elif cmd[:2] == ["dpkg", "-x"]:
            _fixture(Path(cmd[3]) / "usr/share/datasets/fashion-mnist")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    cache = tmp_path / "cache"
    got = ensure_fashion_mnist(None, cache, system_dir=tmp_path / "none", run=fake_run)
    assert got == cache / "debroot/usr/share/datasets/fashion-mnist"
    assert [c[0][:2] for c in calls] == [["apt-get", "download"], ["dpkg", "-x"]]
    assert calls[0][1] == str(cache)
    # found afterwards without fetching again
    assert ensure_fashion_mnist(None, cache, system_dir=tmp_path / "none",
                                run=fake_run) == got and len(calls) == 2


def test_fetch_failure_explains_what_to_install(tmp_path):
    def failing_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package")

    with pytest.raises(FetchError, match=r"(?s)apt-get download.*failed.*apt-get install "
                                         r"dataset-fashion-mnist.*--data-dir"):
        fetch_fashion_mnist_deb(tmp_path, run=failing_run)
    with pytest.raises(FetchError, match="not found"):
        ensure_fashion_mnist(None, tmp_path, download=False, system_dir=tmp_path / "none")


def test_fetch_cli_prints_the_folder(fmnist_dir, capsys):
    from losslab.lab.data.fetch import main

    assert main(["fashion-mnist", "--data-dir", str(fmnist_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(fmnist_dir)
