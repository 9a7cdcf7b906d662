# The training half of the DAG: rules only, over the plan made in common.smk (pathmm_pipeline.plan.training:
# runs, folds, settings JSON, inputs; unit-tested, torch-free).
FOLDS = PLAN.folds
FOLD_DIR = PLAN.fold_dir
PRETRAIN_DIR = PLAN.pretrain_dir
RUNS = PLAN.runs
MSTAR = PLAN.mstar
EXTERNAL = PLAN.external


def features_dir(wildcards):
    return PLAN.features_dir(wildcards.encoder, wildcards.fold)


rule make_splits:
    input:
        manifest=rules.cohort_manifest.output.manifest,
    output:
        [f"{RESULTS}/splits/splits_{k}.csv" for k in FOLDS] + [f"{RESULTS}/splits/inner_{k}.csv" for k in FOLDS],
    params:
        settings=PLAN.splits_settings(),
        out=f"{RESULTS}/splits",
    log:
        f"{RESULTS}/logs/make_splits.log",
    benchmark:
        f"{RESULTS}/benchmarks/make_splits.tsv"
    conda:
        "../../envs/training.yaml"
    resources:
        mem_mb=memory(2000),
        runtime=10,
    shell:
        "pathmm make-splits {input.manifest:q} --out {params.out:q} --settings {params.settings:q} > {log:q} 2>&1"


def cohort_inputs(wildcards, every_modality=False):
    """The stores a training or pretraining job reads for one fold: the genomics and report stores only for a
    model that reads that modality, so that an edited report re-runs no slide-only model."""
    fold_features = PLAN.fold_encoder(wildcards.encoder, wildcards.fold) != wildcards.encoder
    inputs = {
        "manifest": rules.cohort_manifest.output[0],
        "split": f"{RESULTS}/splits/splits_{wildcards.fold}.csv",
        "inner_split": f"{RESULTS}/splits/inner_{wildcards.fold}.csv",
        # a per-fold mSTAR encoder's stores come as one folder per fold (rule extract_fold_features)
        "features": (features_dir(wildcards) if fold_features
                     else expand(f"{features_dir(wildcards)}/{{slide}}.zarr", slide=SLIDE_IDS)),
    }
    reads = PLAN.reads(wildcards.model, every_modality)
    if EXPRESSION_FILES and "genomics" in reads:
        inputs["genomics"] = rules.genomics.output.store
    if REPORTS and "report" in reads:
        inputs["reports"] = rules.embed_reports.output.store
    return inputs


def training_inputs(wildcards):
    inputs = cohort_inputs(wildcards)
    if RUNS[wildcards.model].pretrained:
        inputs["pretrained"] = PLAN.pretrained_checkpoint(wildcards.encoder, wildcards.model, wildcards.fold)
    return inputs


def pretraining_inputs(wildcards):
    inputs = cohort_inputs(wildcards)
    if EXTERNAL is not None and RUNS[wildcards.model].external:
        inputs["external"] = config["training"]["pretraining"]["external"]
        inputs["external_genomics"] = rules.external_genomics.output.store
    return inputs


rule external_genomics:
    input:
        expression=sorted(set(EXTERNAL.expression_path)) if EXTERNAL is not None else [],
    output:
        store=directory(f"{RESULTS}/pretraining/external/genomics.zarr"),
    params:
        settings=settings_json("genomics"),
        expression=list_file("external-expression", sorted(set(EXTERNAL.expression_path))
                             if EXTERNAL is not None else []),
        patients=list_file("external-patients", sorted(EXTERNAL.patient_id) if EXTERNAL is not None else []),
    log:
        f"{RESULTS}/logs/external_genomics.log",
    benchmark:
        f"{RESULTS}/benchmarks/external_genomics.tsv"
    conda:
        "../../envs/preprocess.yaml"
    resources:
        mem_mb=memory(4000),
        runtime=30,
    shell:
        "pathmm external-genomics --expression {params.expression:q} --patients {params.patients:q}"
        " --out {output.store:q} --settings {params.settings:q}"
        " > {log:q} 2>&1"


