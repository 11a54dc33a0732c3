"""The nbval ``approx`` tolerance: the comparison rule (unit tests) and the plugin end to end (nbval in a subprocess)."""

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.nbval_tolerance import TextMismatch, cell_units, compare_text, find_numbers, number_diffs

ROOT = Path(__file__).resolve().parents[1]


def one(ref, new, units=1):
    """The single tolerated difference between ref and new, as (units, unit)."""
    (d,) = compare_text(ref, new, units)
    return d.units, d.unit


# ---------------------------------------------------------------------------------------------- the rule


def test_equal_texts_have_no_differences():
    assert compare_text("x (5, 1, 8, 8) mean 0.61", "x (5, 1, 8, 8) mean 0.61") == []


def test_last_digit_of_a_decimal_moves_one_unit():
    assert one("confidence 0.61", "confidence 0.62") == (1, Decimal("0.01"))
    with pytest.raises(TextMismatch, match=r"0\.61 -> 0\.63 \(2 units of 0\.01, allowed 1\)"):
        compare_text("confidence 0.61", "confidence 0.63")


def test_percentage_of_a_sample_moves_one_unit():
    assert one("ring: 0→3 (99 %)", "ring: 0→3 (100 %)") == (1, Decimal(1))
    assert one("kept 99%", "kept 100%") == (1, Decimal(1))
    with pytest.raises(TextMismatch, match=r"97 -> 99 \(2 units of 1"):
        compare_text("(97 %)", "(99 %)")


def test_approx_units_widens_the_tolerance():
    assert one("(97 %)", "(99 %)", units=2) == (2, Decimal(1))
    with pytest.raises(TextMismatch, match="allowed 2"):
        compare_text("(96 %)", "(99 %)", units=2)


def test_exponents_use_the_unit_of_the_last_mantissa_digit():
    assert one("loss 1.2e-03", "loss 1.3e-03") == (1, Decimal("1e-4"))
    assert one("lr 1e-3", "lr 2e-3") == (1, Decimal("1e-3"))
    with pytest.raises(TextMismatch, match="2 units"):
        compare_text("loss 1.2e-03", "loss 1.4e-03")
    # the exponent moves with the value: 9.9e-04 -> 1.0e-03 is 1e-5 apart, a tenth of the coarser unit 1e-4
    assert one("9.9e-04", "1.0e-03") == (Decimal("0.1"), Decimal("1e-4"))


def test_the_coarser_last_digit_of_the_two_sides_is_used():
    assert one("9.9", "10.0") == (1, Decimal("0.1"))
    assert one("0.99", "1.0") == (Decimal("0.1"), Decimal("0.1"))  # e.g. :.2g formatting
    assert one("0.9996", "1") == (Decimal("0.0004"), Decimal(1))  # :.3g of 0.9996 prints "1"


def test_signs_count():
    assert one("-0.00", "0.00") == (0, Decimal("0.01"))
    assert one("-0.01", "-0.02") == (1, Decimal("0.01"))
    with pytest.raises(TextMismatch, match=r"-0\.01 -> 0\.01 \(2 units"):
        compare_text("-0.01", "0.01")
    assert one("x = \u22120.5", "x = \u22120.4") == (1, Decimal("0.1"))  # matplotlib's minus sign
    # a minus after a word or bracket is an operator, kept as text: "x-1" vs "x+1" is a text change
    with pytest.raises(TextMismatch, match="text"):
        compare_text("x-1.5", "x+1.5")


def test_shapes_counts_and_indices_stay_exact():
    with pytest.raises(TextMismatch, match=r"an integer changed: 8 -> 9"):
        compare_text("torch.Size([5, 1, 8, 8])", "torch.Size([5, 1, 8, 9])")
    with pytest.raises(TextMismatch, match=r"an integer changed: 3 -> 4"):
        compare_text("ring: 0→3 (99 %)", "ring: 0→4 (99 %)")  # the class read: exact; its confidence: approx
    with pytest.raises(TextMismatch, match="integer"):
        compare_text("120 samples", "121 samples")


