"""``flava-zoo zoo list | info | download | verify | forget | publish``: the model zoo from the shell.

``main(argv)`` takes the arguments after ``zoo`` and returns the exit status (0 success,
1 a failed download or verification, 2 a usage error), so tests call it in-process.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import (
    DownloadError,
    add_registry,
    download,
    forget,
    get_entry,
    list_pretrained,
    publish,
    verify,
)
from .download import cache_path


def _fmt_size(size: int | None) -> str:
    if size is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def _cmd_list(args: argparse.Namespace) -> int:
    names = list_pretrained(args.pattern)
    if args.json:
        print(json.dumps(names))
        return 0
    for name in names:
        entry = get_entry(name)
        cached = all(cache_path(s).is_file() for s in entry.files.values())
        print(f"{name:<32} {entry.format:<16} {entry.license:<14} {'cached' if cached else ''}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    entry = get_entry(args.name)
    data: dict[str, Any] = {"name": entry.name, "registry": entry.registry, **entry.to_dict()}
    for role, spec in entry.files.items():
        data["files"][role]["cache"] = str(cache_path(spec))
        data["files"][role]["cached"] = cache_path(spec).is_file()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{entry.name}  ({entry.format} format, {entry.license})")
    if entry.description:
        print(f"  {entry.description}")
    if entry.paper:
        print(f"  paper: {entry.paper.get('title', '')} {entry.paper.get('url', '')}".rstrip())
    print(f"  registry: {entry.registry}")
    for role, spec in entry.files.items():
        state = "cached" if cache_path(spec).is_file() else "not cached"
        print(f"  {role}: {spec.source}")
        print(
            f"    sha256 {spec.sha256 or 'unknown (trust on first use)'}, size {_fmt_size(spec.size)}, {state}"
        )
    values = entry.metrics.get("values", {})
    if values:
        print(f"  metrics ({entry.metrics.get('source', 'reported')}):")
        for key, value in values.items():
            print(f"    {key}: {value}")
    if entry.notes:
        print(f"  notes: {entry.notes}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    for name in args.names:
        paths = download(name, force=args.force, progress=not args.no_progress)
        for role, path in paths.items():
            print(f"{get_entry(name).name} {role}: {path}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    names = args.names or list_pretrained()
    failed = 0
    checked = 0
    for name in names:
        for role, result in verify(name).items():
            if result.status == "missing":
                if args.names:
                    print(f"{name} {role}: not cached ({result.path})")
                continue
            checked += 1
            if result.ok:
                print(f"{name} {role}: ok ({result.trust}) {result.path}")
            elif result.status == "invalid":
                failed += 1
                print(
                    f"{name} {role}: INVALID {result.path}: {result.detail}; "
                    f"re-download with `flava-zoo zoo download {name} --force`",
                    file=sys.stderr,
                )
            else:
                failed += 1
                print(
                    f"{name} {role}: CORRUPTED {result.path}: sha256 {result.actual}, "
                    f"expected {result.expected} ({result.trust}); "
                    f"re-download with `flava-zoo zoo download {name} --force`",
                    file=sys.stderr,
                )
    if not checked:
        print("nothing cached to verify")
    return 1 if failed else 0


def _cmd_forget(args: argparse.Namespace) -> int:
    for name in args.names:
        entry = get_entry(name)
        for role, digest in forget(entry.name, args.role or None).items():
            if digest is None:
                registry_digest = entry.files[role].sha256
                note = f"pinned by the registry ({registry_digest})" if registry_digest else "none"
                print(f"{entry.name} {role}: no digest recorded at first use ({note})")
            else:
                print(f"{entry.name} {role}: forgot sha256 {digest}")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    paper = {"url": args.paper} if args.paper else None
    entry = publish(
        args.export_dir,
        args.url_base,
        name=args.name,
        registry=args.output,
        license=args.license,
        description=args.description,
        paper=paper,
        default=args.default,
    )
    if args.output:
        print(f"wrote {args.name} to {args.output}")
        for role, spec in entry["files"].items():
            print(f"  {role}: {spec['url']}  sha256 {spec['sha256']}  {_fmt_size(spec['size'])}")
    else:
        print(json.dumps({args.name: entry}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flava-zoo zoo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--registry",
        action="append",
        default=[],
        metavar="PATH_OR_URL",
        help="also read this registry (repeatable; FLAVA_ZOO_REGISTRY works too)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list pretrained weights")
    p.add_argument(
        "pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'flava-base.*'"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_cmd_list)

    p = sub.add_parser("info", help="show an entry: files, digests, licence, paper, metrics")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_cmd_info)

    p = sub.add_parser("download", help="download and check the files of entries")
    p.add_argument("names", nargs="+")
    p.add_argument(
        "--force",
        action="store_true",
        help="download again even if cached; replaces a digest recorded at first use",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_cmd_download)

    p = sub.add_parser("verify", help="hash cached files against their expected sha256")
    p.add_argument("names", nargs="*", help="entries to verify (default: every cached one)")
    p.set_defaults(run=_cmd_verify)

    p = sub.add_parser(
        "forget",
        help="drop the digests recorded at first download (trust on first use) of entries",
    )
    p.add_argument("names", nargs="+")
    p.add_argument("--role", action="append", default=[], help="only this file role (repeatable)")
    p.set_defaults(run=_cmd_forget)

    p = sub.add_parser("publish", help="write a registry entry for an exported model")
    p.add_argument("export_dir", help="a folder written by flava_zoo.save_pretrained")
    p.add_argument(
        "--url-base",
        required=True,
        help="where the folder's files will be served (URL, path, or '.' for beside the registry)",
    )
    p.add_argument("--name", required=True, help="arch.tag, e.g. flava-tiny.shapes")
    p.add_argument("-o", "--output", help="registry file to add the entry to (default: print it)")
    p.add_argument("--license", default="unspecified")
    p.add_argument("--description", default="")
    p.add_argument("--paper", help="URL of the paper or report")
    p.add_argument(
        "--default", action="store_true", help="make it the architecture's default weights"
    )
    p.set_defaults(run=_cmd_publish)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``flava-zoo zoo`` with ``argv`` (the arguments after ``zoo``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        for source in args.registry:
            add_registry(source)
        return args.run(args)
    except (DownloadError, ValueError, FileNotFoundError) as err:
        print(f"flava-zoo zoo: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
