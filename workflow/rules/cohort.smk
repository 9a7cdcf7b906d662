rule cohort_manifest:
    input:
        samplesheet=config["samplesheet"],
    output:
        f"{RESULTS}/cohort/manifest.parquet",
    params:
        settings=json.dumps({"cancer_types": config["cancer_types"], "labels": config["labels"]}, sort_keys=True),
    log:
        f"{RESULTS}/logs/cohort_manifest.log",
    benchmark:
        f"{RESULTS}/benchmarks/cohort_manifest.tsv"
    conda:
        "../../envs/preprocess.yaml"
    resources:
        mem_mb=memory(2000),
        runtime=10,
    shell:
        "pathmm cohort-manifest {input.samplesheet:q} --out {output:q} --settings {params.settings:q} > {log:q} 2>&1"


rule qc_summary:
    input:
        tiles=expand(f"{RESULTS}/tiles/{{slide}}.zarr", slide=SLIDE_IDS),
        segmentation=expand(f"{RESULTS}/segmentation/{{slide}}.zarr", slide=SLIDE_IDS),
    output:
        f"{RESULTS}/qc/slides.parquet",
    log:
        f"{RESULTS}/logs/qc_summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/qc_summary.tsv"
    conda:
        "../../envs/preprocess.yaml"
    resources:
        mem_mb=memory(2000),
        runtime=10,
    shell:
        "pathmm qc-summary --tiles {input.tiles:q} --segmentation {input.segmentation:q} --out {output:q} > {log:q} 2>&1"
