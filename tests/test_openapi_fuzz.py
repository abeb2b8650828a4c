"""No input gets a 500 or an answer the published OpenAPI document does not describe.

Schemathesis fuzzes a real `reelgen serve`; the findings it led to are pinned below as fast tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import pytest

from reelgen.storage.signing import sign_path

if TYPE_CHECKING:
    from .conftest import LiveServer

API_KEY = "rg_test_fuzz_0123456789abcdef0123456789"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
EXCLUDED_PATHS = ("/v1/videos/{video_id}/events",)
"""SSE: a stream stays open until its job ends, which would stall the run."""
MAX_EXAMPLES = int(os.environ.get("REELGEN_FUZZ_MAX_EXAMPLES", "50"))
SEED = os.environ.get("REELGEN_FUZZ_SEED", "1")
"""Fixed so a run is reproducible; raise the examples or change the seed to dig deeper."""
RUN_TIMEOUT_S = 150
LOOPBACK_ONLY = {"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
SCHEMATHESIS_CONFIG = """\
[warnings]
fail-on = ["unresolvable_reference", "unmatched_filter"]
"""
"""A skipped part of the schema or an exclusion that matches nothing would hide untested code."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A `reelgen serve` subprocess (API, controller, one worker); yields its URL and log.

    The caller's REELGEN_* variables are dropped: a configured database must not be fuzzed.
    """
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELGEN_")}
    env |= {**LOOPBACK_ONLY, "REELGEN_BOOTSTRAP_API_KEY": API_KEY, "REELGEN_REFERENCE_STEPS": "1"}
    command = [sys.executable, "-m", "reelgen", "serve", "--port", str(port)]
    command += ["--data-dir", str(tmp_path / "data")]
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=url, timeout=2, trust_env=False) as http:
            while True:
                if server.poll() is not None:
                    pytest.fail(f"reelgen serve exited with {server.returncode}:\n{_tail(log)}")
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"reelgen serve did not answer /healthz in 30 s:\n{_tail(log)}")
                time.sleep(0.1)
        yield url, log
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_openapi_fuzz(served: tuple[str, Path], tmp_path: Path) -> None:
    url, log = served
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config)]
    command += ["run", f"{url}/openapi.json"]
    command += ["--checks", ",".join(CHECKS)]
    command += ["--header", f"Authorization: Bearer {API_KEY}"]
    command += ["--max-examples", str(MAX_EXAMPLES), "--seed", SEED]
    command += ["--request-timeout", "10", "--generation-database", "none", "--no-color"]
    for path in EXCLUDED_PATHS:
        command += ["--exclude-path", path]
    # Schemathesis 4 has no telemetry or upload; it only talks to `url`.
    env = {**os.environ, **LOOPBACK_ONLY}
    started = time.monotonic()
    try:
        run = subprocess.run(
            command,
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else ""
        pytest.fail(f"schemathesis ran past {RUN_TIMEOUT_S} s:\n{output[-8000:]}")
    took = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == 0, (
        f"schemathesis failed (exit {run.returncode}, {took:.0f} s):\n{output[-12000:]}\n"
        f"--- reelgen serve log ---\n{_tail(log)}"
    )


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_openapi_refs_resolve_and_errors_are_declared(live: LiveServer) -> None:
    with live.client() as http:
        doc = http.get("/openapi.json").json()
    refs = set(_refs(doc))
    assert "#/components/schemas/ErrorBody" in refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
            node = node[part]
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], f"{method} {path} documents a 422"
    assert set(doc["paths"]["/v1/videos"]["post"]["responses"]) >= {"200", "400", "401", "429"}


def _signed(live: LiveServer, key: str, expires: int) -> str:
    """`sign_path` leaves `/` and dots bare, which a client would normalise away."""
    query = sign_path(live.platform.signing_secret, key, expires).split("?", 1)[1]
    return f"/files/{quote(key, safe='')}?{query}"


def _stored(live: LiveServer) -> str:
    """Writes the file itself, so these tests do not depend on the store's Python interface."""
    key = "videos/v/video.mp4"
    path = Path(live.platform.settings.data_dir) / "objects" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"mp4")
    return key


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


@pytest.mark.parametrize("signature", ["é", "\x00", "", "0" * 64])
def test_files_bad_signature_is_403(live: LiveServer, signature: str) -> None:
    url = f"/files/videos/v/video.mp4?expires={10**12}&signature={quote(signature)}"
    with live.client() as http:
        assert _error(http.get(url), 403)["code"] == "invalid_signature"


@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "videos/\x00",
        "videos",
        "",
        "a" * 5000,
        "videos/" + "a" * 300,
        "videos/v/video.mp4/x",
    ],
)
def test_files_signed_bad_key_is_404(live: LiveServer, key: str) -> None:
    _stored(live)
    with live.client() as http:
        assert _error(http.get(_signed(live, key, 10**12)), 404)["code"] == "not_found"


def test_files_far_expiry_caps_max_age(live: LiveServer) -> None:
    key = _stored(live)
    with live.client() as http:
        response = http.get(_signed(live, key, 10**400))
    assert response.status_code == 200, response.text
    assert response.content == b"mp4"
    assert response.headers["cache-control"] == f"public, max-age={2**31}"
