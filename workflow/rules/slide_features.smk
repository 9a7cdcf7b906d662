# Slide features (issue 18 item 4): one job per slide and slide encoder, results/slide_features/{encoder}/{slide}.zarr,
# from the slide's patch features of the encoder's own patch encoder (pathmm_pipeline.plan.slide_features) and its
# tile store (the tile size at level 0). Off while slide_features.encoders is empty (the default).
from pathmm_pipeline.plan.slide_features import SlideFeaturePlan

try:
    SLIDE_FEATURES = SlideFeaturePlan(config)
except PathmmError as exc:
    raise WorkflowError(f"the slide_features configuration is invalid, no job was started:\n{exc}") from None

SLIDE_FEATURE_STORE = f"{RESULTS}/slide_features/{{slide_encoder}}/{{slide}}.zarr"


def slide_feature_weights(wildcards):
    """The slide encoder's local checkpoint, so that new weights re-run its jobs (none: random init)."""
    weights = SLIDE_FEATURES.weights[wildcards.slide_encoder]
    return [weights] if weights else []


if SLIDE_FEATURES.encoders:

    rule slide_features:
        wildcard_constraints:
            slide_encoder="|".join(SLIDE_FEATURES.encoders),
        input:
            features=lambda wc: FEATURE_STORE.format(encoder=SLIDE_FEATURES.inputs[wc.slide_encoder], slide=wc.slide),
            tiles=f"{RESULTS}/tiles/{{slide}}.zarr",
            weights=slide_feature_weights,
        output:
            store=directory(SLIDE_FEATURE_STORE),
        params:
            settings=lambda wc: SLIDE_FEATURES.settings_json(wc.slide_encoder),
        log:
            f"{RESULTS}/logs/slide_features/{{slide_encoder}}/{{slide}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/slide_features/{{slide_encoder}}/{{slide}}.tsv"
        conda:
            "../../envs/features.yaml"
        threads: config["slide_features"]["threads"]
        resources:
            mem_mb=memory(config["slide_features"]["mem_mb"], scale_with=("weights", "features"), per_input_mb=3),
            runtime=30,
        shell:
            "pathmm slide-features --encoder {wildcards.slide_encoder} --features {input.features:q}"
            " --tiles {input.tiles:q} --out {output.store:q} --settings {params.settings:q} > {log:q} 2>&1"


def slide_feature_stores():
    """Every slide's store of every configured slide encoder (none while slide_features.encoders is empty)."""
    return expand(SLIDE_FEATURE_STORE, slide_encoder=SLIDE_FEATURES.encoders, slide=SLIDE_IDS)
