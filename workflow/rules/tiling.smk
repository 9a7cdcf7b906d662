rule tile_slide:
    input:
        slide=slide_path,
        segmentation=f"{RESULTS}/segmentation/{{slide}}.zarr",
        roi=slide_roi,  # the slide's ROI GeoJSON, when the sample sheet names one
    output:
        store=directory(f"{RESULTS}/tiles/{{slide}}.zarr"),
        qc=f"{RESULTS}/qc/tiles/{{slide}}.parquet",  # every candidate tile's metrics, decision and reason
    params:
        settings=tiling_settings_json,
        qc=settings_json("qc"),
        backend=slide_backend_args(),
        mpp=slide_mpp,
        roi=slide_roi_args,
    log:
        f"{RESULTS}/logs/tile_slide/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tile_slide/{{slide}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=memory(config["resources"]["tile_mem_mb"]),
        runtime=20,
        **slide_limits(),
    shell:
        "pathmm tile-slide {input.slide:q} --slide-id {wildcards.slide} {params.backend} --mpp '{params.mpp}'"
        " --settings {params.settings:q} --segmentation {input.segmentation:q} --store {output.store:q}"
        " --qc {params.qc:q} --qc-table {output.qc:q} {params.roi}"
        + LIMIT_ARGS + " > {log:q} 2>&1"
