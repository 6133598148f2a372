"""The shared backend contract (``test_backends.py``) against the S3 backend on moto's server."""

from __future__ import annotations

import uuid

import pytest
from upath import UPath

from mnist_assets_tests.test_backends import BackendContract

pytestmark = pytest.mark.deploy


class TestObjectBackend(BackendContract):
    @pytest.fixture
    def root(self, s3) -> UPath:
        return UPath(s3.url(f"contract-{uuid.uuid4().hex}"))
