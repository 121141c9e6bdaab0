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
            f"{CELL_DIR}/history.csv",
            caption="../report/history.rst",
            category="{dataset}",
            subcategory="{mechanism}",
            labels={"cell": "β {beta}, seed {seed}", "result": "learning curve"},
        ),
        best=f"{CELL_DIR}/best.pt",
        last=f"{CELL_DIR}/last.pt",
        metrics=f"{CELL_DIR}/metrics.json",
    log:
        "logs/train/{dataset}/{mechanism}/beta{beta}/seed{seed}.log",
    conda:
        "../../envs/train.yaml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=GPU_REQUEST,
        gpu_mem_mb=gpu_mem_mb,
        device=DEVICE,
        eval_batch=EVAL_BATCH,
        channels_last=CHANNELS_LAST,
        dp_max_physical_batch=DP_PHYSICAL_BATCH,
        noise_key=NOISE_KEY,  # where the secret is read (its id is the param)
    params:
        cell=train_settings,
        key=cell_key,
        code=train_code,
    script:
        "../scripts/train.py"


rule reference:
    input:
        unpack(train_inputs),
    output:
        best=f"{REFERENCE_DIR}/best.pt",
        members=f"{REFERENCE_DIR}/members.npy",
        history=f"{REFERENCE_DIR}/history.csv",
        last=f"{REFERENCE_DIR}/last.pt",
        metrics=f"{REFERENCE_DIR}/metrics.json",
    log:
        "logs/reference/{dataset}/{mechanism}/beta{beta}/ref{ref}.log",
    conda:
        "../../envs/train.yaml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=GPU_REQUEST,
        gpu_mem_mb=gpu_mem_mb,
        device=DEVICE,
        eval_batch=EVAL_BATCH,
        channels_last=CHANNELS_LAST,
        dp_max_physical_batch=DP_PHYSICAL_BATCH,
        noise_key=NOISE_KEY,  # where the secret is read (its id is the param)
    params:
        cell=reference_settings,
        index=lambda wildcards: int(wildcards.ref),
        key=cell_key,
        code=reference_code,
    script:
        "../scripts/reference.py"
