"""`reelgen provenance`: a development signing CA, and the provenance state of an MP4."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="C2PA provenance of published videos.")

EXIT = {"trusted": 0, "valid": 0, "tampered": 1, "unsigned": 2}
"""`verify`'s exit status by state."""


@app.command("init")
def init_command(
    directory: Annotated[
        Path, typer.Argument(help="Where the CA and the signing certificate and key go.")
    ] = Path(".reelgen/provenance"),
) -> None:
    """Makes a development CA and a signing certificate it issued (not for production: set
    REELGEN_PROVENANCE_CERT and REELGEN_PROVENANCE_KEY to the operator's own)."""
    from reelgen.media.provenance import make_dev_ca

    existing = [p for p in (directory / "ca.pem", directory / "signer-key.pem") if p.exists()]
    if existing:
        raise typer.BadParameter(f"{existing[0]} exists; choose another directory")
    ca, chain, key = make_dev_ca(directory)
    typer.echo(f"CA (the trust anchor for verify --trust): {ca}")
    typer.echo(f"REELGEN_PROVENANCE_CERT={chain}")
    typer.echo(f"REELGEN_PROVENANCE_KEY={key}")


@app.command("verify")
def verify_command(
    video: Annotated[Path, typer.Argument(help="An MP4.", exists=True, dir_okay=False)],
    trust: Annotated[
        Path | None,
        typer.Option(help="PEM trust anchors: the CA(s) a trusted signer chains to."),
    ] = None,
) -> None:
    """Prints trusted, valid (intact, signer not trusted), tampered or unsigned, then the
    manifest's assertions and any validation failures; exits 0, 0, 1 or 2."""
    from reelgen.media.provenance import describe, verify

    checked = verify(video, trust.read_bytes() if trust is not None else None)
    typer.echo(describe(checked))
    raise typer.Exit(EXIT[checked.state.value])
