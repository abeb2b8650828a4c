"""Object storage on the S3 API (AWS S3, Cloudflare R2, MinIO, Ceph RGW, GCS interop) through
boto3, for fleets: every process reaches the same bucket, no shared directory.

`REELGEN_STORAGE_URL=s3://bucket/prefix?endpoint_url=...&region=...&addressing_style=path`;
credentials come from boto3's usual chain (environment, shared config and credentials files,
profiles, container and instance metadata). Files upload in parts, streamed from disk on a
few threads; streams of chunks upload in parts as they come. Every object gets its content
type and cache header. `url_for` presigns a GET that stops working once it expires.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from reelgen.storage.base import Body, ObjectInfo, validate_key
from reelgen.storage.keys import quarantined

CHUNK = 1024 * 1024
PART = 16 * 1024 * 1024
"""Part size of multipart uploads; objects below it go in one request."""
CACHE_CONTROL = "private, max-age=3600"
"""As the API's own `/content` answers: a key holds one attempt's bytes and never changes,
but access is per user and a deleted video must stop being served."""
_MISSING = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str
    """Prepended to every key (empty, or ending with `/`)."""
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    """`path` for most S3-compatible servers on one host name; `virtual` for AWS."""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"An S3 storage URL looks like s3://bucket/prefix, not {url!r}.")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint_url", "region", "addressing_style"}
        if unknown:
            raise ValueError(
                f"Unknown S3 storage URL parameter(s) {', '.join(sorted(unknown))}: "
                "use endpoint_url, region and addressing_style."
            )
        style = query.get("addressing_style", "auto")
        if style not in ("auto", "path", "virtual"):
            raise ValueError(f"addressing_style must be auto, path or virtual, not {style!r}.")
        prefix = parts.path.strip("/")
        return cls(
            bucket=parts.netloc,
            prefix=f"{prefix}/" if prefix else "",
            endpoint_url=query.get("endpoint_url"),
            region=query.get("region"),
            addressing_style=style,
        )


class S3Store:
    """An `ObjectStore` on one bucket and prefix."""

    def __init__(self, location: S3Location, *, part_size: int = PART):
        try:
            import boto3
            from boto3.s3.transfer import TransferConfig
            from botocore.config import Config
        except ImportError as exc:
            raise RuntimeError(
                f"S3 storage needs boto3: pip install 'reelgen[s3]' ({exc})"
            ) from exc
        self.location = location
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=location.endpoint_url,
            region_name=location.region,
            config=Config(
                signature_version="s3v4",  # presigned URLs too (boto3 would use SigV2)
                s3={"addressing_style": location.addressing_style},
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=32,
                # Some S3-compatible servers answer a range with the whole object's
                # checksum: check checksums only where the API requires them.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=4
        )

    def _key(self, key: str) -> str:
        return self.location.prefix + validate_key(key)

    def put(self, key: str, body: Body, *, content_type: str | None = None) -> None:
        extra = {"CacheControl": CACHE_CONTROL}
        if content_type is not None:
            extra["ContentType"] = content_type
        bucket, name = self.location.bucket, self._key(key)
        if isinstance(body, bytes) and len(body) < self._transfer.multipart_threshold:
            self._client.put_object(Bucket=bucket, Key=name, Body=body, **extra)
        elif isinstance(body, Path):
            self._client.upload_file(
                str(body), bucket, name, ExtraArgs=extra, Config=self._transfer
            )
        else:
            stream = io.BytesIO(body) if isinstance(body, bytes) else _reader(body)
            self._client.upload_fileobj(
                stream, bucket, name, ExtraArgs=extra, Config=self._transfer
            )

    def get(self, key: str) -> bytes:
        try:
            answer = self._client.get_object(Bucket=self.location.bucket, Key=self._key(key))
        except self._client.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                raise FileNotFoundError(key) from exc
            raise
        return bytes(answer["Body"].read())

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if end is not None and end <= start:
            return
        ranged = start > 0 or end is not None
        wanted = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            answer = self._client.get_object(
                Bucket=self.location.bucket,
                Key=self._key(key),
                **({"Range": wanted} if ranged else {}),
            )
        except self._client.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                raise FileNotFoundError(key) from exc
            raise
        skip, left = 0, None if end is None else end - start
        if ranged and "ContentRange" not in answer:  # a server that ignored the range
            skip = start
        body = answer["Body"]
        try:
            for chunk in body.iter_chunks(CHUNK):
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                if left is not None:
                    chunk, left = chunk[:left], left - min(left, len(chunk))
                if chunk:
                    yield chunk
                if left == 0:
                    return
        finally:
            body.close()

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._client.head_object(Bucket=self.location.bucket, Key=self._key(key))
        except self._client.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        return ObjectInfo(
            size=int(head["ContentLength"]),
            etag=str(head["ETag"]),
            modified=head["LastModified"].timestamp(),
        )

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.location.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        """The object named `prefix` (without its trailing `/`) and every one under it."""
        name = self._key(prefix.rstrip("/"))
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=name
        )
        doomed = [
            item["Key"]
            for page in pages
            for item in page.get("Contents", ())
            if item["Key"] == name or item["Key"].startswith(name + "/")
        ]
        self._delete(doomed)

    def delete_many(self, keys: Sequence[str]) -> None:
        self._delete([self._key(k) for k in keys])

    def _delete(self, names: list[str]) -> None:
        """Full object names, 1,000 to a request (the API's limit)."""
        for start in range(0, len(names), 1000):
            batch = [{"Key": k} for k in names[start : start + 1000]]
            answer = self._client.delete_objects(
                Bucket=self.location.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            failed = [e for e in answer.get("Errors", ()) if e.get("Code") not in _MISSING]
            if failed:
                raise RuntimeError(f"could not delete {len(failed)} objects: {failed[0]}")

    def url_for(self, key: str, expires_at: int) -> str:
        """A presigned GET, valid until `expires_at` (at least one second from now)."""
        if quarantined(key):
            raise ValueError("quarantined content is never given a URL")
        return str(
            self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.location.bucket, "Key": self._key(key)},
                ExpiresIn=max(1, int(expires_at - time.time())),
            )
        )


def _code(error: Any) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class _Chunks(io.RawIOBase):
    """A stream of byte chunks as a raw file (`_reader` buffers it for the upload's reads)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _reader(chunks: Iterable[bytes]) -> io.BufferedReader:
    """Whole parts from a stream of chunks of any size."""
    return io.BufferedReader(_Chunks(chunks), buffer_size=CHUNK)
