"""Shared data fixtures. Import the fixture into a test module to use it:

from _data_fixtures import austen_corpus  # noqa: F401
"""

from __future__ import annotations

import json
import shutil

import pytest

from rlrs import data


@pytest.fixture(scope="session")
def austen_corpus():
    """Make sure the austen corpus is in the data folder (CI fetches it in setup;
    here it is fetched once if apt-get can). Returns its folder."""
    folder = data.data_dir() / "austen"
    if not (folder / "meta.json").is_file() or not (folder / "package").is_dir():
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            pytest.skip(
                f"the austen corpus is not in {folder} and apt-get/dpkg-deb are missing: run `rlrs corpus fetch` on a Debian machine"
            )
        data.fetch_austen()
    assert json.loads((folder / "meta.json").read_text())["bytes"] > 3_000_000
    return folder
