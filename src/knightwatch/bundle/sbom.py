"""The release's CycloneDX 1.6 SBOM, built with cyclonedx-python-lib.

One component per declared component (its version, a SHA-256 over its
files, its files as nested file components) and the dependency graph from
``depends_on``. The serial number and timestamp are derived from the
manifest, so the same source gives the same SBOM bytes.

The library builds the document, its declared components and dependency
graph. The per-file components are added to its JSON output directly:
the library's model costs O(n²) in the number of nested components
(CycloneDX/cyclonedx-python-lib#1006 — 22 s for 20,000 files), while the
shape written here is the same, and every SBOM is checked against the
CycloneDX 1.6 schema with the library's validator in tests and in verify.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion

from knightwatch.bundle.manifest import FileEntry, Manifest, component_digest

__all__ = ["SBOM_NAMESPACE", "build_sbom", "sbom_identity_problems", "sbom_problems"]

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
        component = Component(
            name=spec.name,
            version=spec.version,
            type=ComponentType.LIBRARY,
            bom_ref=_component_ref(manifest, spec.name),
            description=spec.description or None,
            hashes=[_sha256(component_digest(manifest.component_files(spec.name)))],
        )
        bom.components.add(component)
        by_name[spec.name] = component
    bom.register_dependency(root, list(by_name.values()))
    for spec in manifest.spec.component:
        bom.register_dependency(by_name[spec.name], [by_name[d] for d in spec.depends_on])
    document = json.loads(JsonV1Dot6(bom).output_as_string(indent=None))
    _add_files(document, manifest)
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _add_files(document: dict[str, Any], manifest: Manifest) -> None:
    files: dict[str, list[dict[str, Any]]] = {}
    for entry in manifest.files:
        if entry.component is not None:
            files.setdefault(entry.component, []).append(_file_component(manifest, entry))
    for component in document.get("components", []):
        name = next(
            c.name
            for c in manifest.spec.component
            if _component_ref(manifest, c.name) == component["bom-ref"]
        )
        if files.get(name):
            component["components"] = sorted(files[name], key=lambda c: c["name"])


def _file_component(manifest: Manifest, entry: FileEntry) -> dict[str, Any]:
    properties = [{"name": "knightwatch:executable", "value": str(entry.executable).lower()}]
    if entry.symlink is not None:
        properties.append({"name": "knightwatch:symlink", "value": entry.symlink})
    component: dict[str, Any] = {
        "bom-ref": f"{manifest.name}/{entry.component}/{entry.path}",
        "name": entry.path,
        "properties": properties,
        "type": "file",
    }
    if entry.digest:
        component["hashes"] = [{"alg": "SHA-256", "content": entry.digest}]
    return component


def _component_ref(manifest: Manifest, name: str) -> str:
    return f"{manifest.name}/{name}"


def _sha256(digest: str) -> HashType:
    return HashType(alg=HashAlgorithm.SHA_256, content=digest)


def sbom_identity_problems(sbom: bytes, manifest: Manifest) -> list[str]:
    """Cheap checks that ``sbom`` is a CycloneDX 1.6 document describing ``manifest``.

    Its bytes are covered by the release signature; this catches a document
    that was signed but describes another release. The full schema check is
    :func:`sbom_problems` (seconds for large releases).
    """
    try:
        document = json.loads(sbom)
    except ValueError as exc:
        return [f"not JSON: {exc}"]
    if not isinstance(document, dict):
        return ["not a JSON object"]
    problems = []
    if (document.get("bomFormat"), document.get("specVersion")) != ("CycloneDX", "1.6"):
        problems.append("not a CycloneDX 1.6 document")
    if document.get("serialNumber") != f"urn:uuid:{uuid.uuid5(SBOM_NAMESPACE, manifest.digest)}":
        problems.append("its serial number is not this release's")
    component = (document.get("metadata") or {}).get("component") or {}
    if component.get("bom-ref") != manifest.release_id:
        problems.append(f"it describes {component.get('bom-ref')!r}, not {manifest.release_id}")
    return problems


def sbom_problems(sbom: bytes) -> list[str]:
    """Validate SBOM bytes against the CycloneDX 1.6 JSON schema; return the problems."""
    # Imported here: the JSON-schema stack costs ~2 s of start-up that only verify needs.
    from cyclonedx.validation.json import JsonStrictValidator  # noqa: PLC0415

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom.decode("utf-8"))
    return [] if error is None else [str(error)]
