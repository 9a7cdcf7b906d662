TRAIN = config["training"]
TRAIN_ENCODER = TRAIN["encoder"] or ENCODERS[0]
TASK_SLUGS = {t.replace(":", "-"): t for t in TRAIN["tasks"]}
FOLDS = list(range(TRAIN["folds"]))
FOLD_DIR = f"{RESULTS}/training/{TRAIN_ENCODER}/{{model}}/{{task}}/fold_{{fold}}"


rule make_splits:
    input:
        manifest=rules.cohort_manifest.output,
    output:
        [f"{RESULTS}/splits/splits_{k}.csv" for k in FOLDS],
    params:
        settings=json.dumps({"k": TRAIN["folds"], "stratify": TRAIN["stratify"], "seed": TRAIN["split_seed"],
                             "published": TRAIN["published_splits"]}, sort_keys=True),
        out=f"{RESULTS}/splits",
    log:
        f"{RESULTS}/logs/make_splits.log",
    benchmark:
        f"{RESULTS}/benchmarks/make_splits.tsv"
    conda:
        "../../envs/training.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "pathmm splits {input.manifest:q} --out {params.out:q} --settings {params.settings:q} > {log:q} 2>&1"


def training_inputs(wildcards):
    inputs = {
        "manifest": rules.cohort_manifest.output[0],
        "split": f"{RESULTS}/splits/splits_{wildcards.fold}.csv",
        "features": expand(f"{RESULTS}/features/{TRAIN_ENCODER}/{{slide}}.zarr", slide=SLIDE_IDS),
    }
    if EXPRESSION_FILES:
        inputs["genomics"] = rules.genomics.output.store
    if REPORTS:
        inputs["reports"] = rules.embed_reports.output.store
    return inputs


rule train:
    input:
        unpack(training_inputs),
    output:
        checkpoint=f"{FOLD_DIR}/checkpoint.pt",
        metrics=f"{FOLD_DIR}/metrics.csv",
        predictions=f"{FOLD_DIR}/predictions.csv",
        log_csv=f"{FOLD_DIR}/log.csv",
    params:
        settings=json.dumps({**TRAIN["settings"], "max_tiles": TRAIN["max_tiles"], "n_boot": TRAIN["n_boot"]},
                            sort_keys=True),
        task=lambda wc: TASK_SLUGS[wc.task],
        features=f"{RESULTS}/features/{TRAIN_ENCODER}",
        optional=lambda wc, input: " ".join(f"--{k} {input[k]}" for k in ("genomics", "reports") if k in input.keys()),
        splits=f"{RESULTS}/splits",
        out=FOLD_DIR,
    log:
        f"{RESULTS}/logs/train/{TRAIN_ENCODER}/{{model}}/{{task}}/fold_{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{TRAIN_ENCODER}/{{model}}/{{task}}/fold_{{fold}}.tsv"
    conda:
        "../../envs/training.yaml"
    threads: 1
    resources:
        mem_mb=TRAIN["mem_mb"],
        runtime=120,
    shell:
        "pathmm train --model {wildcards.model} --task {params.task} --fold {wildcards.fold}"
        " --manifest {input.manifest:q} --splits {params.splits:q} --features {params.features:q} {params.optional}"
        " --out {params.out:q} --settings {params.settings:q} > {log:q} 2>&1"


rule evaluate:
    input:
        folds=expand(f"{FOLD_DIR}/metrics.csv", model=TRAIN["models"], task=list(TASK_SLUGS), fold=FOLDS),
        qc=rules.qc_summary.output,
    output:
        html=f"{RESULTS}/evaluation/report.html",
        summary=f"{RESULTS}/evaluation/summary.json",
    params:
        folds=lambda wc, input: " ".join(str(Path(p).parent) for p in input.folds),
    log:
        f"{RESULTS}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate.tsv"
    conda:
        "../../envs/training.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "pathmm report {params.folds} --results {RESULTS:q} --out {output.html:q} > {log:q} 2>&1"
