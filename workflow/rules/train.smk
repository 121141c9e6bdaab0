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
    script:
        "../scripts/weights.py"


rule train:
    input:
        unpack(train_inputs),
    output:
        history="results/cells/{dataset}/{mechanism}/beta{beta}/seed{seed}/history.csv",
        best="results/cells/{dataset}/{mechanism}/beta{beta}/seed{seed}/best.pt",
        last="results/cells/{dataset}/{mechanism}/beta{beta}/seed{seed}/last.pt",
        metrics="results/cells/{dataset}/{mechanism}/beta{beta}/seed{seed}/metrics.json",
    log:
        "logs/train/{dataset}/{mechanism}/beta{beta}/seed{seed}.log",
    conda:
        "../../envs/train.yaml"
    threads: config["train_threads"]
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=lambda wildcards: 0 if config["device"] == "cpu" else 1,
    params:
        cell=train_settings,
        code=TRAIN_CODE,
    script:
        "../scripts/train.py"
