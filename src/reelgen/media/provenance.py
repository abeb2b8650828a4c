"""C2PA provenance: every published MP4 carries a signed manifest that says a model made it
(`c2pa.created`, digital source type `trainedAlgorithmicMedia`, the model's name and
version) and nothing about who asked for it. Signed with `c2pa-python` (the C2PA reference
implementation), offline: no timestamp authority is called.

The operator's certificate chain and key sign in production (`REELGEN_PROVENANCE_CERT`,
`REELGEN_PROVENANCE_KEY`); without them a development CA and signing certificate are made
once in the data directory (`reelgen provenance init` makes them where asked). `verify`
tells a file's state: trusted (valid and chained to a given trust anchor), valid (intact,
signer not trusted), tampered, or unsigned.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

DIGITAL_SOURCE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
DEV_CA, DEV_CHAIN, DEV_KEY = "ca.pem", "signer-chain.pem", "signer-key.pem"


class State(StrEnum):
    TRUSTED = "trusted"
    VALID = "valid"
    TAMPERED = "tampered"
    UNSIGNED = "unsigned"


@dataclass(frozen=True, slots=True)
class Checked:
    state: State
    manifest: dict[str, Any] | None
    """The active manifest (None: unsigned)."""
    problems: list[str]
    """The validation failures, by code and explanation."""


class ProvenanceSigner:
    """Signs MP4s with one certificate chain and key (ES256: an EC P-256 key)."""

    def __init__(self, chain_pem: bytes, key_pem: bytes, *, generator: str, version: str):
        import c2pa

        self._info = c2pa.C2paSignerInfo(
            alg=b"es256", sign_cert=chain_pem, private_key=key_pem, ta_url=None
        )
        self.generator, self.version = generator, version

    @classmethod
    def from_files(cls, chain: Path, key: Path, *, version: str) -> ProvenanceSigner:
        return cls(chain.read_bytes(), key.read_bytes(), generator="reelgen", version=version)

    def sign(self, source: Path, dest: Path, *, model: str, model_version: str) -> None:
        """`dest`: `source` with the manifest embedded (the frames and sound unchanged)."""
        import c2pa

        manifest = {
            "claim_generator_info": [{"name": self.generator, "version": self.version}],
            "title": "video.mp4",
            "assertions": [
                {
                    "label": "c2pa.actions.v2",
                    "data": {
                        "actions": [
                            {
                                "action": "c2pa.created",
                                "digitalSourceType": DIGITAL_SOURCE,
                                "softwareAgent": {"name": model, "version": model_version},
                            }
                        ]
                    },
                }
            ],
        }
        signer = c2pa.Signer.from_info(self._info)
        builder = c2pa.Builder(manifest)
        try:
            builder.sign_file(source, dest, signer)
        finally:
            builder.close()
            signer.close()


def verify(path: Path, trust_anchors: bytes | None = None) -> Checked:
    """The file's provenance state; `trust_anchors`: PEM certificates a trusted signer's
    chain must end in."""
    import c2pa

    context = None
    if trust_anchors is not None:
        context = c2pa.Context.from_dict({"trust": {"trust_anchors": trust_anchors.decode()}})
    try:
        reader = c2pa.Reader(str(path), context=context)
    except c2pa.C2paError as exc:
        text = str(exc)
        if "ManifestNotFound" in text or "no JUMBF" in text or "NotFound" in text:
            return Checked(State.UNSIGNED, None, [])
        return Checked(State.TAMPERED, None, [text])
    try:
        manifest = reader.get_active_manifest()
        state = (reader.get_validation_state() or "").lower()
        results = reader.get_validation_results() or {}
    finally:
        reader.close()
    failures = (results.get("activeManifest") or {}).get("failure") or []
    problems = [f"{f.get('code')}: {f.get('explanation', '')}" for f in failures]
    if state == "trusted":
        return Checked(State.TRUSTED, manifest, problems)
    if state == "valid":
        return Checked(State.VALID, manifest, problems)
    return Checked(State.TAMPERED, manifest, problems)


def make_dev_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A development CA and a signing certificate it issued (EC P-256, as C2PA wants: not a
    CA, digital signature, email protection); returns (CA, signer chain, signer key). Not
    for production: anyone can make one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Reelgen development"),
            ]
        )

    def usage(*, sign: bool, certs: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=sign, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=certs, crl_sign=certs,
            encipher_only=False, decipher_only=False,
        )  # fmt: skip

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("Reelgen development CA"))
        .issuer_name(name("Reelgen development CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(sign=False, certs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("Reelgen development signer"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign=True, certs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    paths = directory / DEV_CA, directory / DEV_CHAIN, directory / DEV_KEY
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths[2].chmod(0o600)
    return paths


def describe(checked: Checked) -> str:
    """One line per fact, for `reelgen provenance verify`."""
    lines = [checked.state.value]
    if checked.manifest is not None:
        lines.append(json.dumps(checked.manifest.get("assertions", []), sort_keys=True))
    lines.extend(checked.problems)
    return "\n".join(lines)
