# Patch features: one store per slide and encoder, results/features/{encoder}/{slide}.zarr. With
# features.slides_per_job = 1 one job per slide (rule extract_features); above 1, one job per stable bucket of
# slides and encoder (rules extract_features__<encoder>__<bucket>, pathmm_pipeline.plan.buckets): the encoder is
# loaded once per job, and a changed or added slide re-runs only its bucket.
#
# features.import {name: folder}: the stores of folder <name> are imported from <folder>/<slide>.h5 (TRIDENT / CLAM,
# rule import_features) instead of extracted; features.export: every extracted store is also written in those
# tools' layouts under results/export/ (rule export_features, pathmm_pipeline.preprocess.interop).
import re

from pathmm_pipeline.preprocess.interop.layouts import export_patterns

FEATURE_STORE = f"{RESULTS}/features/{{encoder}}/{{slide}}.zarr"
SLIDES_PER_JOB = config["features"]["slides_per_job"]
IMPORTED = config["features"]["import"]
EXPORTS = config["features"]["export"]
EXPORT_ROOT = f"{RESULTS}/export"
_IMPORTED_NAMES = "|".join(re.escape(name) for name in sorted(IMPORTED))
#: the feature folders extraction makes: any but the imported ones (a name ends at a word boundary, the "/")
EXTRACTED_ENCODER = f"(?!(?:{_IMPORTED_NAMES})\\b)[A-Za-z0-9_]+" if IMPORTED else "[A-Za-z0-9_]+"


if SLIDES_PER_JOB == 1:

    rule extract_features:
        wildcard_constraints:
            encoder=EXTRACTED_ENCODER,
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
    for _encoder in [e for e in PLAN.slide_feature_encoders if e not in IMPORTED]:
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


if IMPORTED:

    rule import_features:
        wildcard_constraints:
            encoder=_IMPORTED_NAMES,
        input:
            source=lambda wc: f"{IMPORTED[wc.encoder]}/{wc.slide}.h5",
            slide=slide_path,
        output:
            store=directory(FEATURE_STORE),
        params:
            backend=slide_backend_args(),
            mpp=slide_mpp,
        log:
            f"{RESULTS}/logs/import_features/{{encoder}}/{{slide}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/import_features/{{encoder}}/{{slide}}.tsv"
        conda:
            "../../envs/features.yaml"
        threads: 1
        resources:
            mem_mb=memory(2000, scale_with=("source",), per_input_mb=3),
            runtime=20,
        shell:
            "pathmm import-features {input.source:q} --slide {input.slide:q} --slide-id {wildcards.slide}"
            " --encoder {wildcards.encoder} {params.backend} --mpp '{params.mpp}' --store {output.store:q}"
            " > {log:q} 2>&1"


if EXPORTS:

    rule export_features:
        wildcard_constraints:
            encoder=EXTRACTED_ENCODER,
        input:
            store=FEATURE_STORE,
            tiles=f"{RESULTS}/tiles/{{slide}}.zarr",
        output:
            export_patterns(EXPORT_ROOT, EXPORTS),
        params:
            formats=" ".join(f"--format {name}" for name in EXPORTS),
            root=EXPORT_ROOT,
        log:
            f"{RESULTS}/logs/export_features/{{encoder}}/{{slide}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/export_features/{{encoder}}/{{slide}}.tsv"
        conda:
            "../../envs/features.yaml"
        threads: 1
        resources:
            mem_mb=memory(2000, scale_with=("store",), per_input_mb=3),
            runtime=20,
        shell:
            "pathmm export-features --store {input.store:q} --tiles {input.tiles:q} --out {params.root:q}"
            " {params.formats} --encoder {wildcards.encoder} --slide-id {wildcards.slide} > {log:q} 2>&1"


def feature_exports(encoders):
    """The export files of the extracted ``encoders`` for every slide (none without features.export)."""
    extracted = [e for e in encoders if e not in IMPORTED]
    return [p for pattern in export_patterns(EXPORT_ROOT, EXPORTS)
            for p in expand(pattern, encoder=extracted, slide=SLIDE_IDS)]


def feature_stores(encoder, slides=None):
    """The feature stores of ``encoder`` for ``slides`` (default: every slide)."""
    return expand(FEATURE_STORE, encoder=encoder, slide=SLIDE_IDS if slides is None else slides)
