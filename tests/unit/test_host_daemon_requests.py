"""The host daemon's request handling and the image it boots from a manifest, in-process (no boot, no socket).

Inputs tried: not JSON, a JSON array, an unknown op, an unknown field, a challenge that is not an
object, a Trust Authority name with a slash, a request before the host has booted; a manifest whose
component digest is not the stand-in bytes', and one with a runtime path no image has.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vmcrypt.trust.host_daemon import BootSpec, HostDaemon
from vmcrypt.trust.images import ImageError, ImageManifest, image_from_manifest, make_image

IMAGE = make_image("8.0.2", vibs=("esx-base", "vsan"), files_per_vib=2)


def test_an_image_is_rebuilt_from_its_manifest_and_a_foreign_one_is_refused() -> None:
    rebuilt = image_from_manifest(ImageManifest.from_json(IMAGE.manifest.to_json()))
    assert dict(rebuilt.contents) == dict(IMAGE.contents)
    assert dict(rebuilt.runtime_contents) == dict(IMAGE.runtime_contents)
    first = IMAGE.manifest.components[0]
    other = dataclasses.replace(first, sha256=bytes(32))
    with pytest.raises(ImageError, match=f"component '{first.name}' match its digest"):
        image_from_manifest(dataclasses.replace(IMAGE.manifest, components=(other, *IMAGE.manifest.components[1:])))
    with pytest.raises(ImageError, match="runtime file /etc/passwd is not one this host can produce"):
        image_from_manifest(dataclasses.replace(IMAGE.manifest, runtime_files={"/etc/passwd": bytes(32)}))


@pytest.mark.parametrize(("line", "error"), [
    (b"{not json", "the request is not JSON"),
    (b"[]", "the request must be a JSON object"),
    (b'{"op": "format"}', "unknown op 'format'"),
    (b'{"op": "describe", "x": 1}', "unknown field(s) x"),
    (b'{"op": "answer", "challenge": []}', "challenge must be a JSON object"),
    (b'{"op": "attest", "authority": "a/b"}', "authority must be the name of an imported Trust Authority"),
    (b'{"op": "identity"}', "the host is not booted"),
])
def test_bad_requests_get_an_error_answer(tmp_path: Path, line: bytes, error: str) -> None:
    daemon = HostDaemon(tmp_path, "esx-1", BootSpec(IMAGE))
    answer = daemon.handle_line(line)
    assert answer["ok"] is False and answer["error"].startswith(error)
    assert not (tmp_path / "hosts").exists()  # nothing booted or written for a request


def test_a_host_name_that_is_not_plain_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="is not a plain name"):
        HostDaemon(tmp_path, "../escape", BootSpec(IMAGE))