rule pretrain:
    input:
        unpack(pretraining_inputs),
    output:
        checkpoint=f"{PRETRAIN_DIR}/pretrained.pt",
        log_csv=f"{PRETRAIN_DIR}/pretrain_log.csv",
    wildcard_constraints:
        model="|".join(PLAN.pretrain_labels) or "^$",
    params:
        settings=lambda wc: PLAN.pretrain_settings(wc.model),
        model=lambda wc: RUNS[wc.model].model,
        features=features_dir,
        optional=lambda wc, input: " ".join(f"--{k.replace('_', '-')} {input[k]}"
                                            for k in ("genomics", "reports", "external", "external_genomics")
                                            if k in input.keys()),
        splits=f"{RESULTS}/splits",
        out=PRETRAIN_DIR,
    log:
        f"{RESULTS}/logs/pretrain/{{encoder}}/{{model}}/fold_{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{{encoder}}/{{model}}/fold_{{fold}}.tsv"
    conda:
        "../../envs/training.yaml"
    threads: 1
    resources:
        mem_mb=memory(config["training"]["pretraining"]["mem_mb"], scale_with=("features",), per_input_mb=2),
        runtime=240,
    shell:
        "pathmm pretrain --model {params.model} --fold {wildcards.fold} --manifest {input.manifest:q}"
        " --splits {params.splits:q} --features {params.features:q} {params.optional}"
        " --out {params.out:q} --settings {params.settings:q} > {log:q} 2>&1"


rule train:
    input:
        unpack(training_inputs),
    output:
        checkpoint=f"{FOLD_DIR}/checkpoint.pt",
        metrics=f"{FOLD_DIR}/metrics.csv",
        predictions=f"{FOLD_DIR}/predictions.csv",
        log_csv=f"{FOLD_DIR}/log.csv",
    params:
        settings=lambda wc: PLAN.train_settings(wc.model),
        model=lambda wc: RUNS[wc.model].model,
        label=lambda wc: PLAN.run_label(wc.encoder, wc.model),
        task=lambda wc: PLAN.task_slugs[wc.task],
        features=features_dir,
        optional=lambda wc, input: " ".join(f"--{k} {input[k]}" for k in ("genomics", "reports", "pretrained")
                                            if k in input.keys()),
        splits=f"{RESULTS}/splits",
        out=FOLD_DIR,
    log:
        f"{RESULTS}/logs/train/{{encoder}}/{{model}}/{{task}}/fold_{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{encoder}}/{{model}}/{{task}}/fold_{{fold}}.tsv"
    conda:
        "../../envs/training.yaml"
    threads: 1
    resources:
        mem_mb=memory(config["training"]["mem_mb"], scale_with=("features",), per_input_mb=2),
        runtime=120,
    shell:
        "pathmm train --model {params.model} --label {params.label} --task {params.task} --fold {wildcards.fold}"
        " --manifest {input.manifest:q} --splits {params.splits:q} --features {params.features:q} {params.optional}"
        " --out {params.out:q} --settings {params.settings:q} > {log:q} 2>&1"


def mstar_stage1_inputs(wildcards):
    inputs = {"manifest": rules.cohort_manifest.output[0],
              "features": expand(f"{RESULTS}/features/{MSTAR['base_encoder']}/{{slide}}.zarr", slide=SLIDE_IDS)}
    if EXPRESSION_FILES:
        inputs["genomics"] = rules.genomics.output.store
    if REPORTS:
        inputs["reports"] = rules.embed_reports.output.store
    return inputs


rule mstar_stage1:
    """mSTAR stage 1 on every patient, held-out ones included (training.mstar.mode: transductive only; per_fold
    uses the stage-1 run's fold pretraining): the frozen aggregator that stage 2 teaches the patch encoder
    against."""
    input:
        unpack(mstar_stage1_inputs),
    output:
        checkpoint=f"{RESULTS}/mstar/stage1/pretrained.pt",
        log_csv=f"{RESULTS}/mstar/stage1/pretrain_log.csv",
    params:
        settings=PLAN.stage1_settings(),
        model=PLAN.stage1_model,
        features=f"{RESULTS}/features/{MSTAR['base_encoder']}",
        optional=lambda wc, input: " ".join(f"--{k} {input[k]}" for k in ("genomics", "reports") if k in input.keys()),
        splits=f"{RESULTS}/splits",
        out=f"{RESULTS}/mstar/stage1",
    log:
        f"{RESULTS}/logs/mstar_stage1.log",
    benchmark:
        f"{RESULTS}/benchmarks/mstar_stage1.tsv"
    conda:
        "../../envs/training.yaml"
    resources:
        mem_mb=memory(config["training"]["pretraining"]["mem_mb"], scale_with=("features",), per_input_mb=2),
        runtime=240,
    shell:
        "pathmm mstar-stage1 --model {params.model} --fold -1 --manifest {input.manifest:q} --splits {params.splits:q}"
        " --features {params.features:q} {params.optional} --out {params.out:q} --settings {params.settings:q}"
        " > {log:q} 2>&1"


