from pathmm_pipeline.training.pretrain import read_external_patients
from pathmm_pipeline.training.stage import resolve_runs

TRAIN = config["training"]
PRETRAIN = TRAIN["pretraining"]
TRAIN_ENCODER = TRAIN["encoder"] or ENCODERS[0]
TASK_SLUGS = {t.replace(":", "-"): t for t in TRAIN["tasks"]}
FOLDS = list(range(TRAIN["folds"]))
FOLD_DIR = f"{RESULTS}/training/{TRAIN_ENCODER}/{{model}}/{{task}}/fold_{{fold}}"
PRETRAIN_DIR = f"{RESULTS}/pretraining/{TRAIN_ENCODER}/{{model}}/fold_{{fold}}"

try:
    RUNS = resolve_runs(TRAIN["models"], TRAIN["variants"], PRETRAIN["enabled"])
    PRETRAINED_RUNS = [label for label, run in RUNS.items() if run.pretrained]
    # the external table is read only when some run pretrains on it
    EXTERNAL = (read_external_patients(PRETRAIN["external"])
                if PRETRAIN["external"] and any(RUNS[r].external for r in PRETRAINED_RUNS) else None)
except PathmmError as exc:
    raise WorkflowError(f"the training configuration is invalid, no job was started:\n{exc}") from None


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


def cohort_inputs(wildcards):
    """The stores a training or pretraining job reads for one fold."""
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


def training_inputs(wildcards):
    inputs = cohort_inputs(wildcards)
    if RUNS[wildcards.model].pretrained:
        inputs["pretrained"] = f"{RESULTS}/pretraining/{TRAIN_ENCODER}/{wildcards.model}/fold_{wildcards.fold}/pretrained.pt"
    return inputs


def pretraining_inputs(wildcards):
    inputs = cohort_inputs(wildcards)
    if EXTERNAL is not None and RUNS[wildcards.model].external:
        inputs["external"] = PRETRAIN["external"]
        inputs["external_genomics"] = rules.external_genomics.output.store
    return inputs


def run_settings(wildcards, base):
    """The settings JSON of one run: the shared settings plus the run's model options."""
    options = RUNS[wildcards.model].options
    return json.dumps({**base, "model_options": options} if options else base, sort_keys=True)


rule external_genomics:
    input:
        expression=sorted(set(EXTERNAL.expression_path)) if EXTERNAL is not None else [],
    output:
        store=directory(f"{RESULTS}/pretraining/external/genomics.zarr"),
    params:
        settings=json.dumps({**config["genomics"], "patients": sorted(EXTERNAL.patient_id) if EXTERNAL is not None
                             else []}, sort_keys=True),
    log:
        f"{RESULTS}/logs/external_genomics.log",
    benchmark:
        f"{RESULTS}/benchmarks/external_genomics.tsv"
    conda:
        "../../envs/preprocess.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "pathmm genomics --expression {input.expression:q} --out {output.store:q} --settings {params.settings:q}"
        " > {log:q} 2>&1"


rule pretrain:
    input:
        unpack(pretraining_inputs),
    output:
        checkpoint=f"{PRETRAIN_DIR}/pretrained.pt",
        log_csv=f"{PRETRAIN_DIR}/pretrain_log.csv",
    wildcard_constraints:
        model="|".join(PRETRAINED_RUNS) or "^$",
    params:
        settings=lambda wc: run_settings(wc, {"max_tiles": TRAIN["max_tiles"], "progress": False,
                                              **PRETRAIN["settings"]}),
        model=lambda wc: RUNS[wc.model].model,
        features=f"{RESULTS}/features/{TRAIN_ENCODER}",
        optional=lambda wc, input: " ".join(f"--{k.replace('_', '-')} {input[k]}"
                                            for k in ("genomics", "reports", "external", "external_genomics")
                                            if k in input.keys()),
        splits=f"{RESULTS}/splits",
        out=PRETRAIN_DIR,
    log:
        f"{RESULTS}/logs/pretrain/{TRAIN_ENCODER}/{{model}}/fold_{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{TRAIN_ENCODER}/{{model}}/fold_{{fold}}.tsv"
    conda:
        "../../envs/training.yaml"
    threads: 1
    resources:
        mem_mb=PRETRAIN["mem_mb"],
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
        settings=lambda wc: run_settings(wc, {**TRAIN["settings"], "max_tiles": TRAIN["max_tiles"],
                                              "n_boot": TRAIN["n_boot"]}),
        model=lambda wc: RUNS[wc.model].model,
        task=lambda wc: TASK_SLUGS[wc.task],
        features=f"{RESULTS}/features/{TRAIN_ENCODER}",
        optional=lambda wc, input: " ".join(f"--{k} {input[k]}" for k in ("genomics", "reports", "pretrained")
                                            if k in input.keys()),
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
        "pathmm train --model {params.model} --label {wildcards.model} --task {params.task} --fold {wildcards.fold}"
        " --manifest {input.manifest:q} --splits {params.splits:q} --features {params.features:q} {params.optional}"
        " --out {params.out:q} --settings {params.settings:q} > {log:q} 2>&1"


