"""The package's code stays small enough to read: no module of metarl_jax/ exceeds MAX_LINES lines and no
function takes more than MAX_POSITIONAL positional parameters (those with defaults count when they can be passed
positionally: put the optional ones after a keyword-only ``*``, or group related ones in a small struct)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "metarl_jax"
MAX_LINES = 400
MAX_POSITIONAL = 8


def positional(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Parameters that can be passed positionally (``self`` included; ``*args`` not counted)."""
    return len(fn.args.posonlyargs) + len(fn.args.args)


def problems(path: pathlib.Path) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    text = path.read_text()
    out = []
    lines = len(text.splitlines())
    if lines > MAX_LINES:
        out.append(f"{rel}: {lines} lines (at most {MAX_LINES})")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and positional(node) > MAX_POSITIONAL:
            out.append(f"{rel}:{node.lineno} {node.name}: {positional(node)} positional parameters "
                       f"(at most {MAX_POSITIONAL})")
    return out


def test_the_checker_counts_positional_parameters():
    fns = ast.parse("def f(a, b, /, c, d=1, *args, e, f=2, **kw): pass\nasync def g(self, *, x): pass").body
    assert [positional(fn) for fn in fns] == [4, 1]


def test_every_module_has_its_shape():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 40
    found = [p for path in modules for p in problems(path)]
    assert not found, "\n".join(found)
