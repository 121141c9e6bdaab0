# Results: per-cell evaluation (metrics with bootstrap intervals, membership-inference audit) and the summary.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        report(
            f"{CELL_DIR}/evaluation.json",
            caption="../report/evaluation.rst",
            category="{dataset}",
            subcategory="{mechanism}",
            labels={"cell": "β {beta}, seed {seed}", "result": "evaluation and audit"},
        ),
    log:
        "logs/evaluate/{dataset}/{mechanism}/beta{beta}/seed{seed}.log",
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=GPU_REQUEST,
        gpu_mem_mb=gpu_mem_mb_evaluate,
        device=DEVICE,
        eval_batch=EVAL_BATCH,
    params:
        bootstrap=config["evaluation"]["bootstrap"],
        references=config["evaluation"]["reference_models"],
        seed=config["seed"],
        code=EVALUATE_CODE,
    script:
        "../scripts/evaluate.py"


rule summary:
    input:
        metrics=[f"{cell_dir(*c)}/metrics.json" for c in cells()],
        evaluations=[f"{cell_dir(*c)}/evaluation.json" for c in cells()],
        attacks=ldp_attack_outputs(),
    output:
        report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="Overview",
            subcategory="Tables",
        ),
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
        main=[
            report(
                "results/tables/main.csv",
                caption="../report/table_main.rst",
                category="Overview",
                subcategory="Tables",
            ),
            "results/tables/main.md",
            "results/tables/main.tex",
            report(
                "results/tables/main.html",
                caption="../report/table_main.rst",
                category="Overview",
                subcategory="Tables",
            ),
        ],
        paper=[
            report(
                "results/tables/paper_comparison.csv",
                caption="../report/table_paper.rst",
                category="Overview",
                subcategory="Tables",
            ),
            "results/tables/paper_comparison.md",
            "results/tables/paper_comparison.tex",
            report(
                "results/tables/paper_comparison.html",
                caption="../report/table_paper.rst",
                category="Overview",
                subcategory="Tables",
            ),
        ],
    log:
        "logs/tables.log",
    conda:
        "../../envs/report.yaml"
    params:
        code=TABLES_CODE,
    script:
        "../scripts/tables.py"


rule figures:
    input:
        summary="results/summary.csv",
        histories=[f"{cell_dir(*c)}/history.csv" for c in cells()],
    output:
        figure3_png=result_figure("figure3_learning_curves", "figure3"),
        figure3_pdf="results/figures/figure3_learning_curves.pdf",
        figure4_png=result_figure("figure4_accuracy", "figure4"),
        figure4_pdf="results/figures/figure4_accuracy.pdf",
        privacy_utility_png=result_figure("privacy_utility", "privacy_utility"),
        privacy_utility_pdf="results/figures/privacy_utility.pdf",
        audit_png=result_figure("audit_auc", "audit_auc"),
        audit_pdf="results/figures/audit_auc.pdf",
        audit_epsilon_png=result_figure("audit_epsilon", "audit_epsilon"),
        audit_epsilon_pdf="results/figures/audit_epsilon.pdf",
        ldp_reidentification_png=result_figure(
            "ldp_reidentification", "ldp_reidentification"
        ),
        ldp_reidentification_pdf="results/figures/ldp_reidentification.pdf",
    log:
        "logs/figures.log",
    conda:
        "../../envs/report.yaml"
    params:
        cells=cells(),
        dpi=config["plots"]["dpi"],
        code=FIGURES_CODE,
    script:
        "../scripts/figures.py"


rule configuration:
    output:
        json="results/configuration.json",
        html=report(
            "results/configuration.html",
            caption="../report/configuration.rst",
            category="Overview",
            subcategory="Tables",
        ),
    log:
        "logs/configuration.log",
    conda:
        "../../envs/report.yaml"
    params:
        config=result_configuration(),
        code=CONFIGURATION_CODE,
    script:
        "../scripts/configuration.py"


rule data_table:
    input:
        expand("data/prepared/{dataset}/info.json", dataset=DATASETS),
    output:
        csv=report(
            "results/tables/data.csv",
            caption="../report/table_data.rst",
            category="Overview",
            subcategory="Tables",
        ),
        md="results/tables/data.md",
        html=report(
            "results/tables/data.html",
            caption="../report/table_data.rst",
            category="Overview",
            subcategory="Tables",
        ),
    log:
        "logs/data_table.log",
    conda:
        "../../envs/report.yaml"
    params:
        datasets=DATASETS,
        code=DATA_TABLE_CODE,
    script:
        "../scripts/datatable.py"


rule report_landing:
    input:
        template=REPORT_TEMPLATE,
        summary="results/summary.csv",
    output:
        REPORT_LANDING_PAGE,
    log:
        "logs/report_landing.log",
    conda:
        "../../envs/report.yaml"
    params:
        code=LANDING_CODE,
    script:
        "../scripts/landing.py"