def test_thousands_separators_make_one_integer():
    _, nums = find_numbers("1,234 steps, 1,234.5 s")
    assert [(n.text, n.value, n.measured) for n in nums] == [("1,234", 1234, False), ("1,234.5", Decimal("1234.5"), True)]
    with pytest.raises(TextMismatch, match=r"1,234 -> 1,235 \(integers must be equal\)"):
        compare_text("1,234 parameters", "1,235 parameters")
    assert one("1,234.5", "1,234.6") == (1, Decimal("0.1"))


def test_changed_words_fail():
    with pytest.raises(TextMismatch, match="text .numbers taken out. differs"):
        compare_text("reader says 0.61", "reader said 0.61")
    with pytest.raises(TextMismatch, match="text"):
        compare_text("99 %", "99%")  # the space is text


def test_a_changed_count_of_numbers_fails():
    with pytest.raises(TextMismatch, match="count of numbers differs: 2 in the reference, 3"):
        compare_text("0.61 0.62", "0.61 0.62 0.63")
    with pytest.raises(TextMismatch, match="count of numbers"):
        compare_text("mean 0.61\n", "mean 0.61\nstd 0.10\n")


def test_digits_inside_words_ids_and_versions_are_text():
    for ref, new in [("float64", "float32"), ("torch 2.13.0", "torch 2.13.1"), ("sha 3e5b", "sha 4e5b"),
                     ("28x28", "28x29"), ("scale 1.25x", "scale 1.26x")]:
        with pytest.raises(TextMismatch, match="text"):
            compare_text(ref, new)
    _, nums = find_numbers("x0 float64 v2.13.0 a3e5 28x28")
    assert nums == []


def test_the_failure_names_the_first_number_out_of_tolerance_and_its_lines():
    ref = "t0 | conf\n0.00 | 0.76\n0.05 | 0.79\n0.10 | 0.85\n"
    new = "t0 | conf\n0.00 | 0.77\n0.05 | 0.82\n0.10 | 0.90\n"
    with pytest.raises(TextMismatch) as e:
        compare_text(ref, new)
    msg = str(e.value)
    assert "0.79 -> 0.82 (3 units of 0.01, allowed 1)" in msg and "on line 3" in msg
    assert "'0.05 | 0.79'" in msg and "'0.05 | 0.82'" in msg
    assert e.value.diff.ref == "0.79"


def test_number_diffs_reports_every_difference_whatever_the_distance():
    diffs = number_diffs("a 0.61 b 99 % c 3", "a 0.71 b 100 % c 4")
    assert [(d.ref, d.new, d.units, d.measured) for d in diffs] == [
        ("0.61", "0.71", 10, True), ("99", "100", 1, True), ("3", "4", 1, False)]
    assert [d.allowed(1) for d in diffs] == [False, True, False]


def test_cell_settings():
    assert cell_units({"metadata": {}}) is None
    assert cell_units({"metadata": {"tags": ["approx"]}}) == 1
    assert cell_units({"metadata": {"tags": ["approx"], "approx_units": 3}}) == 3
    for bad in ({"approx_units": 2}, {"tags": ["approx"], "approx_units": 0},
                {"tags": ["approx"], "approx_units": 1.5}, {"tags": ["approx"], "approx_units": True}):
        with pytest.raises(ValueError):
            cell_units({"metadata": bad})


# ------------------------------------------------------------------------------------- end to end with nbval