def mstar_stage1_checkpoint(wildcards):
    """Stage 2's teacher: the stage-1 run's pretraining on the fold's training patients (per_fold), or the
    one stage 1 on every patient (transductive)."""
    if PLAN.per_fold_mstar:
        return PLAN.pretrained_checkpoint(MSTAR["base_encoder"], MSTAR["stage1_run"], wildcards.fold)
    return f"{RESULTS}/mstar/stage1/pretrained.pt"


rule mstar_stage2:
    """mSTAR stage 2: the base patch encoder self-taught on the slides' tiles against the stage-1 aggregator --
    per fold on that fold's training patients' slides (per_fold), or once on every slide (transductive); its
    weights are the registered mSTAR encoder's, so extraction with it follows."""
    input:
        manifest=rules.cohort_manifest.output[0],
        splits=rules.make_splits.output,
        stage1=mstar_stage1_checkpoint,
        tiles=expand(f"{RESULTS}/tiles/{{slide}}.zarr", slide=SLIDE_IDS),
        base_weights=lambda wc: encoder_weights_files(MSTAR["base_encoder"]),
    output:
        weights=PLAN.stage2_output(),
    wildcard_constraints:
        encoder=MSTAR["encoder"],
        fold="|".join(map(str, FOLDS)),
    params:
        settings=PLAN.stage2_settings(),
        base=MSTAR["base_encoder"],
        base_weights=encoder_weights(MSTAR["base_encoder"]),
        tiles=f"{RESULTS}/tiles",
        fold=lambda wc: f"--splits {RESULTS}/splits --fold {wc.fold}" if PLAN.per_fold_mstar else "",
    log:
        f"{RESULTS}/logs/mstar_stage2_{{encoder}}" + ("_fold{fold}.log" if PLAN.per_fold_mstar else ".log"),
    benchmark:
        f"{RESULTS}/benchmarks/mstar_stage2_{{encoder}}" + ("_fold{fold}.tsv" if PLAN.per_fold_mstar else ".tsv"),
    conda:
        "../../envs/training.yaml"
    threads: config["features"]["threads"]
    resources:
        mem_mb=memory(8000),
        runtime=480,
        gpu=1,
    shell:
        "pathmm mstar-stage2 --manifest {input.manifest:q} --tiles {params.tiles:q} --stage1 {input.stage1:q}"
        " --base-encoder {params.base} --base-weights {params.base_weights:q} {params.fold} --out {output.weights:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"


rule extract_fold_features:
    """Every slide's features with fold k's mSTAR encoder (per_fold mode), in one job per fold: one model load
    and one submission instead of one per slide and fold."""
    input:
        manifest=rules.cohort_manifest.output[0],
        slides=[SLIDES[s].path for s in SLIDE_IDS],
        tiles=expand(f"{RESULTS}/tiles/{{slide}}.zarr", slide=SLIDE_IDS),
        weights=lambda wc: encoder_weights_files(PLAN.fold_encoder(MSTAR["encoder"], wc.fold)),
    output:
        directory(f"{RESULTS}/features/{MSTAR['encoder']}_fold{{fold}}"),
    wildcard_constraints:
        fold="|".join(map(str, FOLDS)),
    params:
        settings=lambda wc: extraction_settings_json(PLAN.fold_encoder(MSTAR["encoder"], wc.fold)),
        backend=slide_backend_args(),
        tiles=f"{RESULTS}/tiles",
    log:
        f"{RESULTS}/logs/extract_fold_features/{MSTAR['encoder']}_fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_fold_features/{MSTAR['encoder']}_fold{{fold}}.tsv"
    conda:
        "../../envs/features.yaml"
    threads: config["features"]["threads"]
    resources:
        mem_mb=memory(config["features"]["mem_mb"], scale_with=("weights",), per_input_mb=3),
        runtime=480,
        gpu=1,
        **extraction_throughput(),
    shell:
        "pathmm extract-fold-features --manifest {input.manifest:q} --tiles {params.tiles:q} --out {output:q}"
        " {params.backend} --settings {params.settings:q} " + THROUGHPUT_ARGS + " > {log:q} 2>&1"


