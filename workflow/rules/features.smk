rule extract_features:
    input:
        slide=slide_path,
        tiles=f"{RESULTS}/tiles/{{slide}}.zarr",
        weights=lambda wc: encoder_weights_files(wc.encoder),
    output:
        store=directory(f"{RESULTS}/features/{{encoder}}/{{slide}}.zarr"),
    params:
        settings=lambda wc: extraction_settings_json(wc.encoder),
        backend=slide_backend_args(),
        mpp=slide_mpp,
    log:
        f"{RESULTS}/logs/extract_features/{{encoder}}/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_features/{{encoder}}/{{slide}}.tsv"
    conda:
        "../../envs/features.yaml"
    threads: config["features"]["threads"]
    resources:
        mem_mb=memory(config["features"]["mem_mb"], scale_with=("weights",), per_input_mb=3),
        runtime=120,
        **extraction_throughput(),
    shell:
        "pathmm extract-features {input.slide:q} --slide-id {wildcards.slide} {params.backend} --mpp '{params.mpp}'"
        " --settings {params.settings:q} " + THROUGHPUT_ARGS + " --tiles {input.tiles:q} --store {output.store:q}"
        " > {log:q} 2>&1"
