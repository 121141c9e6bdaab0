# Results: per-cell evaluation (metrics with bootstrap intervals, membership-inference audit) and the summary.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        "results/cells/{dataset}/{mechanism}/beta{beta}/seed{seed}/evaluation.json",
    log:
        "logs/evaluate/{dataset}/{mechanism}/beta{beta}/seed{seed}.log",
    conda:
        "../../envs/train.yaml"
    threads: config["train_threads"]
    params:
        device=config["device"],
        bootstrap=config["evaluation"]["bootstrap"],
        seed=config["seed"],
        eval_batch=config["model"]["eval_batch"],
        code=EVALUATE_CODE,
    script:
        "../scripts/evaluate.py"


rule summary:
    input:
        metrics=[f"{cell_dir(*c)}/metrics.json" for c in cells()],
        evaluations=[f"{cell_dir(*c)}/evaluation.json" for c in cells()],
    output:
        "results/summary.csv",
    log:
        "logs/summary.log",
    conda:
        "../../envs/report.yaml"
    params:
        code=SUMMARY_CODE,
    script:
        "../scripts/summary.py"


rule tables:
    input:
        "results/summary.csv",
    output:
        main=multiext("results/tables/main", ".csv", ".md", ".tex"),
        paper=multiext("results/tables/paper_comparison", ".csv", ".md", ".tex"),
    log:
        "logs/tables.log",
    conda:
        "../../envs/report.yaml"
    params:
        code=REPORT_CODE,
    script:
        "../scripts/tables.py"


rule figures:
    input:
        summary="results/summary.csv",
        histories=[f"{cell_dir(*c)}/history.csv" for c in cells()],
    output:
        expand(
            "results/figures/{name}.{ext}",
            name=(
                "figure3_learning_curves",
                "figure4_accuracy",
                "privacy_utility",
                "audit_auc",
            ),
            ext=("png", "pdf"),
        ),
    log:
        "logs/figures.log",
    conda:
        "../../envs/report.yaml"
    params:
        cells=cells(),
        dpi=config["plots"]["dpi"],
        code=REPORT_CODE,
    script:
        "../scripts/figures.py"
