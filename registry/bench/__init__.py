"""Benchmarks of the registry: ``python -m registry.bench <section> [--json]``.

Benchmarks are not tests: they print figures and never pass or fail on them.
``make bench`` runs ``python -m registry.bench all``.

Sections
--------
Each section is a module ``registry.bench.<section>`` exposing::

    def run(args: argparse.Namespace) -> dict[str, Any]: ...

``run`` does its measurements, prints human-readable lines as it goes, and
returns its figures as a JSON-serialisable dict.  ``args`` carries the
dispatcher's options (``args.section``, ``args.json``, ``args.mib``: the data
volume per measurement in MiB, ``None`` for the section's default) plus any
options the dispatcher did not recognise in ``args.extra`` (a list of
strings) for the section to parse itself.  A section must not print JSON:
with ``--json`` the dispatcher prints one object ``{section: figures, ...}``
after every section has run.

The known sections, run in this order by ``all``:

* ``hashing`` (``registry/bench/hashing.py``): SHA-256 and tarsum throughput,
  state export/import cost, thread scaling;
* ``storage`` (``registry/bench/storage.py``): driver write/read throughput;
* ``registry`` (``registry/bench/registry.py``): the HTTP registry end to end;
* ``versus`` (``registry/bench/versus.py``): ours against CNCF Distribution
  2.8.2 on the same machine, paired A/B/B/A runs, as speed ratios with a
  verdict against each figure's target, including real docker push/pull
  (``dockerpush.py``) and a soak of ours (``soak.py``);
* ``s3`` (``registry/bench/s3.py``): ours on a throwaway Ceph RGW against plain
  S3 on the same gateway (multipart PUT, GET; downloads through the 307
  redirect), and manifest GET req/s with and without the Redis
  blob-descriptor cache.

``all`` runs every section whose module exists and says which do not exist
yet.  Throughput figures are in MB/s with MB = 2**20 bytes.
"""

from __future__ import annotations

#: Section names in the order ``all`` runs them.
SECTIONS: tuple[str, ...] = ("hashing", "storage", "registry", "versus", "s3")

MiB = 1 << 20
