rule segment_tissue:
    input:
        slide=slide_path,
    output:
        store=directory(f"{RESULTS}/segmentation/{{slide}}.zarr"),
        geojson=f"{RESULTS}/segmentation/{{slide}}.geojson",
        thumbnail=report(f"{RESULTS}/segmentation/{{slide}}.qc.png", caption="../report/qc_thumbnail.rst",
                         category="Quality control", subcategory="Tissue segmentation",
                         labels={"slide": "{slide}"}),
    params:
        settings=settings_json("segmentation"),
        backend=slide_backend_args(),
        mpp=slide_mpp,
    log:
        f"{RESULTS}/logs/segment_tissue/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment_tissue/{{slide}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=memory(config["resources"]["segment_mem_mb"]),
        runtime=20,
        **slide_limits(),
    shell:
        "pathmm segment-tissue {input.slide:q} --slide-id {wildcards.slide} {params.backend} --mpp '{params.mpp}'"
        " --settings {params.settings:q} --store {output.store:q} --geojson {output.geojson:q}"
        " --thumbnail {output.thumbnail:q}" + LIMIT_ARGS + " > {log:q} 2>&1"