DOWNSTREAM = TRAIN["downstream"]
DOWNSTREAM_RUNS = {kind: [m for m in DOWNSTREAM[kind]["models"] if m in RUNS]
                   for kind in ("report_generation", "data_efficiency")}
if not REPORTS:
    DOWNSTREAM_RUNS["report_generation"] = []


def downstream_inputs(wildcards):
    inputs = cohort_inputs(wildcards)
    inputs["checkpoint"] = f"{FOLD_DIR}/checkpoint.pt".format(**wildcards)
    if RUNS[wildcards.model].pretrained:
        inputs["pretrained"] = PRETRAIN_DIR.format(model=wildcards.model, fold=wildcards.fold) + "/pretrained.pt"
    if wildcards.kind == "report_generation":
        inputs["reports_table"] = rules.merge_reports.output[0]
    return inputs


def downstream_settings(wildcards):
    base = {**TRAIN["settings"], "max_tiles": TRAIN["max_tiles"]}
    if wildcards.kind == "report_generation":
        base["generation"] = DOWNSTREAM["report_generation"]["settings"]
    else:
        base.update(fractions=DOWNSTREAM["data_efficiency"]["fractions"],
                    per_cancer_type=DOWNSTREAM["data_efficiency"]["per_cancer_type"])
    return run_settings(wildcards, base)


rule downstream:
    input:
        unpack(downstream_inputs),
    output:
        table=f"{FOLD_DIR}/downstream_{{kind}}.csv",
    wildcard_constraints:
        kind="report_generation|data_efficiency",
    params:
        settings=downstream_settings,
        model=lambda wc: RUNS[wc.model].model,
        task=lambda wc: TASK_SLUGS[wc.task],
        features=f"{RESULTS}/features/{TRAIN_ENCODER}",
        optional=lambda wc, input: " ".join(f"--{k.replace('_', '-')} {input[k]}"
                                            for k in ("genomics", "reports", "checkpoint", "pretrained",
                                                      "reports_table") if k in input.keys()),
        splits=f"{RESULTS}/splits",
    log:
        f"{RESULTS}/logs/downstream/{TRAIN_ENCODER}/{{model}}/{{task}}/fold_{{fold}}_{{kind}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/downstream/{TRAIN_ENCODER}/{{model}}/{{task}}/fold_{{fold}}_{{kind}}.tsv"
    conda:
        "../../envs/training.yaml"
    threads: 1
    resources:
        mem_mb=TRAIN["mem_mb"],
        runtime=120,
    shell:
        "pathmm downstream --kind {wildcards.kind} --model {params.model} --label {wildcards.model}"
        " --task {params.task} --fold {wildcards.fold} --manifest {input.manifest:q} --splits {params.splits:q}"
        " --features {params.features:q} {params.optional} --out {output.table:q} --settings {params.settings:q}"
        " > {log:q} 2>&1"


def downstream_tables(wildcards=None):
    return [f"{FOLD_DIR}/downstream_{kind}.csv".format(model=m, task=t, fold=f)
            for kind, models in DOWNSTREAM_RUNS.items() for m in models for t in TASK_SLUGS for f in FOLDS]


rule evaluate:
    input:
        folds=expand(f"{FOLD_DIR}/metrics.csv", model=TRAIN["models"], task=list(TASK_SLUGS), fold=FOLDS),
        downstream=downstream_tables(),
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
