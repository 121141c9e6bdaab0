# Data stage: archive -> clean, split, resized arrays (data/prepared/<dataset>/).


# Downloads need the internet, which compute nodes of a cluster often lack: run them where Snakemake runs.
localrules:
    fetch,


rule fetch:
    input:
        local_archive,
    output:
        "data/raw/{dataset}/source.json",
    log:
        "logs/fetch/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    params:
        settings=fetch_settings,
        archive_sha256=local_archive_digest,
        seed=config["seed"],
        code=FETCH_CODE,
    script:
        "../scripts/fetch.py"


rule prepare:
    input:
        "data/raw/{dataset}/source.json",
    output:
        arrays=expand("data/prepared/{{dataset}}/{split}.npy", split=SPLITS),
        manifests=expand("data/prepared/{{dataset}}/{split}.csv", split=SPLITS),
        info="data/prepared/{dataset}/info.json",
    log:
        "logs/prepare/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    threads: 8
    params:
        image_size=config["image_size"],
        resize_mode=config["resize_mode"],
        seed=config["seed"],
        split=prepare_settings,
        code=PREPARE_CODE,
    script:
        "../scripts/prepare.py"
