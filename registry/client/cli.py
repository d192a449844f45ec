"""``registry-client``: copy, list tags, inspect and delete images, skopeo style.

Options follow the subcommand::

    registry-client copy [--creds U:P] [--tls-verify=false] SRC DST
    registry-client tags docker://HOST/NAME
    registry-client inspect [--raw | --config] docker://HOST/NAME[:TAG|@DIGEST]
    registry-client delete docker://HOST/NAME[:TAG|@DIGEST]

``SRC`` / ``DST`` are ``docker://HOST/NAME[:TAG|@DIGEST]`` or ``oci:DIR[:TAG]``.
Credentials come from ``--creds`` (``--src-creds`` / ``--dest-creds`` for
one side of a copy), else from ``--authfile`` or the default auth files
(``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``~/.docker/config.json``).  ``--tls-verify=false`` uses https without
checking the certificate and falls back to http; loopback registries
(127.0.0.1, localhost) are spoken to over http unless ``--tls-verify=false``
or ``--cert-dir`` asks for TLS.  ``--cert-dir`` holds ``*.crt`` CA files
and an optional ``*.cert``/``*.key`` client pair (default:
``/etc/containers/certs.d/HOST`` or ``/etc/docker/certs.d/HOST`` when present).

Errors go to stderr as one line, with exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from registry.client.auth import Credentials, credentials_for, default_auth_files
from registry.client.client import DeleteOutcome, RegistryClient
from registry.client.errors import ClientError
from registry.client.images import DEFAULT_CONCURRENCY, ITransferProgress, copy_image, local_manifest, pull_image, push_image
from registry.client.layout import OCILayout
from registry.client.progress import TerminalProgress
from registry.client.references import DockerReference, OCIReference, ReferenceError_, parse_reference
from registry.client.transport import TLSConfig
from registry.digest import Digest

PROGRAM = "registry-client"
CERT_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))


class UsageError(Exception):
    """Bad command-line input (exit status 2)."""


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, no usage dump
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _side_options(parser: argparse.ArgumentParser, prefix: str = "", what: str = "the registry") -> None:
    dash = f"--{prefix}-" if prefix else "--"
    dest = f"{prefix}_" if prefix else ""
    parser.add_argument(f"{dash}creds", dest=f"{dest}creds", metavar="USER:PASS", help=f"credentials for {what}")
    parser.add_argument(
        f"{dash}tls-verify", dest=f"{dest}tls_verify", type=parse_bool, nargs="?", const=True, default=None,
        metavar="BOOL", help=f"check {what}'s TLS certificate (false: https unverified, then http)",
    )
    parser.add_argument(f"{dash}cert-dir", dest=f"{dest}cert_dir", type=Path, metavar="DIR",
                        help=f"CA (*.crt) and client (*.cert, *.key) files for {what}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROGRAM, description="Copy, list, inspect and delete container images in registries.")
    parser.add_argument("--debug", action="store_true", help="show a traceback for unexpected errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--authfile", type=Path, metavar="FILE", help="docker config.json / containers auth.json")
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    copy = commands.add_parser("copy", help="copy an image (docker:// or oci:) to another place")
    common(copy)
    _side_options(copy, "", "both registries")
    _side_options(copy, "src", "the source registry")
    _side_options(copy, "dest", "the destination registry")
    copy.add_argument("--concurrency", "--image-parallel-copies", type=int, default=DEFAULT_CONCURRENCY,
                      metavar="N", help="blobs copied at the same time (default %(default)s)")
    copy.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    copy.add_argument("source", metavar="SRC")
    copy.add_argument("destination", metavar="DST")

    tags = commands.add_parser("tags", aliases=["list-tags"], help="list the tags of a repository (JSON)")
    common(tags)
    _side_options(tags)
    tags.add_argument("image", metavar="docker://HOST/NAME")

    inspect = commands.add_parser("inspect", help="show an image's manifest and config (JSON)")
    common(inspect)
    _side_options(inspect)
    output = inspect.add_mutually_exclusive_group()
    output.add_argument("--raw", action="store_true", help="print the manifest bytes only")
    output.add_argument("--config", action="store_true", help="print the config only")
    inspect.add_argument("image", metavar="docker://HOST/NAME[:TAG|@DIGEST]")

    delete = commands.add_parser("delete", help="delete a tag or a manifest")
    common(delete)
    _side_options(delete)
    delete.add_argument("image", metavar="docker://HOST/NAME[:TAG|@DIGEST]")
    return parser


def _docker(text: str, what: str = "image") -> DockerReference:
    try:
        reference = parse_reference(text)
    except ReferenceError_ as error:
        raise UsageError(str(error)) from None
    if not isinstance(reference, DockerReference):
        raise UsageError(f"{what} must be a docker://HOST/NAME reference, not {text!r}")
    return reference


def _credentials(creds: str | None, authfile: Path | None, host: str) -> Credentials | None:
    if creds:
        try:
            return Credentials.parse(creds)
        except ValueError as error:
            raise UsageError(f"--creds: {error}") from None
    files = [authfile] if authfile is not None else default_auth_files()
    if authfile is not None and not authfile.exists():
        raise UsageError(f"--authfile {authfile}: no such file")
    return credentials_for(host, files)


def _make_client(
    reactor: Any, ref: DockerReference, creds: str | None, authfile: Path | None,
    tls_verify: bool | None, cert_dir: Path | None,
) -> RegistryClient:
    verify = True if tls_verify is None else tls_verify
    scheme: str | None = None
    tls = TLSConfig(verify)
    if cert_dir is None:
        for root in CERT_DIRS:
            if (root / ref.host).is_dir():
                cert_dir = root / ref.host
                break
    if cert_dir is not None:
        tls = TLSConfig.from_cert_dir(cert_dir, verify)
        if verify:
            scheme = "https"  # certificates were given: speak TLS even to loopback
    return RegistryClient(
        ref.api_host, reactor=reactor, scheme=scheme, tls=tls,
        credentials=_credentials(creds, authfile, ref.host),
    )


def _pick(args: argparse.Namespace, side: str, option: str) -> Any:
    specific = getattr(args, f"{side}_{option}")
    return specific if specific is not None else getattr(args, option)


async def run(reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Carry out the parsed command; fires with the exit status."""
    clients: list[RegistryClient] = []

    def client_for(ref: DockerReference, side: str | None = None) -> RegistryClient:
        if side is None:
            made = _make_client(reactor, ref, args.creds, args.authfile, args.tls_verify, args.cert_dir)
        else:
            made = _make_client(
                reactor, ref, _pick(args, side, "creds"), args.authfile,
                _pick(args, side, "tls_verify"), _pick(args, side, "cert_dir"),
            )
        clients.append(made)
        return made

    try:
        if args.command == "copy":
            return await _copy(args, client_for, out, err)
        if args.command in ("tags", "list-tags"):
            ref = _docker(args.image)
            if ref.tag is not None or ref.digest is not None:
                raise UsageError(f"tags takes a repository without tag or digest, not {args.image!r}")
            found = await client_for(ref).tags(ref.name)
            json.dump({"Repository": f"{ref.host}/{ref.name}", "Tags": found}, out, indent=4)
            out.write("\n")
            return 0
        if args.command == "inspect":
            return await _inspect(args, client_for, out)
        if args.command == "delete":
            ref = _docker(args.image)
            outcome, digest = await client_for(ref).delete(ref.name, ref.reference)
            if outcome is DeleteOutcome.TAG_REMOVED:
                out.write(f"Removed tag {ref.reference} of {ref.host}/{ref.name} (the manifest stays)\n")
            else:
                also = f" (tag {ref.tag} resolved; every tag on it is gone)" if ref.digest is None else ""
                out.write(f"Deleted manifest {digest} of {ref.host}/{ref.name}{also}\n")
            return 0
        raise UsageError(f"unknown command {args.command!r}")
    finally:
        for made in clients:
            await made.close()


