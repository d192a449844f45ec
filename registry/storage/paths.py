"""The storage layout, compatible with CNCF Distribution's. Pure functions.

::

    /docker/registry/v2/
      blobs/<alg>/<first 2 hex>/<hex>/data
      repositories/<name>/
        _layers/<alg>/<hex>/link                          -> "sha256:<hex>"
        _manifests/revisions/<alg>/<hex>/link
        _manifests/tags/<tag>/current/link
        _manifests/tags/<tag>/index/<alg>/<hex>/link
        _uploads/<id>/data
        _uploads/<id>/startedat                           RFC 3339 time
        _uploads/<id>/hashstates/<alg>/<offset>           Go MarshalBinary state
        _referrers/<subject alg>/<subject hex>/<alg>/<hex>/link   (this registry's
                                                          referrers index; Distribution
                                                          ignores it)

A ``link`` file holds the digest string. Repository names contain ``/`` and
become nested directories; name components never start with ``_``, so the
``_layers``/``_manifests``/``_uploads`` directories cannot clash with them.
"""

from __future__ import annotations

from registry.digest import Digest

ROOT = "/docker/registry/v2"
BLOBS = f"{ROOT}/blobs"
REPOSITORIES = f"{ROOT}/repositories"


def blob_dir(d: Digest) -> str:
    return f"{BLOBS}/{d.algorithm}/{d.hex[:2]}/{d.hex}"


def blob_data(d: Digest) -> str:
    return f"{blob_dir(d)}/data"


def repository(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layer_link(name: str, d: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_layers/{d.algorithm}/{d.hex}/link"


def layers_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_layers"


def manifests_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests"


def manifest_revisions_dir(name: str) -> str:
    return f"{manifests_dir(name)}/revisions"


def manifest_revision_link(name: str, d: Digest) -> str:
    return f"{manifests_dir(name)}/revisions/{d.algorithm}/{d.hex}/link"


def tags_dir(name: str) -> str:
    return f"{manifests_dir(name)}/tags"


def tag_dir(name: str, tag: str) -> str:
    return f"{tags_dir(name)}/{tag}"


def tag_current_link(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current/link"


def tag_index_link(name: str, tag: str, d: Digest) -> str:
    return f"{tag_dir(name, tag)}/index/{d.algorithm}/{d.hex}/link"


def tag_index_dir(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/index"


def referrers_dir(name: str, subject: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_referrers/{subject.algorithm}/{subject.hex}"


def referrer_link(name: str, subject: Digest, d: Digest) -> str:
    return f"{referrers_dir(name, subject)}/{d.algorithm}/{d.hex}/link"


def uploads_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_uploads"


def upload_dir(name: str, upload_id: str) -> str:
    return f"{uploads_dir(name)}/{upload_id}"


def upload_data(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/data"


def upload_startedat(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"


def upload_hashstates_dir(name: str, upload_id: str, algorithm: str = "sha256") -> str:
    return f"{upload_dir(name, upload_id)}/hashstates/{algorithm}"


def upload_hashstate(name: str, upload_id: str, offset: int, algorithm: str = "sha256") -> str:
    return f"{upload_hashstates_dir(name, upload_id, algorithm)}/{offset}"
