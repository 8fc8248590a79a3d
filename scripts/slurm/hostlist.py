"""Expand a SLURM host list (`$SLURM_JOB_NODELIST`) into host names, one a line, as
`scontrol show hostnames` does; the SLURM launchers use it where scontrol is not installed.

    python scripts/slurm/hostlist.py "gpu[01-02,07],login-a"   # gpu01 gpu02 gpu07 login-a

Grammar: hosts separated by commas outside brackets; each bracket holds comma-separated numbers or
ranges `a-b`, zero-padded to the width of `a`; several brackets in one name multiply out, in order.
Standard library only, so it runs with any python3 on a node.
"""

from __future__ import annotations

import re
import sys

_BRACKET = re.compile(r"\[([^\[\]]*)\]")


class HostListError(ValueError):
    """A host list that is not in SLURM's compressed syntax."""


def _split_top_level(spec: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(spec):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if depth not in (0, 1):
            raise HostListError(f"unbalanced brackets in host list {spec!r}")
        if char == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    if depth != 0:
        raise HostListError(f"unbalanced brackets in host list {spec!r}")
    parts.append(spec[start:])
    return [p.strip() for p in parts if p.strip()]


def _bracket_items(body: str, spec: str) -> list[str]:
    items = []
    for piece in body.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", piece.strip())
        if match is None:
            raise HostListError(f"bad range {piece!r} in host list {spec!r}")
        first, last = match.group(1), match.group(2) or match.group(1)
        if int(last) < int(first):
            raise HostListError(f"descending range {piece!r} in host list {spec!r}")
        items += [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]
    return items


def _expand_name(name: str, spec: str) -> list[str]:
    match = _BRACKET.search(name)
    if match is None:
        if "[" in name or "]" in name:
            raise HostListError(f"unbalanced brackets in host list {spec!r}")
        return [name]
    head, tail = name[:match.start()], name[match.end():]
    return [head + item + rest for item in _bracket_items(match.group(1), spec) for rest in _expand_name(tail, spec)]


def expand_hostlist(spec: str) -> list[str]:
    """Every host of a compressed SLURM host list, in order."""
    hosts = [host for part in _split_top_level(spec) for host in _expand_name(part, spec)]
    if not hosts:
        raise HostListError("empty host list")
    return hosts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python scripts/slurm/hostlist.py HOSTLIST   (e.g. \"gpu[01-04]\")", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    try:
        print("\n".join(expand_hostlist(argv[0])))
    except HostListError as err:
        print(f"hostlist: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