async def _copy(args: argparse.Namespace, client_for: Any, out: TextIO, err: TextIO) -> int:
    try:
        source = parse_reference(args.source)
        destination = parse_reference(args.destination)
    except ReferenceError_ as error:
        raise UsageError(str(error)) from None
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    progress: ITransferProgress | None = None
    terminal: TerminalProgress | None = None
    if not args.quiet and err.isatty():
        terminal = TerminalProgress(err)
        progress = terminal
    try:
        if isinstance(source, OCIReference) and isinstance(destination, OCIReference):
            raise UsageError("copying from oci: to oci: is not supported; one side must be docker://")
        if isinstance(source, OCIReference) and isinstance(destination, DockerReference):
            layout = OCILayout(source.path)
            if not layout.exists():
                raise ClientError(f"{source.path} is not an OCI image layout (no oci-layout file)")
            # skopeo's default tag is "latest"; a digest destination is pushed by digest.
            reference = destination.tag or (None if destination.digest is not None else "latest")
            if destination.digest is not None:
                local = local_manifest(layout, source.tag)
                if local.digest != destination.digest:
                    raise ClientError(
                        f"{args.destination}: the image's digest is {local.digest}, not {destination.digest}"
                    )
            top = await push_image(
                client_for(destination, "dest"), layout, source.tag, destination.name, reference,
                concurrency=args.concurrency, progress=progress,
            )
        elif isinstance(source, DockerReference) and isinstance(destination, OCIReference):
            top = await pull_image(
                client_for(source, "src"), source.name, source.reference, OCILayout(destination.path),
                tag=destination.tag or (source.tag if source.digest is None else None),
                concurrency=args.concurrency, progress=progress,
            )
        else:
            assert isinstance(source, DockerReference) and isinstance(destination, DockerReference)
            if destination.digest is not None:
                raise UsageError("a docker:// destination is named by tag, not digest")
            source_client = client_for(source, "src")
            destination_client = client_for(destination, "dest")
            top = await copy_image(
                source_client, source.name, source.reference, destination_client, destination.name,
                destination.tag or (source.tag if source.digest is None else None),
                concurrency=args.concurrency, progress=progress,
            )
    finally:
        if terminal is not None:
            terminal.close()
    out.write(f"{top.digest}\n")
    return 0


