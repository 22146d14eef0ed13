"""The quickstart notebook (examples/quickstart.ipynb) runs headless from top to bottom and produces its outputs.

The notebook is executed with nbclient on a ``python3`` kernel, in a temporary directory (its working directory),
with the repository root on the kernel's PYTHONPATH so a checkout works without ``pip install -e .``. About a
minute and a half on 2 CPU cores (most of it compiling the tiny train step).
"""

import json
import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs nbformat (the dev extra)")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs nbclient (the dev extra)")
pytest.importorskip("ipykernel", reason="the notebook test needs ipykernel (the dev extra) for its python3 kernel")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"

# Appended to the executed copy only: reports what the notebook built.
PROBE = """\
import json
print("PROBE " + json.dumps({"success_shape": list(success.shape), "methods": methods,
                             "rates_in_unit_interval": bool(((success >= 0) & (success <= 1)).all()),
                             "plot_exists": os.path.exists("success_vs_episode.png"),
                             "checkpoints": sorted(d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())}))
"""


def test_committed_notebook_matches_its_generator_and_has_no_outputs():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import make_quickstart
    finally:
        sys.path.remove(str(ROOT / "examples"))
    committed = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(committed)
    assert [(c.cell_type, c.source) for c in committed.cells] == \
        [(c.cell_type, c.source) for c in make_quickstart.build().cells], "run `python examples/make_quickstart.py`"
    for cell in committed.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit the notebook without outputs"


def run_install_cell(tmp_path, monkeypatch, *, importable=False, checkout=False, repo_url="", gpu=False):
    """Executes the notebook's first cell with the package lookup, git, pip and nvidia-smi faked; returns the
    commands it ran."""
    import importlib.util
    import shutil
    import subprocess

    cell = nbformat.read(NOTEBOOK, as_version=4).cells[0]
    assert cell.cell_type == "code" and cell.source.startswith("# Install"), "the first cell is the install cell"
    here = tmp_path / "clone" / "examples"
    here.mkdir(parents=True)
    if checkout:
        (here.parent / "setup.py").write_text("")
    monkeypatch.chdir(here)
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: ran.append(list(cmd)))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if importable else None)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if gpu and name == "nvidia-smi" else None)
    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    exec(cell.source.replace('REPO_URL = ""', f"REPO_URL = {repo_url!r}", 1), {})
    return ran, here


def test_install_cell_installs_from_the_checkout_or_a_clone_with_the_accelerators_jax(tmp_path, monkeypatch):
    ran, _ = run_install_cell(tmp_path / "a", monkeypatch, importable=True, checkout=True)
    assert ran == [], "an importable package is left alone"
    ran, here = run_install_cell(tmp_path / "b", monkeypatch, checkout=True)
    assert ran == [[sys.executable, "-m", "pip", "install", "--quiet", str(here.parent), "jax[cpu]==0.10.2"]]
    ran, here = run_install_cell(tmp_path / "c", monkeypatch, repo_url="https://example.org/metarl_jax.git", gpu=True)
    clone = str(here / "metarl_jax_src")
    assert ran == [["git", "clone", "--depth=1", "https://example.org/metarl_jax.git", clone],
                   [sys.executable, "-m", "pip", "install", "--quiet", clone, "jax[cuda12]==0.10.2"]]
    with pytest.raises(RuntimeError, match="set REPO_URL"):
        run_install_cell(tmp_path / "d", monkeypatch)
    # The cell's jax pin is the package's.
    import re

    assert re.search(r'"jax==([0-9.]+)"', (ROOT / "setup.py").read_text()).group(1) == "0.10.2"


@pytest.mark.slow  # about a minute on 2 cores
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's training workdir (tempfile.mkdtemp) lands here
    # A python3 kernelspec that runs this interpreter (JUPYTER_PATH comes first in the kernelspec search), so the
    # kernel sees the packages of the test run even when `python` on PATH is another interpreter.
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    probe = json.loads(text.split("PROBE ", 1)[1])
    assert probe["success_shape"] == [4, 3]  # oracle, random, elimination_random, the trained LM x 3 episodes
    assert probe["methods"] == ["oracle", "random", "elimination_random", "tiny LM (5 steps)"]
    assert probe["rates_in_unit_interval"]
    assert probe["plot_exists"] and (tmp_path / "success_vs_episode.png").stat().st_size > 1000
    assert probe["checkpoints"] == ["5"]
    assert list(tmp_path.glob("metarl_quickstart_*/eval.json")), "the training workdir is not under TMPDIR"
    # The plot was displayed inline, and the success tables were printed.
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 1
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                      if o.output_type == "stream")
    assert "| game:GuessTheNumber-v0-easy | elimination_random |" in printed
    assert "| game:GuessTheNumber-v0-easy | tiny LM (5 steps) |" in printed
    assert "[Episode 2] New episode begins." in printed
