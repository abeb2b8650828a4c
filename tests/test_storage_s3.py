"""Object storage on the S3 API against real S3 API servers on loopback, started by the tests:
moto's server (ranges, multipart and conditional requests as AWS answers them; it checks no
signatures) and `rclone serve s3` (real SigV4, so a presigned URL stops working once it
expires; it answers a range with the whole object). Both are emulators, not AWS.

Covered: uploads from bytes, a file and a stream (in parts), content type and cache header,
ranged reads, a presigned GET with a Range, a presigned URL's expiry, delete and delete by
prefix, and a whole job through the API with its bytes in a bucket (streamed through the API
and redirected to a presigned URL, read with the `openai` SDK)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reelgen.storage.s3 import CACHE_CONTROL, S3Location, S3Store

from .s3_servers import S3Server, credentials, moto_server, rclone_server

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _aws_environment() -> Iterator[None]:
    with credentials():
        yield


@pytest.fixture(scope="module")
def moto() -> Iterator[S3Server]:
    with moto_server() as server:
        yield server


@pytest.fixture(scope="module")
def rclone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with rclone_server(tmp_path_factory.mktemp("rclone")) as server:
        yield server


@pytest.fixture(params=["moto", "rclone"])
def server(request: pytest.FixtureRequest) -> S3Server:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def _store(server: S3Server, bucket: str, prefix: str = "reelgen", **kw: Any) -> S3Store:
    server.create_bucket(bucket)
    return S3Store(S3Location.parse(server.url(bucket, prefix)), **kw)


def _payload(size: int) -> bytes:
    return os.urandom(size)


def test_storage_urls_are_parsed_and_bad_ones_refused() -> None:
    loc = S3Location.parse("s3://media/out/v1?endpoint_url=http://127.0.0.1:9000&region=eu-1")
    assert (loc.bucket, loc.prefix, loc.endpoint_url, loc.region) == (
        "media", "out/v1/", "http://127.0.0.1:9000", "eu-1",
    )  # fmt: skip
    assert S3Location.parse("s3://media").prefix == ""
    with pytest.raises(ValueError, match="Unknown S3 storage URL parameter"):
        S3Location.parse("s3://media?endpoint=x")
    with pytest.raises(ValueError, match="addressing_style"):
        S3Location.parse("s3://media?addressing_style=sideways")
    with pytest.raises(ValueError, match="looks like s3://bucket/prefix"):
        S3Location.parse("s3:///nobucket")


def test_put_get_and_ranged_reads(server: S3Server, tmp_path: Path) -> None:
    """Bytes, a file in three parts and a stream of odd-sized chunks in parts: each comes
    back whole, with its content type and cache header, and in any range."""
    store = _store(server, "objects", part_size=5 * MiB)
    small, big = _payload(1000), _payload(12 * MiB + 7)
    path = tmp_path / "clip.mp4"
    path.write_bytes(big)
    store.put("a/small.bin", small, content_type="application/octet-stream")
    store.put("a/big.mp4", path, content_type="video/mp4")
    store.put("a/streamed.mp4", (big[i : i + 777_777] for i in range(0, len(big), 777_777)))
    assert store.get("a/small.bin") == small
    for key in ("a/big.mp4", "a/streamed.mp4"):
        assert b"".join(store.read(key)) == big
        assert b"".join(store.read(key, 5, 100)) == big[5:100]
        assert b"".join(store.read(key, len(big) - 10)) == big[-10:]
        assert b"".join(store.read(key, 6 * MiB, 6 * MiB + 3)) == big[6 * MiB : 6 * MiB + 3]
        info = store.stat(key)
        assert info is not None and info.size == len(big) and info.etag
    head = server.client().head_object(Bucket="objects", Key="reelgen/a/big.mp4")
    assert head["ContentType"] == "video/mp4" and head["CacheControl"] == CACHE_CONTROL
    if server.name == "moto":  # rclone's backend keeps no part boundaries
        assert head["ETag"].strip('"').endswith("-3")  # uploaded in three parts
    assert store.stat("a/none") is None and not store.exists("a/none")
    with pytest.raises(FileNotFoundError):
        store.get("a/none")


def test_a_presigned_get_serves_a_range(moto: S3Server) -> None:
    store = _store(moto, "presigned")
    data = _payload(4096)
    store.put("v/video.mp4", data, content_type="video/mp4")
    url = store.url_for("v/video.mp4", int(time.time()) + 3600)
    got = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert got.status_code == 206 and got.content == data[100:200]
    assert got.headers["content-range"] == "bytes 100-199/4096"
    assert httpx.get(url).content == data
    with pytest.raises(ValueError, match="quarantined"):
        store.url_for("quarantine/v/a1/video.mp4", int(time.time()) + 60)


def test_a_presigned_url_stops_working_once_it_expires(rclone: S3Server) -> None:
    """rclone checks SigV4 signatures and their expiry, as AWS does."""
    store = _store(rclone, "expiring")
    store.put("v/video.mp4", b"frames", content_type="video/mp4")
    url = store.url_for("v/video.mp4", int(time.time()) + 2)
    assert httpx.get(url).content == b"frames"
    forged = url.replace("Signature=", "Signature=0")
    assert httpx.get(forged).status_code == 403
    time.sleep(3)
    expired = httpx.get(url)
    assert expired.status_code in (400, 403)  # AWS: 403; rclone: 400
    assert b"AccessDenied" in expired.content


def test_delete_and_delete_prefix(server: S3Server) -> None:
    store = _store(server, "deleting")
    for key in ("videos/j1/a1/video.mp4", "videos/j1/a1/thumb.webp", "videos/j1/a2/video.mp4"):
        store.put(key, b"x")
    store.put("videos/j10/a1/video.mp4", b"kept")  # shares the name's start, not the prefix
    url = store.url_for("videos/j1/a1/video.mp4", int(time.time()) + 600)
    store.delete("videos/j1/a1/thumb.webp")
    assert not store.exists("videos/j1/a1/thumb.webp")
    store.delete("videos/j1/a1/thumb.webp")  # deleting again is fine
    store.delete_prefix("videos/j1/")
    assert not store.exists("videos/j1/a1/video.mp4") and not store.exists("videos/j1/a2/video.mp4")
    assert store.get("videos/j10/a1/video.mp4") == b"kept"
    assert httpx.get(url).status_code == 404  # a deleted video's URL stops working


def test_a_job_through_the_api_with_its_bytes_in_a_bucket(start_server, moto: S3Server) -> None:
    """The worker uploads, the API streams the bytes from the bucket or redirects to a
    presigned URL; the `openai` SDK downloads them either way."""
    from openai import OpenAI

    moto.create_bucket("platform")
    live = start_server(storage_url=moto.url("platform", "prod"))
    redirecting = start_server(storage_url=moto.url("platform", "prod"), content_redirect=True)
    body = {"prompt": "a calm lake at dawn", "seconds": "1", "size": "64x64", "seed": 7}
    with live.client() as http:
        video_id = http.post("/v1/videos", json=body).json()["id"]
    assert live.wait_for(video_id)["status"] == "completed"
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket="platform")["Contents"]]
    assert any(k.startswith(f"prod/videos/{video_id}/") and k.endswith(".mp4") for k in keys)
    sdk = OpenAI(base_url=f"{live.url}/v1", api_key=live.paid_key)
    streamed = sdk.videos.download_content(video_id).read()
    assert streamed[4:8] == b"ftyp"
    with redirecting.client() as http:
        again = http.post("/v1/videos", json=body).json()["id"]
    assert redirecting.wait_for(again)["status"] == "completed"
    with redirecting.client() as http:
        answer = http.get(f"/v1/videos/{again}/content")
    assert answer.status_code == 302 and answer.headers["location"].startswith(moto.endpoint)
    sdk = OpenAI(base_url=f"{redirecting.url}/v1", api_key=redirecting.paid_key)
    assert sdk.videos.download_content(again).read()[4:8] == b"ftyp"
    sdk.videos.delete(again)  # the bytes go at once, and the presigned URL stops working
    left = moto.client().list_objects_v2(Bucket="platform", Prefix=f"prod/videos/{again}/")
    assert left.get("KeyCount", 0) == 0
    assert httpx.get(answer.headers["location"]).status_code == 404


class _Edge:
    """A CDN edge as docs/storage.md describes one: checks each URL's signature and expiry
    (written here from the documented scheme, not with the platform's code), then fetches
    the object from the bucket, its origin, with its own credentials."""

    def __init__(self, origin: Any, bucket: str, prefix: str, secret: bytes):
        import hashlib
        import hmac
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, unquote, urlsplit

        edge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                key = unquote(parts.path.removeprefix("/media/"))
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                expires = int(query.get("expires", "0"))
                expected = hmac.new(secret, f"{key}\n{expires}".encode(), hashlib.sha256)
                if expires < time.time() or not hmac.compare_digest(
                    expected.hexdigest(), query.get("signature", "")
                ):
                    return self._answer(403, b"bad or expired signature")
                try:
                    body = origin.get_object(Bucket=bucket, Key=prefix + key)["Body"].read()
                except origin.exceptions.NoSuchKey:
                    return self._answer(404, b"gone")
                edge.served.append(key)
                self._answer(200, body)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.served: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/media"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_content_redirects_to_a_signed_cdn_url(start_server, moto: S3Server) -> None:
    """With `REELGEN_CDN_BASE_URL`, `/content` redirects to the CDN; its edge accepts the
    signed URL, refuses a tampered or expired one, and a deleted video's URL stops working."""
    from openai import OpenAI

    from reelgen.settings import Settings

    with pytest.raises(ValueError, match="needs REELGEN_CDN_SIGNING_SECRET"):
        Settings(cdn_base_url="https://cdn.example.com")
    moto.create_bucket("cdn-origin")
    edge = _Edge(moto.client(), "cdn-origin", "prod/", b"edge-secret")
    try:
        live = start_server(
            storage_url=moto.url("cdn-origin", "prod"),
            content_redirect=True,
            cdn_base_url=edge.url.removesuffix("/media") + "/media/",
            cdn_signing_secret="edge-secret",
        )
        body = {"prompt": "a quiet harbour", "seconds": "1", "size": "64x64", "seed": 7}
        with live.client() as http:
            video_id = http.post("/v1/videos", json=body).json()["id"]
            assert live.wait_for(video_id)["status"] == "completed"
            location = http.get(f"/v1/videos/{video_id}/content").headers["location"]
        assert location.startswith(edge.url + "/videos/")
        assert httpx.get(location).content[4:8] == b"ftyp"
        assert httpx.get(location.replace("signature=", "signature=0")).status_code == 403
        stale = location.split("?")[0] + "?expires=1&signature=" + location.split("signature=")[1]
        assert httpx.get(stale).status_code == 403
        sdk = OpenAI(base_url=f"{live.url}/v1", api_key=live.paid_key)
        assert sdk.videos.download_content(video_id).read()[4:8] == b"ftyp"
        assert len(edge.served) == 2
        sdk.videos.delete(video_id)
        assert httpx.get(location).status_code == 404
    finally:
        edge.close()
