rule tile_slide:
    input:
        slide=slide_path,
        segmentation=f"{RESULTS}/segmentation/{{slide}}.zarr",
    output:
        store=directory(f"{RESULTS}/tiles/{{slide}}.zarr"),
    params:
        settings=settings_json("tiling"),
        backend=slide_backend_args(),
        mpp=slide_mpp,
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
        + LIMIT_ARGS + " > {log:q} 2>&1"
