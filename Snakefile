# pathmm-pipeline: the DAG. This file only loads and validates the configuration and includes the rules;
# every rule calls one `pathmm` subcommand backed by a tested library function in pathmm_pipeline/.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/tiling.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/genomics.smk"
include: "workflow/rules/reports.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/slide_features.smk"
include: "workflow/rules/heatmaps.smk"


rule all:
    default_target: True
    input:
        rules.cohort_manifest.output,
        rules.qc_summary.output if SLIDE_IDS else [],
        expand(rules.segment_tissue.output, slide=SLIDE_IDS),
        feature_stores(ENCODERS),
        feature_stores(sorted(IMPORTED)),
        feature_exports(ENCODERS),
        slide_feature_stores(),
        rules.genomics.output if EXPRESSION_FILES else [],
        rules.embed_reports.output if REPORTS else [],
        rules.evaluate.output if config["training"]["models"] else [],
        HEATMAPS.outputs() if config["training"]["models"] else [],
