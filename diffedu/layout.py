"""How the book lays out a chapter's cells: which inputs are collapsed, and what their toggles say.

Two kinds of code cell are collapsed in the book (Jupyter Book's ``hide-input`` tag: the output stays in
place, the code sits behind a toggle):

* exercise solutions (see ``diffedu.exercises``), behind a toggle that reads "Show solution";
* *plotting-only* cells of ``MIN_PLOT_LINES`` lines or more, behind "Show plotting code": cells that only
  draw what earlier cells computed. Short plotting cells stay visible, and so does every cell that computes
  something, even if it also plots.

A cell is plotting-only when every top-level statement either draws (a call or assignment rooted in
``plt``, ``viz``, ``mpl`` or a name such a statement bound, like ``fig, axes = plt.subplots(...)``), or is
neutral (imports; constants, strings and f-strings; loops, ``if`` and ``with`` blocks made of the same), and
at least one draws. ``make chapter`` applies ``collapse_cells``; the tests check the committed chapters.
"""

from __future__ import annotations

import ast

from nbformat import NotebookNode

HIDE_TAG = "hide-input"
MIN_PLOT_LINES = 10
PLOT_ROOTS = frozenset({"plt", "viz", "mpl", "matplotlib"})
PROMPTS = {
    "solution": ("Show solution", "Hide solution"),
    "plot": ("Show plotting code", "Hide plotting code"),
}


def _root(node: ast.AST) -> str | None:
    """The name an expression hangs off: ``axes[0].imshow(x).set`` -> ``axes``."""
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
            node = node.value
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _is_constant(node: ast.AST | None) -> bool:
    """Literals, f-strings and containers of them (a label list, a colour map name)."""
    if node is None:
        return True
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(_is_constant(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(_is_constant(k) and _is_constant(v) for k, v in zip(node.keys, node.values))
    if isinstance(node, ast.UnaryOp):
        return _is_constant(node.operand)
    if isinstance(node, ast.BinOp):
        return _is_constant(node.left) and _is_constant(node.right)
    return False


def _targets(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _classify(statements: list[ast.stmt], plot: set[str]) -> tuple[bool, bool]:
    """(all statements draw or are neutral, at least one draws); ``plot`` grows with the names bound."""
    draws = False
    for st in statements:
        if isinstance(st, (ast.Import, ast.ImportFrom, ast.Pass)):
            continue
        if isinstance(st, ast.Expr):
            if _is_constant(st.value):
                continue
            if _root(st.value) in plot:
                draws = True
                continue
            return False, draws
        if isinstance(st, (ast.Assign, ast.AnnAssign)):
            targets = st.targets if isinstance(st, ast.Assign) else [st.target]
            bound = set().union(*(_targets(t) for t in targets))
            if _is_constant(st.value):
                continue
            sets_attribute = [t for t in targets if not isinstance(t, (ast.Name, ast.Tuple, ast.List))]
            if _root(st.value) in plot or (sets_attribute and all(_root(t) in plot for t in sets_attribute)):
                plot |= bound
                draws = True
                continue
            return False, draws
        if isinstance(st, ast.For):
            if _names(st.iter) & plot:
                plot |= _targets(st.target)
            elif not _is_constant(st.iter) and not _is_range(st.iter):
                return False, draws
            ok, inner = _classify(st.body + st.orelse, plot)
            if not ok:
                return False, draws
            draws |= inner
            continue
        if isinstance(st, ast.If):
            ok, inner = _classify(st.body + st.orelse, plot)
            if not ok:
                return False, draws
            draws |= inner
            continue
        if isinstance(st, ast.With):
            if not all(_root(item.context_expr) in plot for item in st.items):
                return False, draws
            ok, inner = _classify(st.body, plot)
            if not ok:
                return False, draws
            draws = True
            continue
        return False, draws
    return True, draws


def _is_range(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("range", "enumerate", "zip")
            and all(_is_constant(a) or _is_range(a) for a in node.args))


def is_plotting_only(source: str) -> bool:
    """True if the cell only draws (see the module docstring); cells with IPython magics never are."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    ok, draws = _classify(tree.body, set(PLOT_ROOTS))
    return ok and draws


def is_long_plotting_cell(cell: NotebookNode) -> bool:
    return (cell.cell_type == "code" and len(cell.source.strip().splitlines()) >= MIN_PLOT_LINES
            and is_plotting_only(cell.source))


def set_prompt(cell: NotebookNode, kind: str) -> None:
    """The toggle's text for a collapsed cell (myst-nb's cell-level ``code_prompt_show``/``_hide``)."""
    show, hide = PROMPTS[kind]
    cell.metadata.setdefault("mystnb", {}).update(code_prompt_show=show, code_prompt_hide=hide)


def collapse_cells(nb: NotebookNode, solution_indices: list[int]) -> int:
    """Tag long plotting-only cells ``hide-input`` and give every collapsed cell its toggle text, in place.

    ``solution_indices`` are the exercise solution cells (already tagged by ``diffedu.exercises``). Returns how
    many plotting cells are collapsed. Idempotent.
    """
    collapsed = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = cell.setdefault("metadata", NotebookNode()).setdefault("tags", [])
        if index in solution_indices:
            set_prompt(cell, "solution")
        elif is_long_plotting_cell(cell):
            if HIDE_TAG not in tags:
                tags.append(HIDE_TAG)
            set_prompt(cell, "plot")
            collapsed += 1
        if not tags:
            del cell.metadata["tags"]
    return collapsed
