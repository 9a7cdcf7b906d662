# Patch features: one store per slide and encoder, results/features/{encoder}/{slide}.zarr. With
# features.slides_per_job = 1 one job per slide (rule extract_features); above 1, one job per stable bucket of
# slides and encoder (rules extract_features__<encoder>__<bucket>, pathmm_pipeline.plan.buckets): the encoder is
# loaded once per job, and a changed or added slide re-runs only its bucket.
FEATURE_STORE = f"{RESULTS}/features/{{encoder}}/{{slide}}.zarr"
SLIDES_PER_JOB = config["features"]["slides_per_job"]


if SLIDES_PER_JOB == 1:

    rule extract_features:
        input:
            slide=slide_path,
            tiles=f"{RESULTS}/tiles/{{slide}}.zarr",
            weights=lambda wc: encoder_weights_files(wc.encoder),
        output:
            store=directory(FEATURE_STORE),
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
            **slide_limits(),
        shell:
            "pathmm extract-features {input.slide:q} --slide-id {wildcards.slide} {params.backend} --mpp '{params.mpp}'"
            " --settings {params.settings:q} " + THROUGHPUT_ARGS + LIMIT_ARGS + " --tiles {input.tiles:q}"
            " --store {output.store:q} > {log:q} 2>&1"

else:
    for _encoder in PLAN.slide_feature_encoders:
        for _bucket, _slides in slide_buckets(SLIDE_IDS, SLIDES_PER_JOB).items():

            rule:
                name:
                    bucket_rule(_encoder, _bucket)
                input:
                    slides=[SLIDES[s].path for s in _slides],
                    tiles=[f"{RESULTS}/tiles/{s}.zarr" for s in _slides],
                    weights=encoder_weights_files(_encoder),
                output:
                    [directory(FEATURE_STORE.format(encoder=_encoder, slide=s)) for s in _slides],
                params:
                    settings=extraction_settings_json(_encoder),
                    backend=slide_backend_args(),
                    jobs=bucket_jobs_json(_encoder, _slides),
                log:
                    f"{RESULTS}/logs/extract_features/{_encoder}/{_bucket}.log",
                benchmark:
                    f"{RESULTS}/benchmarks/extract_features/{_encoder}/{_bucket}.tsv"
                conda:
                    "../../envs/features.yaml"
                threads: config["features"]["threads"]
                resources:
                    mem_mb=memory(config["features"]["mem_mb"], scale_with=("weights",), per_input_mb=3),
                    runtime=120 + 10 * len(_slides),
                    **extraction_throughput(),
                    **slide_limits(),
                shell:
                    "pathmm extract-features-bucket --jobs {params.jobs:q} {params.backend}"
                    " --settings {params.settings:q} " + THROUGHPUT_ARGS + LIMIT_ARGS + " > {log:q} 2>&1"

            inherit_resources(bucket_rule(_encoder, _bucket), "extract_features")


def feature_stores(encoder, slides=None):
    """The feature stores of ``encoder`` for ``slides`` (default: every slide)."""
    return expand(FEATURE_STORE, encoder=encoder, slide=SLIDE_IDS if slides is None else slides)
