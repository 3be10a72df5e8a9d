"""The diffusion path through the real Snakemake engine with the tiny random Flux and a LoRA
made here: two SR steps each refined, a coherence pass, SIGKILL mid-pass then a re-batched
rerun that keeps every finished window and finishes byte-identically, reruns (and another
re-batching) that do nothing; the 3 Gpx production plan with its GPU memory."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import pyvips
import tifffile
import torch
import yaml
from PIL import Image

from blkassist.flux.loader import load_flux
from blkassist.refine.sigmas import reference_shift, scheduler_config, shifted
from blkassist.viewer import read_dzi
from tests.conftest import REPO, kill_mid_batch, run_snakemake, textured, write_config
from tests.flux_fixtures import TINY_SPEC

pytestmark = pytest.mark.slow
SHIFT = reference_shift(scheduler_config(TINY_SPEC))["factor"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory) -> Path:
    """A LoRA of the tiny Flux with random (non-zero) weights, saved as diffusers does."""
    from diffusers import FluxPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    components = load_flux(TINY_SPEC)
    torch.manual_seed(3)
    config = LoraConfig(
        r=4,
        lora_alpha=4,
        init_lora_weights=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    )
    components.transformer.add_adapter(config)
    folder = tmp_path_factory.mktemp("lora")
    FluxPipeline.save_lora_weights(
        folder, transformer_lora_layers=get_peft_model_state_dict(components.transformer)
    )
    return folder / "pytorch_lora_weights.safetensors"


PICTURES = ("results/m_final.tif", "results/m_seams.json", "results/m_seams.png")


def diffusion_config(workdir: Path, lora: Path) -> Path:
    Image.fromarray(textured(20, 24)).save(workdir / "art.png")
    config = {
        "murals": {
            "m": {
                "source": "art.png",
                "scale": 6,  # two SR steps: 3x then 2x
                "model": "lanczos",
                "tile": 32,
                "path": "diffusion",
                "refine": {
                    "model": "resources/flux/tiny.yaml",  # the workflow's own file
                    "lora": str(lora),
                    "tile": 48,  # a 32-px step: two 16-px grid offsets
                    "overlap": 8,
                    "passes": [{"denoise": 0.3}],
                    "coherence": {"denoise": 0.12},
                    "steps": 3,
                    "max_sequence_length": 32,
                    "tiles_per_job": 40,
                    "blocks_per_job": 1,
                },
            }
        }
    }
    return write_config(workdir, config)


def test_diffusion_mural_resumes_after_sigkill_byte_identically(tmp_path, tiny_lora):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for folder in (reference, killed):
        folder.mkdir()
    # The reference's pictures only: the viewer's nine jobs add nothing to what is compared.
    run_snakemake(reference, [diffusion_config(reference, tiny_lora)], *PICTURES)

    config = diffusion_config(killed, tiny_lora)
    progress = killed / "work/m/refine2.1/windows.progress"  # 16 windows, one job
    interrupted = kill_mid_batch(
        killed, [config], progress=progress, markers=progress.parent, batch=16, timeout=600
    )
    assert interrupted, "never caught a tile job halfway"
    assert not (killed / "results/m_final.tif").exists()

    # Re-batched after the crash: the new jobs keep every window the killed one finished.
    rebatched = yaml.safe_load(config.read_text())
    rebatched["murals"]["m"]["refine"]["tiles_per_job"] = 10  # each Flux job costs ~9 s here
    config = write_config(killed, rebatched)
    run_snakemake(killed, [config])
    markers = [json.loads(m.read_text()) for m in progress.parent.glob("tiles-*-*.done")]
    assert {(m["first"], m["stop"]) for m in markers} == {(0, 10), (10, 16)}
    coherence_markers = [json.loads(m.read_text()) for m in progress.parent.parent.glob(
        "refine2.2/tiles-*-*.done")]  # fmt: skip
    assert {(m["first"], m["stop"]) for m in coherence_markers} == {(0, 10), (10, 20)}
    assert sum(m["skipped"] for m in markers) >= len(interrupted)
    logs = [p.read_text() for p in (killed / "logs/m/refine2.1").glob("tiles-*.log")]
    # The last job to finish says the whole pass is done; one that refined says its speed.
    assert any("refinement pass 2.1: 16/16 windows done (100.0%)" in log for log in logs), logs
    assert any(
        re.search(r"refinement pass 2\.1: \d+/16 windows done \([\d.]+%\); this batch \d+ "
                  r"in [\d.]+ s \([\d.]+ s/window\)", log)
        for log in logs
    ), logs  # fmt: skip
    for picture in PICTURES:
        assert sha256(killed / picture) == sha256(reference / picture), picture
    again = run_snakemake(killed, [config])
    assert "Nothing to be done" in again.stdout + again.stderr
    rebatched["murals"]["m"]["refine"].update(tiles_per_job=7, blocks_per_job=3)
    dry = run_snakemake(killed, [write_config(killed, rebatched, "again.yaml")], "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr  # a finished run stays finished

    provenance = json.loads((killed / "results/m_final.provenance.json").read_text())
    assert provenance["path"]["path"] == "diffusion"
    passes = provenance["refinement"]["passes"]
    assert [p["pass"] for p in passes] == ["1.1", "2.1", "2.2"]
    assert [p["coherence"] for p in passes] == [False, False, True]
    for entry, denoise in zip(passes, (0.3, 0.3, 0.12), strict=True):
        # The paper's denoise: a share of Flux's schedule shifted as at 1024 px.
        assert entry["denoise"] == denoise and entry["model_evaluations"] == 3
        assert entry["start_sigma"] == entry["sigmas"][0] == round(shifted(denoise, SHIFT), 6)
        assert len(entry["sigmas"]) == 4 and entry["sigmas"][-1] == 0
        assert entry["refiner"]["lora"]["sha256"] == sha256(tiny_lora)
        assert entry["refiner"]["flux"]["identity"]
        assert 0 < entry["noise"]["field_seed"] < 2**63 and entry["noise"]["generator"]
        assert entry["settings"]["tile"] == 48 and entry["settings"]["overlap"] == 8
    assert len({entry["noise"]["field_seed"] for entry in passes}) == 3
    assert passes[1]["grid"]["xs"] != passes[2]["grid"]["xs"]  # grids offset per pass
    seams = json.loads((killed / "results/m_seams.json").read_text())
    assert [p["pass"] for p in seams["passes"]] == ["1.1", "2.1", "2.2"]
    assert all(p["worst_at"] and p["worst_score"] >= p["mean_score"] for p in seams["passes"])
    assert all(0 < p["worst_texture"] <= p["texture_ratio"] for p in seams["passes"])
    assert seams["final"]["pass"] == "2.2" and seams["final"]["texture_ratio"] > 0
    final = pyvips.Image.new_from_file(str(killed / "results/m_final.tif"))
    assert (final.width, final.height) == (144, 120)
    # The viewer shows every SR step and refinement pass beside the source and the result,
    # with the seam heatmap over the result.
    page = (killed / "results/view/m/index.html").read_text()
    for layer in ("source", "sr1", "refine1p1", "sr2", "refine2p1", "refine2p2", "final",
                  "seams"):  # fmt: skip
        assert (killed / f"results/view/m/{layer}.dzi").is_file(), layer
        assert f"{layer}_files" in page, layer
    refined = read_dzi(killed / "results/view/m/refine2p2.dzi")
    assert (refined["width"], refined["height"]) == (final.width, final.height)
    check_reroll_and_undo(killed, config, reference)

    # A pixel setting of the coherence pass changed: that pass (and what follows) is redone,
    # from scratch; the earlier passes are not.
    changed = yaml.safe_load(config.read_text())
    changed["murals"]["m"]["refine"]["coherence"]["denoise"] = 0.2
    changed["murals"]["m"]["refine"]["tiles_per_job"] = 40  # scheduling: one Flux job, not two
    redo = run_snakemake(killed, [write_config(killed, changed, "changed.yaml")])
    counts = job_counts(redo.stdout + redo.stderr)
    assert counts["allocate_refinement"] == 1 and "upscale_tile_batch" not in counts
    coherence = killed / "work/m/refine2.2"
    assert all(json.loads(m.read_text())["skipped"] == 0 for m in coherence.glob("tiles-*.done"))
    assert sha256(killed / "results/m_final.tif") != sha256(reference / "results/m_final.tif")


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def page_layout(page: Path) -> dict:
    text = page.read_text()
    return json.loads(
        re.search(r'id="layout" type="application/json">(.*?)</script>', text, re.S)[1]
    )


def check_reroll_and_undo(workdir: Path, config: Path, reference: Path) -> None:
    """The artist re-rolls two windows of the last pass with the list the viewer saves:
    the dry run lists only the re-roll's jobs (one GPU job for the two windows), the result
    changes only inside their footprints, no canvas of the passes changes, the provenance
    names their new seeds; undoing restores the original bytes with no GPU job; a re-roll
    of the first pass reaches the next SR step and the later passes, as the plan line says."""
    from blkassist.refine.plan import RefinePass

    stores = sorted(workdir.glob("work/m/refine*/*.zarr")) + sorted(
        workdir.glob("work/m/canvas*.zarr")
    )
    kept = {path: tree_digest(path) for path in stores}
    (workdir / "m.reroll.json").write_text(
        json.dumps({"mural": "m", "reroll": [{"pass": "2.2", "windows": [5, 9]}]})
    )
    settings = yaml.safe_load(config.read_text())
    settings["murals"]["m"]["refine"]["reroll_file"] = "m.reroll.json"
    rerolled = write_config(workdir, settings, "reroll.yaml")
    dry = run_snakemake(workdir, [rerolled], "-n")
    counts = job_counts(dry.stdout)
    assert counts.pop("reroll_windows") == 1 and counts.pop("reroll_blocks") == 1
    assert set(counts) == {"refine_report", "assemble_mural", "deep_zoom", "mural_viewer",
                           "mural_summary", "all", "total"}, counts  # fmt: skip
    assert (
        "re-roll: 2 window(s) sampled again (2.2: 2 chosen), 1 block(s) blended again" in dry.stdout
    )
    run_snakemake(workdir, [rerolled])
    again = run_snakemake(workdir, [rerolled], "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    assert {path: tree_digest(path) for path in stores} == kept
    original = tifffile.imread(reference / "results/m_final.tif")
    changed = np.any(tifffile.imread(workdir / "results/m_final.tif") != original, axis=2)
    last = RefinePass(2, 2, True, 144, 120, 48, 8, 40, 1)
    allowed = np.zeros_like(changed)
    for window in (5, 9):
        x0, y0, x1, y1 = last.footprint(last.window(window))
        allowed[y0:y1, x0:x1] = True
    assert changed.any() and not (changed & ~allowed).any()
    provenance = json.loads((workdir / "results/m_final.provenance.json").read_text())
    reroll = provenance["refinement"]["passes"][2]["reroll"]
    assert [w["window"] for w in reroll["windows"]] == [5, 9]
    field = provenance["refinement"]["passes"][2]["noise"]["field_seed"]
    for window in reroll["windows"]:
        assert window["asked_by"] == "m.reroll.json: reroll.0" and window["denoise"] == 0.12
        assert window["noise"]["kind"] == "reroll" and window["noise"]["generation"] == 1
        assert window["noise"]["pass_field_seed"] == field != window["noise"]["field_seed"]
    layout = page_layout(workdir / "results/view/m/index.html")
    assert [p["grid"]["pass"] for p in layout["panels"] if "grid" in p] == [
        "1.1",
        "2.1",
        "2.2",
        "2.2",
    ]
    assert layout["before"]["regions"] == [list(last.footprint(last.window(w))) for w in (5, 9)]

    # Undo: the pieces stay on disk, the view drops them; no GPU job, the original bytes.
    undo = run_snakemake(workdir, [config], "-n")
    counts = job_counts(undo.stdout)
    assert not {"reroll_windows", "reroll_blocks", "refine_tile_batch", "qa_rerender"} & set(counts)
    run_snakemake(workdir, [config])
    assert sha256(workdir / "results/m_final.tif") == sha256(reference / "results/m_final.tif")
    assert page_layout(workdir / "results/view/m/index.html")["before"] is None

    # A window of the first pass: the next SR step's tiles and the later passes' windows
    # that read its change are redone (the plan line says how many), nothing else.
    settings = yaml.safe_load(config.read_text())
    settings["murals"]["m"]["refine"]["reroll"] = [{"pass": "1.1", "windows": [1]}]
    dry = run_snakemake(workdir, [write_config(workdir, settings, "early.yaml")], "-n")
    counts = job_counts(dry.stdout)
    # one job or more for each pass's windows and blocks (tiles_per_job 10 here), the SR tiles
    assert {"reroll_windows", "reroll_blocks", "reroll_sr_tiles"} <= set(counts)
    assert not {"refine_tile_batch", "upscale_tile_batch", "allocate_refinement"} & set(counts)
    line = next(t for t in dry.stdout.splitlines() if t.startswith("mural m:"))
    assert re.search(
        r"re-roll: \d+ window\(s\) sampled again \(1\.1: 1 chosen; 2\.1: \d+ read "
        r"a change; 2\.2: \d+ read a change\), \d+ SR tile\(s\) upscaled again",
        line,
    )


def test_three_gigapixel_diffusion_plan_lists_every_job(tmp_path):
    from blkassist.gpu_memory import flux_configs
    from blkassist.refine.plan import RefinePass
    from tests.flux_fixtures import FULL_RANDOM_SPEC

    source = tmp_path / "scans" / "mural_master.tif"
    source.parent.mkdir()
    pyvips.Image.black(16000, 12000, bands=3).write_to_file(
        str(source), tile=True, compression="deflate"
    )
    flux = tmp_path / "models/FLUX.1-dev"
    for part, settings in flux_configs(FULL_RANDOM_SPEC).items():  # configs, no weights
        (flux / part).mkdir(parents=True)
        (flux / part / "config.json").write_text(json.dumps(settings))
    (tmp_path / "work/models").mkdir(parents=True)
    (tmp_path / "work/models/texture-studio.safetensors").touch()  # made by train_texture
    production = yaml.safe_load((REPO / "config" / "production.yaml").read_text())
    for mural in production["murals"].values():
        mural["source"] = str(source)
    config = write_config(tmp_path, production)
    started = time.monotonic()
    result = run_snakemake(
        tmp_path, [config], "results/mural_flux_final.tif", "-n", "--resources", "gpu=4"
    )
    elapsed = time.monotonic() - started
    counts = job_counts(result.stdout)
    # 64000 x 48000: ~69 x 52 windows a pass, each pass on its own grid, 16 per job.
    stages = [RefinePass(1, n, n == 4, 64000, 48000, 1024, 96, 16, 256) for n in range(1, 5)]
    assert all(68 <= s.columns <= 70 and 51 <= s.rows <= 53 for s in stages)
    assert counts["refine_tile_batch"] == sum(s.batch_count for s in stages)
    assert counts["blend_refinement"] == 4 * 46
    assert counts["measure_seams"] == 4 and counts["refine_report"] == 1
    assert counts["qa_rerender"] == 4  # the production example's QA gate after each pass
    first, stop = stages[-1].batch_range(stages[-1].batch_count - 1)
    assert f"work/mural_flux/refine1.4/tiles-{first}-{stop - 1}.done" in result.stdout
    # The plan states each GPU job's memory, and which of the paper's cards fit it.
    line = next(t for t in result.stdout.splitlines() if t.startswith("mural mural_flux:"))
    assert re.search(r"refine_tile_batch ~1[4-9]\.\d+ GiB \(fits device\(s\) 0, 1, 2, 3\)", line)
    assert re.search(r"qa_rerender ~1[4-9]\.\d+ GiB \(fits device\(s\) 0, 1, 2, 3\)", line)
    assert "upscale_tile_batch ~" in line
    print(f"3 Gpx diffusion dry-run: {elapsed:.1f} s")


@pytest.mark.parametrize(
    ("mural", "expected"),
    [
        ({"model": "lanczos", "refine": {"reroll": [{"windows": [0]}]}},
         r"murals\.m\.refine\.reroll: the mural takes the SR path \(path: auto and the long "
         r"side 384 px is at most 8192 px\)"),
        ({"model": "lanczos", "path": "diffusion",
          "refine": {"model": "resources/flux/tiny.yaml", "tile": 48, "overlap": 8,
                     "reroll": [{"windows": [999]}]}},
         r"murals\.m\.refine\.reroll\.0\.windows: \[999\] outside pass 1\.\d's \d+ windows"),
        ({"model": "lanczos", "path": "diffusion",
          "refine": {"model": "resources/flux/tiny.yaml", "reroll_file": "picks.json"}},
         r"re-roll file picks\.json does not exist: save it from the mural's viewer"),
    ],
)  # fmt: skip
def test_bad_rerolls_are_refused_before_any_job_naming_the_entry(tmp_path, mural, expected):
    Image.fromarray(textured(72, 96)).save(tmp_path / "a.png")
    config = write_config(tmp_path, {"murals": {"m": {"source": "a.png", **mural}}})
    result = run_snakemake(tmp_path, [config], "-n", check=False)
    assert result.returncode != 0
    assert re.search(expected, result.stdout + result.stderr), result.stdout[-3000:]
