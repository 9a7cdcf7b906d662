rule clean_report:
    input:
        report=lambda wc: REPORTS[wc.patient],
    output:
        f"{RESULTS}/reports/clean/{{patient}}.parquet",
    params:
        settings=json.dumps({k: config["reports"][k] for k in ("deid", "max_chars")}),
    log:
        f"{RESULTS}/logs/clean_report/{{patient}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/clean_report/{{patient}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    resources:
        mem_mb=memory(2000),
        runtime=10,
    shell:
        "pathmm clean-report {input.report:q} --patient {wildcards.patient} --out {output:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"


rule merge_reports:
    input:
        expand(f"{RESULTS}/reports/clean/{{patient}}.parquet", patient=sorted(REPORTS)),
    output:
        f"{RESULTS}/reports/reports.parquet",
    params:  # through a file: a command line cannot hold every patient's table path
        tables=list_file("report-tables", expand(f"{RESULTS}/reports/clean/{{patient}}.parquet",
                                                 patient=sorted(REPORTS))),
    log:
        f"{RESULTS}/logs/merge_reports.log",
    benchmark:
        f"{RESULTS}/benchmarks/merge_reports.tsv"
    conda:
        "../../envs/preprocess.yaml"
    resources:
        mem_mb=memory(2000),
        runtime=10,
    shell:
        "pathmm merge-reports {params.tables:q} --out {output:q} > {log:q} 2>&1"


rule embed_reports:
    input:
        table=f"{RESULTS}/reports/reports.parquet",
    output:
        store=directory(f"{RESULTS}/reports/embeddings.zarr"),
    params:
        settings=json.dumps({k: v for k, v in config["reports"].items() if k not in ("deid", "max_chars")},
                            sort_keys=True),
    log:
        f"{RESULTS}/logs/embed_reports.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed_reports.tsv"
    conda:
        "../../envs/reports.yaml"
    threads: 2
    resources:
        mem_mb=memory(4000),
        runtime=60,
    shell:
        "pathmm embed-reports {input.table:q} --out {output.store:q} --settings {params.settings:q} > {log:q} 2>&1"
