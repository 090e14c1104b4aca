"""Render the acceptance table of docs/reliability.md from real outcomes.

    RELIABILITY_LOG=/tmp/rel.jsonl .venv/bin/python -m pytest tests/test_reliability.py tests/test_reliability_checks.py
    .venv/bin/python benchmarks/reliability_matrix.py /tmp/rel.jsonl > /tmp/table.md

Every row is one outcome the tests observed through the CLI (``record`` in tests/test_reliability.py): the case,
the command (temporary folders stripped), the exit code and the first stderr line. The footer counts the rows
whose message is one line, whose exit is non-zero and which say "internal error" — the acceptance numbers.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

_TMP = re.compile(r"(/tmp/[^ '\"]*/|/private/var/[^ '\"]*/)")
_CTRL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")      # terminal escapes, \r


def clean(text: str) -> str:
    """Drop temporary folder prefixes (``/tmp/pytest-of-root/.../box.h5`` -> ``box.h5``), escape pipes."""
    text = _CTRL.sub("", _TMP.sub("", str(text)))
    return text.replace("|", "\\|").replace("\n", " ").strip()


def command(argv: list[str]) -> str:
    parts = [clean(a) for a in argv]
    if parts and parts[0] not in ("info", "partition", "train", "rollout", "render", "import", "generate",
                                  "migrate-checkpoint", "demo"):
        return "`" + " ".join(parts) + "`"
    return "`meshgnn " + " ".join(parts) + "`"


def rows(path: Path) -> list[dict]:
    seen, out = set(), []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        key = (r["case"], r["rc"], clean(r["message"]))
        if key in seen:
            continue
        seen.add(key)
        out.append(r)
    return out


def render(records: list[dict]) -> str:
    lines = ["| case | command | exit | message (first stderr line) |", "| --- | --- | --- | --- |"]
    errors = [r for r in records if r["rc"] not in (0, None, -9)]
    for r in records:
        lines.append(f"| {clean(r['case'])} | {command(r['argv'])} | {r['rc']} | {clean(r['message'])} |")
    internal = sum("internal error" in r["message"] for r in records)
    nonzero = sum(r["rc"] != 0 for r in errors)
    lines += ["", f"{len(records)} outcomes; {len(errors)} refusals ({nonzero} with exit != 0); "
                  f"{internal} saying \"internal error\" (one stderr line each: asserted by the tests)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(render(rows(Path(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
