from pathmm_pipeline.preprocess.samplesheet import read_external_patients
from pathmm_pipeline.plan.runs import check_runs_against_cohort, resolve_runs

TRAIN = config["training"]
PRETRAIN = TRAIN["pretraining"]
TRAIN_ENCODER = TRAIN["encoder"] or ENCODERS[0]
TASK_SLUGS = {t.replace(":", "-"): t for t in TRAIN["tasks"]}
FOLDS = list(range(TRAIN["folds"]))
FOLD_DIR = f"{RESULTS}/training/{{encoder}}/{{model}}/{{task}}/fold_{{fold}}"
PRETRAIN_DIR = f"{RESULTS}/pretraining/{{encoder}}/{{model}}/fold_{{fold}}"
MSTAR = TRAIN["mstar"]
INNER = TRAIN["inner_validation"]
#: the evaluation protocol, the same for every run: how an epoch or a penalty is chosen (never on the held-out fold)
PROTOCOL = {"selection": TRAIN["selection"], "inner_fraction": INNER["fraction"], "inner_seed": INNER["seed"]}
#: (encoder, run) pairs trained: every run on the main encoder, and the runs listed per compared encoder
TRAINED = [(TRAIN_ENCODER, m) for m in TRAIN["models"]] + [
    (e, m) for e, models in TRAIN["compare_encoders"].items() for m in models]
PER_FOLD_MSTAR = MSTAR["mode"] == "per_fold"
MSTAR_USED = bool(TRAIN["compare_encoders"].get(MSTAR["encoder"])) or MSTAR["encoder"] in ENCODERS
if PER_FOLD_MSTAR and MSTAR["encoder"] in ENCODERS:
    raise WorkflowError(f"training.mstar.mode per_fold: the mSTAR encoder {MSTAR['encoder']} has one set of weights "
                        "per fold, so it cannot be a features.encoders entry (one store per slide); list it under "
                        "training.compare_encoders, or set training.mstar.mode: transductive")


def fold_encoder(encoder, fold):
    """The feature folder name of ``encoder`` for fold ``fold``: the mSTAR encoder in per_fold mode has one per
    fold (``<encoder>_fold<k>``, weights from that fold's stage 2), every other encoder one for all folds."""
    return f"{encoder}_fold{fold}" if PER_FOLD_MSTAR and encoder == MSTAR["encoder"] else encoder


def features_dir(wildcards):
    return f"{RESULTS}/features/{fold_encoder(wildcards.encoder, wildcards.fold)}"


if MSTAR_USED:
    # the mSTAR encoder's weights are the output of stage 2 (which extraction then waits for)
    if PER_FOLD_MSTAR:
        for _k in FOLDS:
            config["encoder_weights"].setdefault(fold_encoder(MSTAR["encoder"], _k),
                                                 f"{RESULTS}/mstar/stage2/{MSTAR['encoder']}/fold_{_k}.pt")
            ENCODER_ALIASES[fold_encoder(MSTAR["encoder"], _k)] = MSTAR["encoder"]
    else:
        config["encoder_weights"].setdefault(MSTAR["encoder"], f"{RESULTS}/mstar/stage2/{MSTAR['encoder']}.pt")


def run_label(encoder, model):
    """A run's name in the tables: the run, with the encoder when it is not the main one."""
    return model if encoder == TRAIN_ENCODER else f"{model}@{encoder}"

try:
    RUNS = resolve_runs(list(dict.fromkeys([m for _, m in TRAINED] + ([MSTAR["stage1_run"]] if MSTAR_USED else []))),
                        TRAIN["variants"],
                        PRETRAIN["enabled"])
    _PATIENTS = {"wsi": {e.patient_id for e in SLIDES.values()}, "genomics": set(PATIENTS_WITH_EXPRESSION),
                 "report": set(REPORTS)}
    check_runs_against_cohort(RUNS, {m for m, ids in _PATIENTS.items() if ids},
                              {m: len(ids) for m, ids in _PATIENTS.items()})
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
        [f"{RESULTS}/splits/splits_{k}.csv" for k in FOLDS] + [f"{RESULTS}/splits/inner_{k}.csv" for k in FOLDS],
    params:
        settings=json.dumps({"k": TRAIN["folds"], "stratify": TRAIN["stratify"], "seed": TRAIN["split_seed"],
                             "published": TRAIN["published_splits"], "inner_fraction": INNER["fraction"],
                             "inner_seed": INNER["seed"]}, sort_keys=True),
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
        "pathmm splits {input.manifest:q} --out {params.out:q} --settings {params.settings:q} > {log:q} 2>&1"


