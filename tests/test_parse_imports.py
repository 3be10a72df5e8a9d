"""Every `snakemake` call (a dry run, each job's own start) parses the workflow, so what the
rules import at parse time must stay light: importing torch and diffusers there made a
dry run of a finished mural take 10 s instead of 2 s."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers", "bitsandbytes", "peft")


def parse_time_modules() -> list[str]:
    """The blkassist modules named by an import statement in the Snakefile or a rule file."""
    pattern = re.compile(r"^\s*(?:from|import)\s+(blkassist[\w.]*)", re.MULTILINE)
    files = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    return sorted({m for f in files for m in pattern.findall(f.read_text())})


def test_the_rules_import_blkassist_modules_this_test_can_see():
    modules = parse_time_modules()
    assert "blkassist.config" in modules and len(modules) >= 10, modules


def test_parsing_the_workflow_imports_no_deep_learning_library():
    modules = parse_time_modules()
    probe = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", (
        f"parse-time imports pull in {result.stdout.strip()}; import them inside the "
        "function that needs them or move the parse-time part to a torch-free module"
    )
