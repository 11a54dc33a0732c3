"""Compare the printed outputs of two versions of a notebook, number by number.

    python scripts/compare_outputs.py OLD.ipynb NEW.ipynb [--units K] [--sanitize FILE | --no-sanitize]

Pairs the code cells of OLD and NEW in order (they must have the same number of code cells) and prints every
difference in their text outputs (text/plain, text/markdown, text/html, stdout, stderr; other fields exactly,
images not at all, as nbval does), after the nbval sanitizer (tests/sanitize.cfg by default). A number printed
differently is shown with its distance in units of its last printed digit (the coarser of the two sides), the rule
of tests/nbval_tolerance.py, whose comparison this reuses. Each differing cell gets nbval's verdict: an untagged
cell must match exactly; a cell tagged "approx" (NEW's metadata, else OLD's) within its k ("approx_units", 1 by
default); ``--units K`` asks instead what if every cell were tagged approx with k = K.

Exit status: 0 when nbval would pass every cell, 1 when some cell would fail, 2 when the notebooks do not pair up.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections import defaultdict
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.nbval_tolerance import TEXT_KEYS, TextMismatch, cell_units, fmt_decimal, number_diffs  # noqa: E402

# nbval 0.11's fields that are never compared (IPyNbFile.skip_compare, without --nbdime)
SKIP = {"metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
        "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg"}


def read_patterns(path: Path | None) -> list[tuple[str, str]]:
    if path is None:
        return []
    return re.findall(r"^regex: (.*)$\n^replace: (.*)$", path.read_text(), flags=re.MULTILINE)


def flatten(outputs, patterns) -> dict[str, list]:
    """nbval's view of a cell's outputs: streams merged per name, then {field: [sanitized values in order]}."""
    from nbval.plugin import coalesce_streams  # the same merging of stream pieces, \r and \b as nbval

    outputs = coalesce_streams([nbformat.from_dict(dict(o)) for o in outputs])
    flat = defaultdict(list)

    def sanitize(s):
        if isinstance(s, list):  # multi-line strings as stored on disk
            s = "".join(s)
        if isinstance(s, str):
            for regex, replace in patterns:
                s = re.sub(regex, replace, s)
        return s

    for out in outputs:
        if out.get("output_type") == "stream":
            flat[out["name"]].append(sanitize(out["text"]))
            continue
        for key, value in out.items():
            if key in SKIP:
                continue
            if key == "data":
                for mime, v in value.items():
                    if mime not in SKIP:
                        flat[mime].append(sanitize(v))
            else:
                flat[key].append(sanitize(value))
    return flat


def compare_cell(old, new, patterns, units_override):
    """Lines describing the differences of one cell pair, and whether nbval would pass it."""
    try:
        k = units_override if units_override is not None else cell_units(new)
        if k is None and units_override is None:
            k = cell_units(old) if "approx" in (old.metadata.get("tags") or []) else None
    except ValueError as e:
        return [f"  bad tolerance setting: {e}"], False
    a, b = flatten(old.outputs, patterns), flatten(new.outputs, patterns)
    lines, ok = [], True
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, []), b.get(key, [])
        if len(va) != len(vb):
            lines.append(f"  {key}: {len(va)} output(s) in OLD, {len(vb)} in NEW")
            ok = False
            continue
        for j, (x, y) in enumerate(zip(va, vb)):
            if x == y:
                continue
            where = f"{key}" + (f"[{j}]" if len(va) > 1 else "")
            if key in TEXT_KEYS and isinstance(x, str) and isinstance(y, str):
                try:
                    diffs = number_diffs(x, y)
                except TextMismatch as e:
                    lines.append(f"  {where}: {e}")
                    udiff = list(difflib.unified_diff(x.splitlines(), y.splitlines(), "OLD", "NEW", n=0, lineterm=""))
                    lines.extend("    " + d for d in udiff[2:22])
                    ok = False
                    continue
                for d in diffs:
                    kind = (f"{_signed(d.delta)} unit{'' if d.units == 1 else 's'} of {fmt_decimal(d.unit)}"
                            if d.measured else "integer, must be equal")
                    verdict = "ok" if (k is not None and d.allowed(k)) else "FAILS"
                    lines.append(f"  {where} line {d.line}: {d.ref} -> {d.new}  ({kind}) {verdict}")
                    ok &= verdict == "ok"
            else:
                lines.append(f"  {where}: differs (compared exactly)")
                ok = False
    return lines, ok


def _signed(d):
    return ("+" if d >= 0 else "-") + fmt_decimal(abs(d))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--units", type=int, default=None, metavar="K",
                    help="judge every cell as if tagged approx with k = K (default: the cells' own tags)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--sanitize", type=Path, default=ROOT / "tests" / "sanitize.cfg", help="nbval sanitizer file")
    group.add_argument("--no-sanitize", action="store_true")
    args = ap.parse_args(argv)

    patterns = [] if args.no_sanitize else read_patterns(args.sanitize)
    old_cells = [c for c in nbformat.read(str(args.old), as_version=4).cells if c.cell_type == "code"]
    new_cells = [c for c in nbformat.read(str(args.new), as_version=4).cells if c.cell_type == "code"]
    if len(old_cells) != len(new_cells):
        print(f"{args.old} has {len(old_cells)} code cells, {args.new} has {len(new_cells)}: cannot pair them")
        return 2

    failing = differing = 0
    for i, (old, new) in enumerate(zip(old_cells, new_cells)):
        if new.execution_count is None or old.execution_count is None:
            continue  # nbval does not compare an unrun cell
        lines, ok = compare_cell(old, new, patterns, args.units)
        if not lines:
            continue
        differing += 1
        failing += not ok
        try:
            k = args.units if args.units is not None else cell_units(new)
            mode = "exact" if k is None else f"approx k={k}"
        except ValueError:
            mode = "bad setting"
        first = next((s for s in new.source.splitlines() if s.strip()), "")
        print(f"cell {i} [{mode}] {'passes' if ok else 'FAILS'}: {first[:90]}")
        print("\n".join(lines))
    print(f"{len(old_cells)} code cells, {differing} with different outputs, {failing} that nbval would fail")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
