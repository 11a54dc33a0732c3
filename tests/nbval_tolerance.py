"""nbval with a stated, per-cell numeric tolerance (a pytest plugin, loaded by the root ``conftest.py``).

Why: strict nbval compares every re-executed output string with ``!=``. A number computed through a long float
path (a 25-step sampler, a classifier's decision on its result) can move in its last printed digit on another CPU
(AVX2 vs AVX-512 kernels, another BLAS path, another thread count), so a committed output is then only
reproducible on the machine that made it. This plugin keeps nbval as the runner and keeps every number checked,
but lets a cell state how far its printed numbers may move.

The rule
--------
* A code cell **without** the ``approx`` tag is compared exactly as nbval does (after the sanitizer).
* A code cell **tagged** ``approx`` (``metadata.tags``) compares its text outputs (``text/plain``,
  ``text/markdown``, ``text/html``, stdout and stderr streams) token by token, after the sanitizer:

  - the text with the numbers taken out must be identical, and so must the count of numbers;
  - a *measured* number -- one with a decimal point (``0.61``, ``-0.00``, ``1,234.5``), an exponent
    (``1.2e-03``, ``1e-3``) or a percentage (an integer followed by an optional space and ``%``: ``99 %``) --
    may differ from the committed one by at most **k units of its last printed digit**; when the two sides
    print different last digits (``9.9`` vs ``10.0``, ``0.99`` vs ``1.0``) the coarser unit of the two is used.
    Signs count (``-0.01`` vs ``0.01`` is 2 units of 0.01; ``-0.00`` vs ``0.00`` is 0). A pair is measured
    when either side is (``:.3g`` may print ``1`` for ``0.9996``);
  - every other integer (shapes, counts, indices, class labels, ``1,234``) must be equal;
  - a number is a run of digits that does not touch a letter, digit, ``_`` or ``.`` on either side, so digits
    inside words and ids (``float64``, ``x0``, ``28x28``, hex hashes, version strings ``2.13.0``) stay text and
    are compared exactly;
  - every other output field (``image/png`` is never compared by nbval, errors, other MIME types) is exact.

  k is 1 by default; a cell may widen it with the integer metadata key ``approx_units: k`` (for a percentage
  of a small sample, where one sample is several units, e.g. 1 of 64 samples = 1.6 %, k = 2).
  ``approx_units`` without the ``approx`` tag, or not a positive integer, is an error (the cell fails).

Nothing is silently masked: every ``approx`` cell that passed only thanks to the tolerance is listed, with each
differing number pair and its distance in units, in the terminal summary section "nbval tolerance" (also under
pytest-xdist: the differences travel to the controller in the report's ``user_properties``). A cell that fails
names the first number out of tolerance (or the first place where the text differs) before nbval's usual diff.

The comparison itself is the plain function :func:`compare_text` (and :func:`number_diffs` underneath, which
``scripts/compare_outputs.py`` also uses); the nbval glue only replaces ``IPyNbCell.compare_outputs`` for
tagged cells (written against nbval 0.11.0's method, whose structure it keeps: same keys, same counts, same order).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

TAG = "approx"
UNITS_KEY = "approx_units"
DEFAULT_UNITS = 1
# Output fields compared with the tolerance (streams appear under their stream name after nbval's transform).
TEXT_KEYS = ("text/plain", "text/markdown", "text/html", "stdout", "stderr")
PROPERTY = "nbval_tolerance"

# A number: optional sign, digits (optionally grouped by thousands commas), optional fraction, optional exponent.
# It may not touch a word character or a '.' on the left, nor a word character or '.<digit>' on the right (so
# version strings and digits inside identifiers stay text). U+2212 (matplotlib's minus) counts as a sign.
_NUMBER = re.compile(
    r"(?<![\w.])"
    r"(?P<num>[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?(?P<exp>[eE][-+]?\d+)?)"
    r"(?![\w]|\.\d)"
    r"(?P<pct>[ \u00a0\u202f]?%)?"
)
# A sign right after a word character or a closing bracket is an operator, not part of the number: "x-1", "2-1".
_SIGN_AFTER = re.compile(r"[\w)\]]")


@dataclass(frozen=True)
class Number:
    """One number found in a text: its printed form, value, last-digit unit and whether it is 'measured'."""

    text: str  # as printed, e.g. "-0.61", "1,234", "99"
    start: int  # offset in the text
    value: Decimal
    unit: Decimal  # one unit of the last printed digit, e.g. 0.01 for "0.61", 1e-4 for "1.2e-03"
    measured: bool  # decimal point, exponent or percentage: may move within the tolerance


@dataclass(frozen=True)
class NumberDiff:
    """A pair of numbers at the same place in the reference and the new text that are printed differently."""

    index: int  # position among the numbers of the text (0-based)
    line: int  # line of the reference text (1-based)
    ref: str
    new: str
    unit: Decimal  # the coarser of the two last-digit units
    delta: Decimal  # (new - ref) / unit, signed
    measured: bool  # either side measured: tolerance applies; otherwise the integers must be equal

    @property
    def units(self) -> Decimal:
        """|new - ref| in units of the (coarser) last printed digit."""
        return abs(self.delta)

    def allowed(self, k: int) -> bool:
        return self.measured and self.units <= k

    def describe(self, k: int | None = None) -> str:
        """'0.61 -> 0.62 (1 unit of 0.01)', with k '(1 unit of 0.01, allowed 1)'; '3 -> 4 (integers must be equal)'."""
        if not self.measured:
            s = f"{self.ref} -> {self.new} (integers must be equal)"
        else:
            n = fmt_decimal(self.units)
            s = f"{self.ref} -> {self.new} ({n} unit{'' if self.units == 1 else 's'} of {fmt_decimal(self.unit)}"
            s += f", allowed {k})" if k is not None else ")"
        return s


class TextMismatch(AssertionError):
    """The two texts differ beyond the tolerance; ``str()`` says where, ``diff`` holds the number pair if any."""

    def __init__(self, message: str, diff: NumberDiff | None = None):
        super().__init__(message)
        self.diff = diff


def fmt_decimal(d: Decimal) -> str:
    """A Decimal for people: 0.01, 1E-4 -> 0.0001, 2, 0.1; below 1e-4 or from 1e6 on as 1e-5, 1e+6."""
    d = d.normalize()
    if d and not -5 < d.adjusted() < 6:
        return format(d, "e")
    return format(d, "f")


def _sign_ok(text: str, m: re.Match) -> bool:
    return m.start() == 0 or not _SIGN_AFTER.match(text[m.start() - 1])


def find_numbers(text: str) -> tuple[list[str], list[Number]]:
    """Split ``text`` into its skeleton (the pieces between numbers, len = numbers + 1) and its numbers."""
    pieces, numbers, pos = [], [], 0
    for m in _NUMBER.finditer(text):
        num, start = m.group("num"), m.start("num")
        if num[0] in "-+\u2212" and not _sign_ok(text, m):  # an operator: keep the sign as text
            num, start = num[1:], start + 1
        digits = num.replace(",", "").replace("\u2212", "-")
        value = Decimal(digits)
        unit = Decimal(1).scaleb(value.as_tuple().exponent)  # 10 ** exponent of the last printed digit
        measured = bool(m.group("frac") or m.group("exp") or m.group("pct"))
        pieces.append(text[pos:start])
        numbers.append(Number(num, start, value, unit, measured))
        pos = start + len(num)
    pieces.append(text[pos:])
    return pieces, numbers


def _line_of(text: str, offset: int) -> tuple[int, str]:
    line = text.count("\n", 0, offset) + 1
    return line, text.split("\n")[line - 1]


def _first_text_difference(ref: str, new: str) -> str:
    """Where two texts first differ, as the two lines."""
    rl, nl = ref.splitlines(), new.splitlines()
    for i, (a, b) in enumerate(zip(rl, nl)):
        if a != b:
            return f"line {i + 1}:\n  reference: {a!r}\n  new:       {b!r}"
    i = min(len(rl), len(nl))
    a = rl[i] if i < len(rl) else "<end of text>"
    b = nl[i] if i < len(nl) else "<end of text>"
    return f"line {i + 1}:\n  reference: {a!r}\n  new:       {b!r}"


def number_diffs(ref: str, new: str) -> list[NumberDiff]:
    """Every number printed differently in ``new`` than in ``ref`` (in order), whatever the distance.

    Raises :class:`TextMismatch` if the texts differ in anything but the numbers (the text with the numbers
    taken out, or the count of numbers).
    """
    if ref == new:
        return []
    ref_pieces, ref_nums = find_numbers(ref)
    new_pieces, new_nums = find_numbers(new)
    if len(ref_nums) != len(new_nums):
        raise TextMismatch(
            f"the count of numbers differs: {len(ref_nums)} in the reference, {len(new_nums)} in the new output; "
            f"first difference at {_first_text_difference(ref, new)}")
    for i, (a, b) in enumerate(zip(ref_pieces, new_pieces)):
        if a != b:
            raise TextMismatch(f"the text (numbers taken out) differs: {a!r} vs {b!r}; "
                               f"first difference at {_first_text_difference(ref, new)}")
    diffs = []
    for i, (a, b) in enumerate(zip(ref_nums, new_nums)):
        if a.text == b.text:
            continue
        unit = max(a.unit, b.unit)
        line, _ = _line_of(ref, a.start)
        diffs.append(NumberDiff(i, line, a.text, b.text, unit, (b.value - a.value) / unit, a.measured or b.measured))
    return diffs


def compare_text(ref: str, new: str, units: int = DEFAULT_UNITS) -> list[NumberDiff]:
    """Compare a committed output ``ref`` with a re-executed ``new`` under the ``approx`` rule (module docstring).

    Returns the number pairs that differ but lie within the tolerance (empty: the texts are equal). Raises
    :class:`TextMismatch` naming the first number out of tolerance, an integer that changed, or the first place
    where the text itself differs.
    """
    if isinstance(units, bool) or not isinstance(units, int) or units < 0:
        raise ValueError(f"units must be a non-negative integer, got {units!r}")
    diffs = number_diffs(ref, new)
    for d in diffs:
        if not d.allowed(units):
            _, ref_line = _line_of(ref, find_numbers(ref)[1][d.index].start)
            _, new_line = _line_of(new, find_numbers(new)[1][d.index].start)
            what = "an integer changed" if not d.measured else f"a number moved more than {units} unit(s)"
            raise TextMismatch(
                f"{what}: {d.describe(units)}, number {d.index + 1} on line {d.line}:\n"
                f"  reference: {ref_line!r}\n  new:       {new_line!r}", d)
    return diffs


# --------------------------------------------------------------------------------------------- nbval glue

def cell_units(cell) -> int | None:
    """k for an ``approx`` cell, None for an exact cell; raises ValueError on a malformed setting."""
    md = cell.get("metadata", {})
    tags = md.get("tags", []) or []
    tagged = TAG in tags
    if UNITS_KEY in md:
        k = md[UNITS_KEY]
        if not tagged:
            raise ValueError(f"metadata {UNITS_KEY!r} = {k!r} without the {TAG!r} tag: add the tag or drop the key")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"metadata {UNITS_KEY!r} must be a positive integer, got {k!r}")
        return k
    return DEFAULT_UNITS if tagged else None


def _approx_compare_outputs(self, test, ref, skip_compare=None):
    """nbval 0.11.0's IPyNbCell.compare_outputs, with text fields compared by :func:`compare_text`."""
    from nbval.plugin import _trim_base64, transform_streams_for_comparison

    try:
        k = cell_units(self.cell)
    except ValueError as e:
        self.comparison_traceback = [f"nbval tolerance: cell {self.cell_num}: {e}"]
        return False
    if k is None:
        return _ORIGINAL(self, test, ref, skip_compare)

    skip_compare = skip_compare or self.parent.skip_compare
    test = transform_streams_for_comparison(test)
    ref = transform_streams_for_comparison(ref)
    cc = self.colors

    def flatten(outputs):
        flat = defaultdict(list)
        for out in outputs:
            for key in out.keys():
                if key in skip_compare:
                    continue
                if key == "data":
                    for data_key in out[key].keys():
                        if data_key not in skip_compare:
                            flat[data_key].append(self.sanitize(out[key][data_key]))
                else:
                    flat[key].append(self.sanitize(out[key]))
        return flat

    testing_outs, reference_outs = flatten(test), flatten(ref)
    self.comparison_traceback = []
    ref_keys, test_keys = set(reference_outs), set(testing_outs)
    if ref_keys - test_keys:
        self.comparison_traceback.append(
            cc.FAIL + "Missing output fields from running code: %s" % (ref_keys - test_keys) + cc.ENDC)
        return False
    if test_keys - ref_keys:
        self.comparison_traceback.append(
            cc.FAIL + "Unexpected output fields from running code: %s" % (test_keys - ref_keys) + cc.ENDC)
        return False

    tolerated = []
    for key in reference_outs:
        test_values, ref_values = testing_outs[str(key)], reference_outs[key]
        if len(test_values) != len(ref_values):
            self.comparison_traceback.append(
                cc.OKBLUE + 'dissimilar number of outputs for key "%s"' % key + cc.FAIL
                + "<<<<<<<<<<<< Reference outputs from ipynb file:" + cc.ENDC)
            self.comparison_traceback.extend(_trim_base64(v) for v in ref_values)
            self.comparison_traceback.append(
                cc.FAIL + "============ disagrees with newly computed (test) output:" + cc.ENDC)
            self.comparison_traceback.extend(_trim_base64(v) for v in test_values)
            self.comparison_traceback.append(cc.FAIL + ">>>>>>>>>>>>" + cc.ENDC)
            return False
        for ref_out, test_out in zip(ref_values, test_values):
            if ref_out == test_out:
                continue
            if key in TEXT_KEYS and isinstance(ref_out, str) and isinstance(test_out, str):
                try:
                    diffs = compare_text(ref_out, test_out, k)
                except TextMismatch as e:
                    self.comparison_traceback.append(
                        cc.FAIL + f"approx cell (k = {k} unit{'s' if k > 1 else ''} of the last printed digit), "
                        f"'{key}' out of tolerance: {e}" + cc.ENDC)
                    self.format_output_compare(key, ref_out, test_out)
                    return False
                tolerated.extend([key, d.line, d.ref, d.new, fmt_decimal(d.units), fmt_decimal(d.unit)] for d in diffs)
                continue
            self.format_output_compare(key, ref_out, test_out)
            return False
    if tolerated:
        self.user_properties.append((PROPERTY, json.dumps(
            {"cell": self.cell_num, "k": k, "diffs": tolerated})))
    return True


