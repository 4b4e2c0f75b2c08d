"""Container image references as the grid and HTCondor want them."""

from __future__ import annotations


def docker_url(image: str) -> str:
    """``docker://`` added to a bare registry reference (prun, phpo and HTCondor all take the URL form)."""
    return image if "://" in image else f"docker://{image}"