def downstream_inputs(wildcards):
    inputs = cohort_inputs(wildcards, every_modality=PLAN.reads_every_modality(wildcards.kind))
    inputs["checkpoint"] = f"{FOLD_DIR}/checkpoint.pt".format(**wildcards)
    if RUNS[wildcards.model].pretrained:
        inputs["pretrained"] = PLAN.pretrained_checkpoint(wildcards.encoder, wildcards.model, wildcards.fold)
    if PLAN.needs_reports_table(wildcards.kind):
        inputs["reports_table"] = rules.merge_reports.output[0]
    return inputs


rule downstream:
    input:
        unpack(downstream_inputs),
    output:
        table=f"{FOLD_DIR}/downstream_{{kind}}.csv",
    wildcard_constraints:
        kind="|".join(PLAN.downstream_runs),
    params:
        settings=lambda wc: PLAN.downstream_settings(wc.model, wc.kind),
        model=lambda wc: RUNS[wc.model].model,
        label=lambda wc: PLAN.run_label(wc.encoder, wc.model),
        task=lambda wc: PLAN.task_slugs[wc.task],
        features=features_dir,
        optional=lambda wc, input: " ".join(f"--{k.replace('_', '-')} {input[k]}"
                                            for k in ("genomics", "reports", "checkpoint", "pretrained",
                                                      "reports_table") if k in input.keys()),
        splits=f"{RESULTS}/splits",
    log:
        f"{RESULTS}/logs/downstream/{{encoder}}/{{model}}/{{task}}/fold_{{fold}}_{{kind}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/downstream/{{encoder}}/{{model}}/{{task}}/fold_{{fold}}_{{kind}}.tsv"
    conda:
        "../../envs/training.yaml"
    threads: 1
    resources:
        mem_mb=memory(config["training"]["mem_mb"], scale_with=("features",), per_input_mb=2),
        runtime=120,
    shell:
        "pathmm downstream --kind {wildcards.kind} --model {params.model} --label {params.label}"
        " --task {params.task} --fold {wildcards.fold} --manifest {input.manifest:q} --splits {params.splits:q}"
        " --features {params.features:q} {params.optional} --out {output.table:q} --settings {params.settings:q}"
        " > {log:q} 2>&1"


rule evaluate:
    input:
        folds=PLAN.fold_metrics(),
        downstream=PLAN.downstream_tables(),
        qc=rules.qc_summary.output if SLIDE_IDS else [],
        resolution=rules.cohort_manifest.output.resolution,
        # the heatmaps of the top / bottom-scored held-out patients (workflow/rules/heatmaps.smk), shown in the report
        heatmaps=lambda wc: HEATMAPS.outputs(),
    output:
        html=report(f"{RESULTS}/evaluation/report.html", caption="../report/evaluation.rst", category="Evaluation",
                    labels={"report": "evaluation"}),
        summary=f"{RESULTS}/evaluation/summary.json",
    params:
        folds=lambda wc, input: " ".join(str(Path(p).parent) for p in input.folds),
        heatmaps=lambda wc, input: " ".join(["--heatmaps", *([input.heatmaps] if isinstance(input.heatmaps, str)
                                                             else input.heatmaps)]) if input.heatmaps else "",
    log:
        f"{RESULTS}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate.tsv"
    conda:
        "../../envs/training.yaml"
    # bench/evaluate_scale.py: 100,000 slides (40k patients, 10 folds) in 99 s at 2.0 GB peak on 2 cores
    resources:
        mem_mb=memory(4000),
        runtime=30,
    shell:
        "pathmm evaluate {params.folds} --results {RESULTS:q} {params.heatmaps} --out {output.html:q} > {log:q} 2>&1"