_ORIGINAL = None


def install() -> None:
    """Replace nbval's IPyNbCell.compare_outputs (idempotent)."""
    global _ORIGINAL
    from nbval import plugin

    if getattr(plugin.IPyNbCell.compare_outputs, "_nbval_tolerance", False):
        return
    _ORIGINAL = plugin.IPyNbCell.compare_outputs
    _approx_compare_outputs._nbval_tolerance = True
    plugin.IPyNbCell.compare_outputs = _approx_compare_outputs


def pytest_configure(config):
    try:
        import nbval.plugin  # noqa: F401
    except ImportError:  # nothing to extend
        return
    install()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """List every approx cell that passed only thanks to its tolerance (runs on the xdist controller too)."""
    rows = []
    for rep in terminalreporter.stats.get("passed", []):
        if getattr(rep, "when", None) != "call":
            continue
        for name, value in getattr(rep, "user_properties", []):
            if name == PROPERTY:
                rows.append((rep.nodeid, json.loads(value)))
    if not rows:
        return
    tr = terminalreporter
    tr.write_sep("=", "nbval tolerance")
    tr.write_line(f"{len(rows)} approx cell(s) passed only within their stated tolerance "
                  "(printed numbers differ from the committed outputs):")
    for nodeid, info in sorted(rows, key=lambda r: (r[0].split("::")[0], r[1]["cell"])):
        k = info["k"]
        tr.write_line(f"{nodeid} (approx, k = {k}):")
        for key, line, ref, new, units, unit in info["diffs"]:
            tr.write_line(f"    {key} line {line}: {ref} -> {new}  "
                          f"({units} unit{'' if units == '1' else 's'} of {unit}, allowed {k})")
