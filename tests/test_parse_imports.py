"""Every `snakemake` call (a dry run, each job's own start) parses the workflow, so what the
rules import at parse time must stay light: importing torch and diffusers there made a
dry run of a finished mural take 10 s instead of 2 s."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers", "bitsandbytes", "peft")


IMPORT = re.compile(r"^\s*(?:from|import)\s+(blkassist[\w.]*)", re.MULTILINE)


def imported_modules(files) -> list[str]:
    """The blkassist modules named by an import statement in these files."""
    return sorted({m for f in files for m in IMPORT.findall(f.read_text())})


def parse_time_modules() -> list[str]:
    return imported_modules([REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))])


def heavy_imports(modules: list[str], libraries: tuple[str, ...] = HEAVY) -> str:
    """The `libraries` (deep-learning ones by default) a fresh interpreter has loaded after
    importing `modules`."""
    probe = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(' '.join(sorted(m for m in {libraries!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_the_rules_import_blkassist_modules_this_test_can_see():
    modules = parse_time_modules()
    assert "blkassist.workflow_settings" in modules and len(modules) >= 10, modules


def test_parsing_the_workflow_imports_no_deep_learning_library():
    heavy = heavy_imports(parse_time_modules())
    assert heavy == "", (
        f"parse-time imports pull in {heavy}; import them inside the "
        "function that needs them or move the parse-time part to a torch-free module"
    )


# The jobs every mural runs around its tiles: on a small mural their start-up is most of
# the workflow's cost beyond the model's own (bench/vs_realesrganer.py --tilers workflow).
LIGHT_SCRIPTS = (
    "probe_source.py",
    "check_mural.py",
    "report_plan.py",
    "ingest_source.py",
    "allocate_canvas.py",
    "assemble_mural.py",
)


@pytest.mark.parametrize("script", LIGHT_SCRIPTS)
def test_a_murals_light_jobs_import_no_deep_learning_library(script):
    modules = imported_modules([REPO / "scripts" / script])
    assert modules, f"{script} imports no blkassist module: the test lost track of it"
    heavy = heavy_imports(modules)
    assert heavy == "", (
        f"scripts/{script} pulls in {heavy} (each such job pays its "
        "import); import it inside the function that needs it"
    )


def test_a_dry_run_of_the_demo_imports_no_deep_learning_library(tmp_path):
    """The whole parse, DAG and every preflight the settings layer runs (Flux models of each
    kind, LoRAs, Stencil, refinement), not only the modules the rules name: the demo's
    config holds every part. A Flux model check that imported torch cost each `snakemake`
    call 2 s."""
    report = tmp_path / "heavy.txt"
    run = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(report)!r}, 'w').write("
        f"' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules))))\n"
        "from snakemake.cli import main\n"
        "main()\n"
    )
    args = ["-s", str(REPO / "Snakefile"), "--configfile", str(REPO / "config" / "config.yaml"),
            "--directory", str(tmp_path), "--cores", "1", "-n"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", run, *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "probe_source" in result.stdout + result.stderr  # it did plan the demo's jobs
    heavy = report.read_text()
    assert heavy == "", f"a dry run of the demo imports {heavy}"


def test_the_jobs_settings_layer_imports_no_deep_learning_library_zarr_or_scipy():
    """Every job that reads the config imports blkassist.job_settings: it must stay cheap."""
    assert heavy_imports(["blkassist.job_settings"], (*HEAVY, "zarr", "scipy")) == ""


def config_uses(script: Path) -> list[str]:
    """Each use of `snakemake.config` in a script other than as the one argument of
    JobSettings(...) (blkassist.job_settings), as "line: what"."""
    tree = ast.parse(script.read_text(), str(script))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Attribute)
            and node.attr == "config"
            and isinstance(node.value, ast.Name)
            and node.value.id == "snakemake"
        ):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Subscript) and parent.value is node:
            found.append(f"{node.lineno}: indexes snakemake.config")
        elif isinstance(parent, ast.Attribute):
            found.append(f"{node.lineno}: snakemake.config.{parent.attr}")
        elif not (
            isinstance(parent, ast.Call)
            and isinstance(parent.func, ast.Name)
            and parent.func.id == "JobSettings"
            and parent.args == [node]
        ):
            found.append(f"{node.lineno}: passes snakemake.config on ({type(parent).__name__})")
    return sorted(found, key=lambda use: int(use.split(":")[0]))


def test_no_script_reads_the_config_but_through_its_settings_objects():
    """Scripts read the validated config through blkassist.job_settings (typed sections,
    no defaults of their own), never by indexing snakemake.config: a value travels once."""
    scripts = sorted((REPO / "scripts").glob("*.py"))
    assert len(scripts) > 30
    uses = {s.name: found for s in scripts if (found := config_uses(s))}
    assert uses == {}, "read these through blkassist.job_settings.JobSettings"


def test_the_config_check_finds_an_index_a_get_and_a_pass(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "a = snakemake.config['gpu']\n"
        "b = snakemake.config.get('gpu', {})\n"
        "c = licences.mural(snakemake.config, 'm')\n"
        "d = JobSettings(snakemake.config).gpu\n"
    )
    assert config_uses(script) == [
        "1: indexes snakemake.config",
        "2: snakemake.config.get",
        "3: passes snakemake.config on (Call)",
    ]
