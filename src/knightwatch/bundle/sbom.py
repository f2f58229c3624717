"""The release's CycloneDX 1.6 SBOM, built with cyclonedx-python-lib.

One component per declared component (its version, a SHA-256 over its
files, its files as nested file components) and the dependency graph from
``depends_on``. The serial number and timestamp are derived from the
manifest, so the same source gives the same SBOM bytes.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion

from knightwatch.bundle.manifest import FileEntry, Manifest, component_digest

__all__ = ["SBOM_NAMESPACE", "build_sbom", "sbom_problems"]

SBOM_NAMESPACE = uuid.UUID("469e566a-2048-5494-8df5-58a35a672eb2")  # uuid5(URL, knightwatch sbom)


def build_sbom(manifest: Manifest) -> bytes:
    """Return the SBOM of ``manifest`` as CycloneDX 1.6 JSON bytes."""
    root = Component(
        name=manifest.name,
        version=manifest.version,
        type=ComponentType.APPLICATION,
        bom_ref=manifest.release_id,
        description=manifest.description or None,
        hashes=[_sha256(manifest.digest)],
        properties=[Property(name="knightwatch:release_digest", value=manifest.digest)],
    )
    bom = Bom(serial_number=uuid.uuid5(SBOM_NAMESPACE, manifest.digest))
    bom.metadata.timestamp = datetime.fromisoformat(manifest.source.build_time)
    bom.metadata.component = root
    by_name: dict[str, Component] = {}
    for spec in manifest.spec.component:
        files = manifest.component_files(spec.name)
        component = Component(
            name=spec.name,
            version=spec.version,
            type=ComponentType.LIBRARY,
            bom_ref=f"{manifest.name}/{spec.name}",
            description=spec.description or None,
            hashes=[_sha256(component_digest(files))],
        )
        for entry in files:
            component.components.add(_file_component(manifest, entry))
        bom.components.add(component)
        by_name[spec.name] = component
    bom.register_dependency(root, list(by_name.values()))
    for spec in manifest.spec.component:
        bom.register_dependency(by_name[spec.name], [by_name[d] for d in spec.depends_on])
    return JsonV1Dot6(bom).output_as_string(indent=None).encode("utf-8")


def _file_component(manifest: Manifest, entry: FileEntry) -> Component:
    hashes = [_sha256(entry.digest)] if entry.digest else []
    properties = [Property(name="knightwatch:executable", value=str(entry.executable).lower())]
    if entry.symlink is not None:
        properties.append(Property(name="knightwatch:symlink", value=entry.symlink))
    return Component(
        name=entry.path,
        type=ComponentType.FILE,
        hashes=hashes,
        bom_ref=f"{manifest.name}/{entry.component}/{entry.path}",
        properties=properties,
    )


def _sha256(digest: str) -> HashType:
    return HashType(alg=HashAlgorithm.SHA_256, content=digest)


def sbom_problems(sbom: bytes) -> list[str]:
    """Validate SBOM bytes against the CycloneDX 1.6 JSON schema; return the problems."""
    # Imported here: the JSON-schema stack costs ~2 s of start-up that only verify needs.
    from cyclonedx.validation.json import JsonStrictValidator  # noqa: PLC0415

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom.decode("utf-8"))
    return [] if error is None else [str(error)]