async def _inspect(args: argparse.Namespace, client_for: Any, out: TextIO) -> int:
    ref = _docker(args.image)
    client: RegistryClient = client_for(ref)
    manifest = await client.get_manifest(ref.name, ref.reference)
    if args.raw:
        out.write(manifest.body.decode("utf-8", "replace"))
        return 0
    document = manifest.json()
    config: Any = None
    if not manifest.is_index and isinstance(document, dict) and isinstance(document.get("config"), dict):
        descriptor = document["config"]
        digest = Digest.parse(str(descriptor.get("digest", "")))
        config_bytes = await client.read_blob(ref.name, digest)
        try:
            config = json.loads(config_bytes)
        except ValueError:
            config = None  # an artifact's config need not be JSON
    if args.config:
        json.dump(config, out, indent=4)
        out.write("\n")
        return 0
    report = {
        "Name": f"{ref.host}/{ref.name}",
        "Reference": ref.reference,
        "Digest": str(manifest.digest),
        "MediaType": manifest.media_type,
        "Manifest": document,
        "Config": config,
    }
    json.dump(report, out, indent=4)
    out.write("\n")
    return 0


async def execute(reactor: Any, argv: Sequence[str] | None, out: TextIO, err: TextIO) -> int:
    """Parse ``argv``, carry out the command and report errors on ``err`` as
    one line; fires with the exit status (0, 1 for errors, 2 for usage)."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        err.write(f"{error}\n")
        return 2
    try:
        return await run(reactor, args, out, err)
    except Exception as error:
        return _report(error, err, getattr(args, "debug", False), Failure())


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point of the ``registry-client`` console script; returns the exit status."""
    from twisted.internet import reactor

    status: list[int] = []

    def finished(result: object) -> None:
        if isinstance(result, Failure):  # execute() reports errors itself; this is a bug
            status.append(_report(result.value, err or sys.stderr, True, result))
        else:
            status.append(int(result) if isinstance(result, int) else 1)
        reactor.stop()

    def start() -> None:
        Deferred.fromCoroutine(execute(reactor, argv, out or sys.stdout, err or sys.stderr)).addBoth(finished)

    reactor.callWhenRunning(start)
    reactor.run()
    return status[0] if status else 1


def _report(error: BaseException, err: TextIO, debug: bool, failure: Any) -> int:
    if isinstance(error, UsageError):
        err.write(f"{PROGRAM}: {error}\n" if not str(error).startswith(PROGRAM) else f"{error}\n")
        return 2
    if isinstance(error, (ClientError, OSError, ValueError)):
        message = str(error).replace("\n", " ")
        err.write(f"{PROGRAM}: error: {message}\n")
        return 1
    if debug:
        err.write(failure.getTraceback())
    err.write(f"{PROGRAM}: internal error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