def cohort_inputs(wildcards, model_reads_only=True):
    """The stores a training or pretraining job reads for one fold: the genomics and report stores only for a
    model that reads that modality (``uses``), so that an edited report re-runs no slide-only model."""
    inputs = {
        "manifest": rules.cohort_manifest.output[0],
        "split": f"{RESULTS}/splits/splits_{wildcards.fold}.csv",
        "inner_split": f"{RESULTS}/splits/inner_{wildcards.fold}.csv",
        # a per-fold mSTAR encoder's stores come as one folder per fold (rule extract_fold_features)
        "features": (features_dir(wildcards) if fold_encoder(wildcards.encoder, wildcards.fold) != wildcards.encoder
                     else expand(f"{features_dir(wildcards)}/{{slide}}.zarr", slide=SLIDE_IDS)),
    }
    from pathmm_pipeline.models import get_model_class

    reads = get_model_class(RUNS[wildcards.model].model).uses if model_reads_only else {"genomics", "report"}
    if EXPRESSION_FILES and "genomics" in reads:
        inputs["genomics"] = rules.genomics.output.store
    if REPORTS and "report" in reads:
        inputs["reports"] = rules.embed_reports.output.store
    return inputs


def training_inputs(wildcards):
    inputs = cohort_inputs(wildcards)
    if RUNS[wildcards.model].pretrained:
        inputs["pretrained"] = PRETRAIN_DIR.format(**wildcards) + "/pretrained.pt"
    return inputs


def pretraining_inputs(wildcards):
    inputs = cohort_inputs(wildcards)
    if EXTERNAL is not None and RUNS[wildcards.model].external:
        inputs["external"] = PRETRAIN["external"]
        inputs["external_genomics"] = rules.external_genomics.output.store
    return inputs


def run_settings(wildcards, base, pretraining=False):
    """The settings JSON of one run: the shared settings, the run's own (a paper's schedule, ``settings`` or
    ``pretrain_settings`` of its variant) over them, and the run's model options."""
    run = RUNS[wildcards.model]
    merged = {**base, **(run.pretrain_settings if pretraining else run.settings)}
    if run.options:
        merged["model_options"] = run.options
    return json.dumps(merged, sort_keys=True)


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
        mem_mb=memory(4000),
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
        model="|".join(dict.fromkeys(PRETRAINED_RUNS + ([MSTAR["stage1_run"]] if PER_FOLD_MSTAR and MSTAR_USED else [])))
        or "^$",
    params:
        settings=lambda wc: run_settings(wc, {"max_tiles": TRAIN["max_tiles"], "progress": False,
                                              **PRETRAIN["settings"]}, pretraining=True),
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
        mem_mb=memory(PRETRAIN["mem_mb"], scale_with=("features",), per_input_mb=2),
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
        settings=lambda wc: run_settings(wc, {**TRAIN["settings"], **PROTOCOL, "max_tiles": TRAIN["max_tiles"],
                                              "n_boot": TRAIN["n_boot"]}),
        model=lambda wc: RUNS[wc.model].model,
        label=lambda wc: run_label(wc.encoder, wc.model),
        task=lambda wc: TASK_SLUGS[wc.task],
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
        mem_mb=memory(TRAIN["mem_mb"], scale_with=("features",), per_input_mb=2),
        runtime=120,
    shell:
        "pathmm train --model {params.model} --label {params.label} --task {params.task} --fold {wildcards.fold}"
        " --manifest {input.manifest:q} --splits {params.splits:q} --features {params.features:q} {params.optional}"
        " --out {params.out:q} --settings {params.settings:q} > {log:q} 2>&1"


#: the run whose pretraining is mSTAR's stage 1 (None when no run reads the mSTAR encoder)
STAGE1_RUN = RUNS.get(MSTAR["stage1_run"])


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
        settings=json.dumps({"max_tiles": TRAIN["max_tiles"], "progress": False, **PRETRAIN["settings"],
                             **({"model_options": STAGE1_RUN.options}
                                if STAGE1_RUN is not None and STAGE1_RUN.options else {})}, sort_keys=True),
        model=STAGE1_RUN.model if STAGE1_RUN is not None else "mstar",
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
        mem_mb=memory(PRETRAIN["mem_mb"], scale_with=("features",), per_input_mb=2),
        runtime=240,
    shell:
        "pathmm pretrain --model {params.model} --fold -1 --manifest {input.manifest:q} --splits {params.splits:q}"
        " --features {params.features:q} {params.optional} --out {params.out:q} --settings {params.settings:q}"
        " > {log:q} 2>&1"


