"""cffi build script for ``registry._hashing``, the C hashing core.

The C declarations live in real header files under ``_tarsum/`` and are read
into ``ffi.cdef`` verbatim; ``set_source`` compiles the C sources next to them.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "_tarsum")

# Headers whose declarations form the C core's public face, in cdef order.
CDEF_HEADERS = ["rh_sha256.h", "rh_tarsum.h"]
SOURCES = ["rh_sha256.c", "rh_sha256_shani.c", "rh_tarsum.c"]


def _check_present() -> None:
    """Fail the build, naming every missing header and source, rather than
    build a core that lacks some of them (which would only fail at import)."""
    missing = [name for name in CDEF_HEADERS + SOURCES if not os.path.isfile(os.path.join(SRC, name))]
    if missing:
        raise SystemExit(
            "build_ext.py: missing C file(s) in %s: %s (a source checkout must contain the whole _tarsum/ directory)"
            % (SRC, ", ".join(missing))
        )


def _read(name: str) -> str:
    with open(os.path.join(SRC, name)) as f:
        return f.read()


_check_present()
ffibuilder = FFI()
ffibuilder.cdef("\n".join(_read(h) for h in CDEF_HEADERS))
ffibuilder.set_source(
    "registry._hashing",
    "\n".join(["#include <stdint.h>", "#include <stddef.h>"] + ['#include "%s"' % h for h in CDEF_HEADERS]),
    sources=[os.path.join("_tarsum", s) for s in SOURCES],
    include_dirs=[SRC],
    extra_compile_args=["-O3", "-Wall", "-Wextra", "-std=c99"] + os.environ.get("RH_CFLAGS", "").split(),
    extra_link_args=os.environ.get("RH_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
