"""One key-encryption key for the whole test session (local key files, owner-only), and data keys over it.

Shared by every test that stores credentials: procedures such as `keys rotate` run over every
tenant of the shared database, so all of them must have been sealed under the same KEK.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.crypto.datakeys import DataKeys
from app.crypto.kek import LocalKeyWrapper


@pytest.fixture(scope="session")
def kek_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kek")
    directory.chmod(0o700)
    LocalKeyWrapper.create_version(directory)
    return directory


@pytest.fixture(scope="session")
def wrapper(kek_dir: Path) -> LocalKeyWrapper:
    return LocalKeyWrapper(kek_dir)


@pytest.fixture(scope="session")
def data_keys(wrapper: LocalKeyWrapper) -> DataKeys:
    return DataKeys(wrapper, ttl_seconds=300)
