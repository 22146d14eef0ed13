"""The package's modules form layers: a module imports only from its own layer or from layers below it, lazily
(inside a function) or not. The order is documented in docs/api.md ("Module layers")."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "metarl_jax"

# Lowest first. A pattern matches a module's dotted name.
LAYERS = [
    ("infrastructure", r"metarl_jax\.(sharding|multihost|workdir|checksums|metrics_log|wandb_log|configs(\..*)?)"),
    ("envs", r"metarl_jax\.envs(\..*)?"),
    ("text", r"metarl_jax\.text(\..*)?"),
    ("models", r"metarl_jax\.models(\..*)?"),
    ("agents", r"metarl_jax\.(agents(\..*)?|tasks|memory)"),
    ("online baselines", r"metarl_jax\.baselines(\.(online|bandits|hypotheses|tabular|players))?"),
    ("algos", r"metarl_jax\.(algos(\..*)?|config_check|checkpoints)"),
    ("evaluate", r"metarl_jax\.evaluate"),
    ("trained and played baselines", r"metarl_jax\.baselines\.(rl2|rl2_train|table)"),
    ("object API", r"metarl_jax\.learners"),
    ("train", r"metarl_jax\.(build|train)"),
    ("entry points", r"metarl_jax(\.(main|export|prior))?"),
]


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    matches = [i for i, (_, pattern) in enumerate(LAYERS) if re.fullmatch(pattern, module)]
    assert len(matches) == 1, f"{module} is in {len(matches)} layers; add it to exactly one of LAYERS"
    return matches[0]


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(path: pathlib.Path) -> set[str]:
    """Every metarl_jax module ``path`` imports anywhere in its body (``from a import b`` counts as a.b when b is a
    module, else as a)."""
    out = set()
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "metarl_jax"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "metarl_jax":
                continue
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base)
    return out


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 40
    for path in modules:
        name = module_name(path)
        for target in imports(path):
            if layer_of(target) > layer_of(name):
                upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "\n".join(upward)


def test_sharding_is_a_leaf():
    assert imports(PACKAGE / "sharding.py") == set()


def test_the_layer_table_is_the_documented_one():
    doc = (ROOT / "docs" / "api.md").read_text()
    section = doc.split("## Module layers", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\d+\. \*\*(.+?)\*\*", section, flags=re.M)
    assert listed == [name for name, _ in LAYERS]
