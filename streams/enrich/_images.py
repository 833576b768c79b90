"""Container image references: parsing, normalisation, and finding an incident's image.

Normalisation follows Docker's rules: no registry host means `docker.io`; a one-segment
repository on Docker Hub is under `library/`; the Docker Hub aliases `index.docker.io`,
`registry-1.docker.io` and `registry.hub.docker.com` are `docker.io`; the registry host is
lower-cased; no tag and no digest means tag `latest`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ImageRef", "image_from_incident", "parse_image", "present"]

DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
_MISSING_VALUES = frozenset({"", "<NA>", "N/A", "null"})


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A normalised image: `registry/path` with a tag and/or a digest (`sha256:...`)."""

    registry: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        return f"{self.registry}/{self.path}"

    @property
    def reference(self) -> str:
        """What a registry API takes: the digest when known (immutable), else the tag."""
        return self.digest or self.tag or "latest"

    def tag_key(self) -> str:
        return f"{self.repository}:{self.tag or 'latest'}"

    def digest_key(self) -> str | None:
        return f"{self.repository}@{self.digest}" if self.digest else None

    def __str__(self) -> str:
        if self.digest:
            tag = f":{self.tag}" if self.tag else ""
            return f"{self.repository}{tag}@{self.digest}"
        return self.tag_key()


def present(value: object) -> str | None:
    """A field value as text, or None when Falco reported it missing."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in _MISSING_VALUES else text


def parse_image(
    reference: str, tag: str | None = None, digest: str | None = None
) -> ImageRef | None:
    """Parse `[host[:port]/]path[:tag][@digest]`; an explicit `tag`/`digest` wins over one
    written in `reference`. None for an empty or malformed reference."""
    text = reference.strip()
    if "@" in text:
        text, _, embedded_digest = text.partition("@")
        digest = digest or embedded_digest or None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, embedded_tag = text[:colon], text[colon + 1 :]
        tag = tag or embedded_tag or None
    segments = [segment for segment in text.split("/") if segment]
    if not segments:
        return None
    first = segments[0]
    if len(segments) > 1 and ("." in first or ":" in first or first == "localhost"):
        registry, path_segments = first.lower(), segments[1:]
    else:
        registry, path_segments = DOCKER_HUB, segments
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and len(path_segments) == 1:
        path_segments = ["library", *path_segments]
    return ImageRef(registry, "/".join(path_segments), tag, digest)


def image_from_incident(incident: Mapping[str, Any]) -> ImageRef | None:
    """The incident's image from its context (`container.image.repository`, `.tag`), with a
    digest from `container.image.digest` in the context or any event's output fields."""
    context = incident.get("context")
    context = context if isinstance(context, Mapping) else {}
    repository = present(context.get("container.image.repository"))
    if repository is None:
        return None
    tag = present(context.get("container.image.tag"))
    digest = present(context.get("container.image.digest"))
    if digest is None:
        for event in incident.get("events") or ():
            fields = event.get("output_fields") if isinstance(event, Mapping) else None
            if isinstance(fields, Mapping):
                digest = present(fields.get("container.image.digest"))
                if digest:
                    break
    return parse_image(repository, tag, digest)