def mstar_stage1_checkpoint(wildcards):
    """Stage 2's teacher: the stage-1 run's pretraining on the fold's training patients (per_fold), or the
    one stage 1 on every patient (transductive)."""
    if PER_FOLD_MSTAR:
        return PRETRAIN_DIR.format(encoder=MSTAR["base_encoder"], model=MSTAR["stage1_run"],
                                   fold=wildcards.fold) + "/pretrained.pt"
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
        weights=(f"{RESULTS}/mstar/stage2/{{encoder}}/fold_{{fold}}.pt" if PER_FOLD_MSTAR
                 else f"{RESULTS}/mstar/stage2/{{encoder}}.pt"),
    wildcard_constraints:
        encoder=MSTAR["encoder"],
        fold="|".join(map(str, FOLDS)),
    params:
        settings=json.dumps({**MSTAR["settings"], "backend": config["slide"]["backend"]}, sort_keys=True),
        base=MSTAR["base_encoder"],
        base_weights=encoder_weights(MSTAR["base_encoder"]),
        tiles=f"{RESULTS}/tiles",
        fold=lambda wc: f"--splits {RESULTS}/splits --fold {wc.fold}" if PER_FOLD_MSTAR else "",
    log:
        f"{RESULTS}/logs/mstar_stage2_{{encoder}}" + ("_fold{fold}.log" if PER_FOLD_MSTAR else ".log"),
    benchmark:
        f"{RESULTS}/benchmarks/mstar_stage2_{{encoder}}" + ("_fold{fold}.tsv" if PER_FOLD_MSTAR else ".tsv"),
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
        weights=lambda wc: encoder_weights_files(fold_encoder(MSTAR["encoder"], wc.fold)),
    output:
        directory(f"{RESULTS}/features/{MSTAR['encoder']}_fold{{fold}}"),
    wildcard_constraints:
        fold="|".join(map(str, FOLDS)),
    params:
        settings=lambda wc: extraction_settings_json(fold_encoder(MSTAR["encoder"], wc.fold)),
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
    shell:
        "pathmm extract-cohort --manifest {input.manifest:q} --tiles {params.tiles:q} --out {output:q}"
        " {params.backend} --settings {params.settings:q} > {log:q} 2>&1"


DOWNSTREAM = TRAIN["downstream"]
DOWNSTREAM_KINDS = ("report_generation", "data_efficiency", "linear_probe", "zero_shot")
DOWNSTREAM_RUNS = {kind: [m for m in DOWNSTREAM[kind]["models"] if m in RUNS] for kind in DOWNSTREAM_KINDS}
if not REPORTS:
    DOWNSTREAM_RUNS["report_generation"] = []


def downstream_inputs(wildcards):
    inputs = cohort_inputs(wildcards, model_reads_only=wildcards.kind != "report_generation")
    inputs["checkpoint"] = f"{FOLD_DIR}/checkpoint.pt".format(**wildcards)
    if RUNS[wildcards.model].pretrained:
        inputs["pretrained"] = PRETRAIN_DIR.format(encoder=wildcards.encoder, model=wildcards.model,
                                                   fold=wildcards.fold) + "/pretrained.pt"
    if wildcards.kind == "report_generation":
        inputs["reports_table"] = rules.merge_reports.output[0]
    return inputs


def downstream_settings(wildcards):
    base = {**TRAIN["settings"], **PROTOCOL, "max_tiles": TRAIN["max_tiles"]}
    if wildcards.kind == "report_generation":
        base["generation"] = DOWNSTREAM["report_generation"]["settings"]
    elif wildcards.kind == "data_efficiency":
        base.update(fractions=DOWNSTREAM["data_efficiency"]["fractions"],
                    per_cancer_type=DOWNSTREAM["data_efficiency"]["per_cancer_type"])
    return run_settings(wildcards, base)


rule downstream:
    input:
        unpack(downstream_inputs),
    output:
        table=f"{FOLD_DIR}/downstream_{{kind}}.csv",
    wildcard_constraints:
        kind="|".join(DOWNSTREAM_KINDS),
    params:
        settings=downstream_settings,
        model=lambda wc: RUNS[wc.model].model,
        label=lambda wc: run_label(wc.encoder, wc.model),
        task=lambda wc: TASK_SLUGS[wc.task],
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
        mem_mb=memory(TRAIN["mem_mb"], scale_with=("features",), per_input_mb=2),
        runtime=120,
    shell:
        "pathmm downstream --kind {wildcards.kind} --model {params.model} --label {params.label}"
        " --task {params.task} --fold {wildcards.fold} --manifest {input.manifest:q} --splits {params.splits:q}"
        " --features {params.features:q} {params.optional} --out {output.table:q} --settings {params.settings:q}"
        " > {log:q} 2>&1"


def downstream_tables(wildcards=None):
    return [f"{FOLD_DIR}/downstream_{kind}.csv".format(encoder=e, model=m, task=t, fold=f)
            for kind, models in DOWNSTREAM_RUNS.items() for e, m in TRAINED if m in models
            for t in TASK_SLUGS for f in FOLDS]


rule evaluate:
    input:
        folds=[f"{FOLD_DIR}/metrics.csv".format(encoder=e, model=m, task=t, fold=f)
               for e, m in TRAINED for t in TASK_SLUGS for f in FOLDS],
        downstream=downstream_tables(),
        qc=rules.qc_summary.output if SLIDE_IDS else [],
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
        mem_mb=memory(4000),
        runtime=30,
    shell:
        "pathmm report {params.folds} --results {RESULTS:q} --out {output.html:q} > {log:q} 2>&1"
