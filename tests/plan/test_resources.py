"""Memory requests of cluster jobs: scaled with their inputs, grown on retry, capped."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from pathmm_pipeline.plan.resources import inputs_size_mb, job_memory_mb, path_size_mb


def test_memory_grows_with_each_attempt_and_is_capped():
    assert [job_memory_mb(1000, a, retry_growth=1.5) for a in (1, 2, 3)] == [1000, 1500, 2250]
    assert job_memory_mb(1000, 3, retry_growth=2.0, cap_mb=3000) == 3000


def test_memory_scales_with_the_inputs_held_in_memory():
    assert job_memory_mb(4000, 1, input_mb=500.0, per_input_mb=2) == 5000
    assert job_memory_mb(4000, 2, input_mb=500.0, per_input_mb=2, retry_growth=1.5) == 7500


@pytest.mark.parametrize("kwargs", [{"base_mb": 0}, {"base_mb": 100, "attempt": 0},
                                    {"base_mb": 100, "retry_growth": 0.5}, {"base_mb": 100, "input_mb": -1.0}])
def test_an_invalid_request_is_refused(kwargs):
    with pytest.raises(ValueError, match="invalid memory request"):
        job_memory_mb(**kwargs)


def test_sizes_of_files_and_zarr_stores(tmp_path):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"\0" * (3 * 1024 * 1024))
    store = zarr.open_group(str(tmp_path / "features.zarr"), mode="w")
    store.create_array("features", data=np.random.default_rng(0).random((512, 1024), dtype=np.float32),
                       compressors=None)
    assert path_size_mb(weights) == 3.0
    assert 2.0 <= path_size_mb(tmp_path / "features.zarr") <= 2.1  # 512 x 1024 float32 uncompressed + metadata
    assert path_size_mb(tmp_path / "not-yet-written.zarr") == 0.0
    assert inputs_size_mb([weights, tmp_path / "features.zarr"]) == pytest.approx(
        path_size_mb(weights) + path_size_mb(tmp_path / "features.zarr"))
