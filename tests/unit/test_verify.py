"""Verifying stored releases: every corruption is found and named."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from knightwatch.bundle import (
    BuildResult,
    Manifest,
    ReleaseStore,
    SigningKey,
    TrustedKey,
    build_release,
    verify_release,
)
from knightwatch.bundle.release_store import ENVELOPE_FILE, MANIFEST_FILE, SBOM_FILE
from knightwatch.bundle.signing import statement_problems
from knightwatch.canonical import canonical_json
from tests.helpers import MakeSource

EPOCH = {"SOURCE_DATE_EPOCH": "1343826000"}


@pytest.fixture
def built(make_source: MakeSource, tmp_path: Path, signing_key: SigningKey) -> BuildResult:
    """A release built into ``tmp_path/store``."""
    return build_release(make_source(), tmp_path / "store", signing_key, environ=EPOCH)


def blob(store: Path, digest: str) -> Path:
    """Where a blob lives."""
    return store / "blobs" / "sha256" / digest[:2] / digest[2:]


def flip_byte(path: Path, offset: int = 0) -> None:
    """Flip one bit of one byte of a (read-only) file."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


class TestVerify:
    def test_clean_release_verifies(
        self, built: BuildResult, tmp_path: Path, trusted_key: TrustedKey
    ) -> None:
        """An untouched release has no problems and names the key that signed it."""
        report = verify_release(tmp_path / "store", built.release_id, [trusted_key])
        assert report.ok, report.problems
        assert report.signed_by == [trusted_key.keyid]
        assert (report.files, report.blobs) == (7, 6)

    def test_flipped_byte_in_blob_is_named(
        self, built: BuildResult, tmp_path: Path, trusted_key: TrustedKey
    ) -> None:
        """One flipped byte in one blob is reported with the file that uses it."""
        store = tmp_path / "store"
        digest = next(f.digest for f in _manifest(store, built).files if f.path == "core/book.py")
        assert digest is not None
        flip_byte(blob(store, digest))
        report = verify_release(store, built.release_id, [trusted_key])
        assert len(report.problems) == 1
        assert "core/book.py" in report.problems[0] and "corrupt" in report.problems[0]
        assert digest in report.problems[0]

    def test_missing_blob_is_named(
        self, built: BuildResult, tmp_path: Path, trusted_key: TrustedKey
    ) -> None:
        """A deleted blob is reported as missing, naming its file."""
        store = tmp_path / "store"
        digest = next(f.digest for f in _manifest(store, built).files if f.path == "bin/shop")
        assert digest is not None
        blob(store, digest).unlink()
        report = verify_release(store, built.release_id, [trusted_key])
        assert any("bin/shop" in p and "missing" in p for p in report.problems)

    def test_shared_blob_names_all_users(
        self, built: BuildResult, tmp_path: Path, trusted_key: TrustedKey
    ) -> None:
        """A corrupt blob used by two files says it is used by more than one."""
        store = tmp_path / "store"
        digest = next(f.digest for f in _manifest(store, built).files if f.path == "docs/copy.md")
        assert digest is not None
        flip_byte(blob(store, digest))
        (problem,) = verify_release(store, built.release_id, [trusted_key]).problems
        assert "docs/README.md and 1 more" in problem

    def test_edited_manifest_is_found(
        self, built: BuildResult, tmp_path: Path, trusted_key: TrustedKey
    ) -> None:
        """A manifest edited in place no longer matches the digest it is filed under."""
        path = tmp_path / "store" / "releases" / built.digest / MANIFEST_FILE
        path.write_bytes(path.read_bytes().replace(b'"executable":true', b'"executable":false'))
        report = verify_release(tmp_path / "store", built.digest, [trusted_key])
        assert any(MANIFEST_FILE in p and "SHA-256" in p for p in report.problems)

    def test_untrusted_key_fails(
        self, built: BuildResult, tmp_path: Path, untrusted_key: TrustedKey
    ) -> None:
        """A signature by a key we do not trust is a problem, named with the signer's key id."""
        report = verify_release(tmp_path / "store", built.release_id, [untrusted_key])
        assert any(ENVELOPE_FILE in p and "no valid signature" in p for p in report.problems)

    def test_forged_signature_fails(
        self, built: BuildResult, tmp_path: Path, trusted_key: TrustedKey
    ) -> None:
        """A signature with one flipped bit does not verify."""
        path = tmp_path / "store" / "releases" / built.digest / ENVELOPE_FILE
        envelope = json.loads(path.read_bytes())
        sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
        sig[5] ^= 0x01
        envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
        path.write_bytes(canonical_json(envelope))
        report = verify_release(tmp_path / "store", built.release_id, [trusted_key])
        assert any("no valid signature" in p for p in report.problems)

    def test_signature_of_another_release_fails(
        self,
        make_source: MakeSource,
        tmp_path: Path,
        signing_key: SigningKey,
        trusted_key: TrustedKey,
    ) -> None:
        """An envelope copied from another release is refused: it names another manifest."""
        store = tmp_path / "store"
        one = build_release(make_source(version="1.0.0"), store, signing_key, environ=EPOCH)
        two = build_release(make_source(version="2.0.0"), store, signing_key, environ=EPOCH)
        src = store / "releases" / one.digest / ENVELOPE_FILE
        (store / "releases" / two.digest / ENVELOPE_FILE).write_bytes(src.read_bytes())
        report = verify_release(store, two.digest, [trusted_key])
        assert any("another manifest" in p for p in report.problems)

    def test_tampered_sbom_fails(
        self, built: BuildResult, tmp_path: Path, trusted_key: TrustedKey
    ) -> None:
        """An SBOM changed after signing no longer matches the signed digest."""
        path = tmp_path / "store" / "releases" / built.digest / SBOM_FILE
        sbom = json.loads(path.read_bytes())
        sbom["components"][0]["version"] = "9.9.9"
        path.write_text(json.dumps(sbom))
        report = verify_release(tmp_path / "store", built.release_id, [trusted_key])
        assert any(SBOM_FILE in p and "signature covers" in p for p in report.problems)

    def test_garbage_manifest_is_reported(
        self, built: BuildResult, tmp_path: Path, trusted_key: TrustedKey
    ) -> None:
        """A manifest that is not JSON is a verification problem, not a crash."""
        path = tmp_path / "store" / "releases" / built.digest / MANIFEST_FILE
        path.write_bytes(b"\x00garbage")
        report = verify_release(tmp_path / "store", built.digest, [trusted_key])
        assert not report.ok and "not a valid manifest" in report.problems[0]


