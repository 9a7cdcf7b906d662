rule genomics:
    input:
        expression=EXPRESSION_FILES,
    output:
        store=directory(f"{RESULTS}/genomics/expression.zarr"),
    params:
        settings=settings_json("genomics"),
        expression=list_file("genomics-expression", EXPRESSION_FILES),  # through files: one per patient is allowed
        patients=list_file("genomics-patients", PATIENTS_WITH_EXPRESSION),
    log:
        f"{RESULTS}/logs/genomics.log",
    benchmark:
        f"{RESULTS}/benchmarks/genomics.tsv"
    conda:
        "../../envs/preprocess.yaml"
    resources:
        mem_mb=memory(4000, scale_with=("expression",), per_input_mb=6),
        runtime=30,
    shell:
        "pathmm genomics --expression {params.expression:q} --patients {params.patients:q} --out {output.store:q}"
        " --settings {params.settings:q}"
        " > {log:q} 2>&1"
