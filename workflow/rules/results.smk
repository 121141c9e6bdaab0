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
