rule cohort_manifest:
    input:
        samplesheet=config["samplesheet"],
    output:
        manifest=f"{RESULTS}/cohort/manifest.parquet",
        resolution=report(f"{RESULTS}/cohort/resolution.csv", caption="../report/resolution.rst",
                          category="Cohort", labels={"table": "slide resolution"}),  # every slide's mpp x/y, source, objective, vendor, flags
    params:
        settings=json.dumps({"cancer_types": config["cancer_types"], "labels": config["labels"]}, sort_keys=True),
        backend=slide_backend_args(),
        io_threads=8,  # slide headers are read on threads that wait on the disk, not on a CPU each
    log:
        f"{RESULTS}/logs/cohort_manifest.log",
    benchmark:
        f"{RESULTS}/benchmarks/cohort_manifest.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1  # a cluster job asks for its threads as CPUs; the header reads are I/O (params.io_threads)
    # scheduled before the slide jobs, which do not depend on it: an ancient() input whose producer re-runs
    # makes Snakemake 9 skip the consumer's params trigger (a changed mpp would re-run no slide job)
    priority: 100
    resources:
        mem_mb=memory(2000),
        runtime=10 + len(SLIDE_IDS) // 2000,
        **slide_limits(),
    shell:
        "pathmm cohort-manifest {input.samplesheet:q} --out {output.manifest:q} --settings {params.settings:q}"
        " --resolution {output.resolution:q} {params.backend} --threads {params.io_threads}" + LIMIT_ARGS + " > {log:q} 2>&1"


rule qc_summary:
    input:
        tiles=expand(f"{RESULTS}/tiles/{{slide}}.zarr", slide=SLIDE_IDS),
        segmentation=expand(f"{RESULTS}/segmentation/{{slide}}.zarr", slide=SLIDE_IDS),
    output:
        f"{RESULTS}/qc/slides.parquet",
    params:  # the lists go through files (a command line cannot hold 12,000 slides); the name is their digest
        tiles=list_file("qc-tiles", expand(f"{RESULTS}/tiles/{{slide}}.zarr", slide=SLIDE_IDS)),
        segmentation=list_file("qc-segmentation", expand(f"{RESULTS}/segmentation/{{slide}}.zarr", slide=SLIDE_IDS)),
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
        "pathmm qc-summary --tiles {params.tiles:q} --segmentation {params.segmentation:q} --out {output:q} > {log:q} 2>&1"