def _notebook(path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    v4 = nbformat.v4

    def cell(source, committed, tags=(), **metadata):
        c = v4.new_code_cell(source, execution_count=1, outputs=[
            v4.new_output("stream", name="stdout", text=committed)])
        if tags:
            c.metadata["tags"] = list(tags)
        c.metadata.update(metadata)
        return c

    nb = v4.new_notebook(cells=[
        cell('print("shape (5, 1, 8, 8) mean 0.50")', "shape (5, 1, 8, 8) mean 0.50\n"),  # 0: exact, equal
        cell('print("shape (5, 1, 8, 8) conf 0.62 (100 %)")', "shape (5, 1, 8, 8) conf 0.61 (99 %)\n",
             tags=["approx"]),  # 1: approx, last digits moved: passes, listed in the summary
        cell('print("conf 0.65")', "conf 0.61\n", tags=["approx"]),  # 2: approx, 4 units: fails
        cell('print("kept 99 %")', "kept 97 %\n", tags=["approx"], approx_units=2),  # 3: approx k=2: passes
        cell('print("conf 0.62")', "conf 0.61\n"),  # 4: untagged: exact as ever, fails
        cell('print("conf 0.61")', "conf 0.61\n", tags=["approx"]),  # 5: approx but equal: not listed
    ])
    nbformat.write(nb, str(path))


@pytest.mark.slow
@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_nbval_end_to_end(tmp_path, xdist):
    pytest.importorskip("nbval")
    nb = tmp_path / "tiny.ipynb"
    _notebook(nb)
    args = [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", "-p", "no:cacheprovider",
            "-p", "tests.nbval_tolerance", "--color=no", "-rf", str(nb)]
    if xdist:
        pytest.importorskip("xdist")
        args += ["-n", "1", "--dist", "loadfile"]
    else:
        args += ["-p", "no:xdist"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "2 failed, 4 passed" in out, out
    assert "FAILED tiny.ipynb::Cell 2" in out and "FAILED tiny.ipynb::Cell 4" in out, out
    # the failure names the number out of tolerance
    assert "out of tolerance: a number moved more than 1 unit(s): 0.61 -> 0.65 (4 units of 0.01, allowed 1)" in out
    # the summary lists what was tolerated, on the controller too
    summary = out[out.index("nbval tolerance"):]
    assert "2 approx cell(s) passed only within their stated tolerance" in summary
    assert "tiny.ipynb::Cell 1 (approx, k = 1):" in summary
    assert "stdout line 1: 0.61 -> 0.62  (1 unit of 0.01, allowed 1)" in summary
    assert "stdout line 1: 99 -> 100  (1 unit of 1, allowed 1)" in summary
    assert "tiny.ipynb::Cell 3 (approx, k = 2):" in summary
    assert "97 -> 99  (2 units of 1, allowed 2)" in summary
    assert "Cell 5" not in summary and "Cell 0" not in summary


def test_compare_outputs_script(tmp_path):
    """scripts/compare_outputs.py pairs the code cells and prints each number's move in last-digit units."""
    nbformat = pytest.importorskip("nbformat")
    v4 = nbformat.v4

    def nb(texts, path, tags=()):
        cells = [v4.new_code_cell(f"cell {i}", execution_count=i + 1,
                                  outputs=[v4.new_output("stream", name="stdout", text=t)]) for i, t in enumerate(texts)]
        for c in cells[1:]:
            c.metadata["tags"] = list(tags)
        nbformat.write(v4.new_notebook(cells=cells), str(path))

    old, new, new_tagged, short = (tmp_path / n for n in ("old.ipynb", "new.ipynb", "tagged.ipynb", "short.ipynb"))
    nb(["shape (5, 1, 8, 8)\n", "conf 0.61 (99 %) took 1.5 s\n"], old)
    nb(["shape (5, 1, 8, 8)\n", "conf 0.62 (100 %) took 2.5 s\n"], new)
    nb(["shape (5, 1, 8, 8)\n", "conf 0.62 (100 %) took 2.5 s\n"], new_tagged, tags=["approx"])
    nb(["shape (5, 1, 8, 8)\n"], short)

    def run(*args):
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_outputs.py"), *map(str, args)],
                           capture_output=True, text=True, timeout=120)
        return r.returncode, r.stdout

    rc, out = run(old, new)
    assert rc == 1, out
    assert "cell 1 [exact] FAILS" in out
    assert "0.61 -> 0.62  (+1 unit of 0.01) FAILS" in out and "99 -> 100  (+1 unit of 1) FAILS" in out
    assert "1.5" not in out  # the timing is sanitized away, as nbval does
    assert "2 code cells, 1 with different outputs, 1 that nbval would fail" in out
    rc, out = run(old, new_tagged)
    assert rc == 0 and "cell 1 [approx k=1] passes" in out and "0.61 -> 0.62  (+1 unit of 0.01) ok" in out, out
    rc, out = run(new, old, "--units", "1")
    assert rc == 0 and "0.62 -> 0.61  (-1 unit of 0.01) ok" in out, out
    rc, out = run(old, short)
    assert rc == 2 and "cannot pair them" in out, out
