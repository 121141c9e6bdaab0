# Training: one job per cell (dataset, mechanism, beta, seed) -> results/cells/<...>/.


# Downloads need the internet, which compute nodes of a cluster often lack: run them where Snakemake runs.
localrules:
    weights,


rule weights:
    output:
        WEIGHTS_DEFAULT,
    log:
        "logs/weights.log",
    conda:
        "../../envs/data.yaml"
    params:
        url=WEIGHTS_URL,
        code=WEIGHTS_CODE,
    script:
        "../scripts/weights.py"


rule train:
    input:
        unpack(train_inputs),
    output:
        history=report(
            "results/cells/{dataset}/{mechanism}/beta{beta}/seed{seed}/history.csv",
            caption="../report/history.rst",
            category="{dataset}",
            subcategory="{mechanism}",
            labels={"cell": "β {beta}, seed {seed}", "result": "learning curve"},
        ),
        best="results/cells/{dataset}/{mechanism}/beta{beta}/seed{seed}/best.pt",
        last="results/cells/{dataset}/{mechanism}/beta{beta}/seed{seed}/last.pt",
        metrics="results/cells/{dataset}/{mechanism}/beta{beta}/seed{seed}/metrics.json",
    log:
        "logs/train/{dataset}/{mechanism}/beta{beta}/seed{seed}.log",
    conda:
        "../../envs/train.yaml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=GPU_REQUEST,
    params:
        cell=train_settings,
        code=TRAIN_CODE,
    script:
        "../scripts/train.py"


rule reference:
    input:
        unpack(train_inputs),
    output:
        best="results/references/{dataset}/{mechanism}/beta{beta}/ref{ref}/best.pt",
        members="results/references/{dataset}/{mechanism}/beta{beta}/ref{ref}/members.npy",
        history="results/references/{dataset}/{mechanism}/beta{beta}/ref{ref}/history.csv",
        last="results/references/{dataset}/{mechanism}/beta{beta}/ref{ref}/last.pt",
        metrics="results/references/{dataset}/{mechanism}/beta{beta}/ref{ref}/metrics.json",
    log:
        "logs/reference/{dataset}/{mechanism}/beta{beta}/ref{ref}.log",
    conda:
        "../../envs/train.yaml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=GPU_REQUEST,
    params:
        cell=reference_settings,
        index=lambda wildcards: int(wildcards.ref),
        code=REFERENCE_CODE,
    script:
        "../scripts/reference.py"
