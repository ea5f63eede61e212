"""lenx's import graph (scripts/import_graph.py): no cycles, module-level or inside functions, and no lenx import
inside a function except those listed here with their reason (a cycle is never one)."""

import re
import subprocess
import sys

from conftest import ROOT

# (file, lenx module it imports inside a function): why the import waits for the call
ALLOWED_LOCAL = {
    ("src/lenx/results.py", "lenx.pos.rope_scaling"):
        "keeps torch out of lenx.results, the reader the summary scripts import (scripts/curves.py runs without "
        "torch)",
    ("src/lenx/runid.py", "lenx.pos.rope_scaling"):
        "keeps torch out of `import lenx` (lenx/__init__ registers the run-id resolver)",
}


def graph() -> tuple[int, str]:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py"), "--quiet"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, out.stdout


def test_no_import_cycles():
    code, text = graph()
    assert code == 0 and " 0 cycles, 0 upward arrows," in text, text


def test_every_function_local_lenx_import_is_allowed_with_a_reason():
    _, text = graph()
    local = {(m["path"], m["target"]) for m in
             re.finditer(r"^local: (?P<path>\S+):\d+\s+\S+ -> (?P<target>\S+)$", text, re.MULTILINE)}
    assert local <= set(ALLOWED_LOCAL), f"function-local lenx imports not in ALLOWED_LOCAL: {local - set(ALLOWED_LOCAL)}"
    assert set(ALLOWED_LOCAL) <= local, f"ALLOWED_LOCAL entries no longer needed: {set(ALLOWED_LOCAL) - local}"


def test_the_script_finds_a_cycle_closed_inside_a_function(tmp_path):
    pkg = tmp_path / "lenx"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from lenx.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from lenx import a\n    return a\n")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py"), "--quiet", "--src", str(pkg)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 cycles, 1 upward arrows, 1 function-local lenx imports" in out.stdout
    assert "cycle: lenx.a -> lenx.b -> lenx.a" in out.stdout and "upward: lenx.b -> lenx.a" in out.stdout
