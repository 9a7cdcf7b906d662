# Heatmaps (issue 18 item 3): one job per trained run and fold (pathmm_pipeline.plan.heatmaps), drawing the fold's
# highest- and lowest-scored held-out patients from the stored features and the fold's checkpoint; the evaluation
# report shows them (its rule lists these folders as inputs). Per slide on request: pathmm heatmaps --run --slide.
from pathmm_pipeline.plan.heatmaps import HeatmapPlan

try:
    HEATMAPS = HeatmapPlan(config, PLAN)
except PathmmError as exc:
    raise WorkflowError(f"the heatmaps configuration is invalid, no job was started:\n{exc}") from None


def heatmap_inputs(wildcards):
    """The fold's checkpoint and held-out predictions, the stores the model reads (as its training job), and the
    tile and segmentation stores, QC thumbnails and slides the heatmaps are drawn from and over."""
    inputs = {k: v for k, v in cohort_inputs(wildcards).items() if k not in ("split", "inner_split")}
    fold_dir = FOLD_DIR.format(**wildcards)
    inputs.update(checkpoint=f"{fold_dir}/checkpoint.pt", predictions=f"{fold_dir}/predictions.csv",
                  tiles=expand(f"{RESULTS}/tiles/{{slide}}.zarr", slide=SLIDE_IDS),
                  segmentation=expand(rules.segment_tissue.output.store, slide=SLIDE_IDS),
                  thumbnails=expand(rules.segment_tissue.output.thumbnail, slide=SLIDE_IDS),
                  slides=[SLIDES[s].path for s in SLIDE_IDS])
    return inputs


rule heatmaps:
    input:
        unpack(heatmap_inputs),
    output:
        folder=report(directory(HEATMAPS.out_dir), patterns=["{slide}/{map,attention|contribution}.png"],
                      caption="../report/heatmaps.rst", category="Heatmaps", subcategory="{model}",
                      labels={"run": "{model}", "encoder": "{encoder}", "fold": "{fold}", "slide": "{slide}",
                              "map": "{map}"}),
    wildcard_constraints:
        model="|".join(sorted({r for _, r, _, _ in HEATMAPS.jobs})) or "^$",
    params:
        settings=HEATMAPS.settings(),
        label=lambda wc: PLAN.run_label(wc.encoder, wc.model),
        features=features_dir,
        optional=lambda wc, input: " ".join(f"--{k} {input[k]}" for k in ("genomics", "reports") if k in input.keys()),
        tiles=f"{RESULTS}/tiles",
        segmentation=f"{RESULTS}/segmentation",
    log:
        f"{RESULTS}/logs/heatmaps/{{encoder}}/{{model}}/{{task}}/fold_{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/heatmaps/{{encoder}}/{{model}}/{{task}}/fold_{{fold}}.tsv"
    conda:
        "../../envs/training.yaml"
    threads: 1
    resources:
        mem_mb=memory(config["training"]["mem_mb"], scale_with=("features",), per_input_mb=2),
        runtime=30,
    shell:
        "pathmm heatmaps --checkpoint {input.checkpoint:q} --manifest {input.manifest:q} --features {params.features:q}"
        " --tiles {params.tiles:q} --segmentation {params.segmentation:q} {params.optional} --label {params.label}"
        " --out {output.folder:q} --settings {params.settings:q} > {log:q} 2>&1"