def _manifest(store: Path, built: BuildResult) -> Manifest:
    return ReleaseStore(store).load(built.digest).manifest


class TestStatementProblems:
    """The one check that a signed Statement vouches for exactly this release."""

    DIGEST, RELEASE, SBOM = "a" * 64, "shop@1+aaaaaaaaaaaa", "b" * 64

    def statement(self, **changes: object) -> dict[str, object]:
        """A statement naming DIGEST, RELEASE and SBOM, with ``changes`` applied."""
        base: dict[str, object] = {
            "subject": [{"name": "m", "digest": {"sha256": self.DIGEST}}],
            "predicate": {
                "release_id": self.RELEASE,
                "sbom": {"name": "sbom.cdx.json", "sha256": self.SBOM},
            },
        }
        return {**base, **changes}

    def test_exact_statement_has_no_problem(self) -> None:
        """A statement naming this manifest, release ID and SBOM passes."""
        assert statement_problems(self.statement(), self.DIGEST, self.RELEASE, self.SBOM) == []

    def test_each_mismatch_is_named(self) -> None:
        """Another manifest, release ID and SBOM digest are each reported."""
        problems = statement_problems(self.statement(), "c" * 64, "shop@2+cccccccccccc", "d" * 64)
        assert len(problems) == 3
        assert "another manifest" in problems[0]
        assert "shop@2+cccccccccccc" in problems[1]
        assert problems[2].startswith("sbom.cdx.json: SHA-256 is " + "d" * 64)

    @pytest.mark.parametrize(
        "changes",
        [
            {"subject": "not a list"},
            {"subject": [7, None, {"digest": "not a dict"}]},
            {"predicate": ["not", "a", "dict"]},
            {"predicate": {"release_id": 7, "sbom": "nope"}},
        ],
    )
    def test_hostile_shapes_are_problems_not_crashes(self, changes: dict[str, object]) -> None:
        """A validly signed statement of any JSON shape yields problems, never an exception."""
        assert statement_problems(self.statement(**changes), self.DIGEST, self.RELEASE, self.SBOM)
