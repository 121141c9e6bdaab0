# Local-DP stage: noisy copies of the train and val splits per mechanism and beta, their privacy record, the
# attacks on them, and Figure 2.


rule ldp_copy:
    input:
        train="data/prepared/{dataset}/train.npy",
        val="data/prepared/{dataset}/val.npy",
    output:
        train="data/ldp/{dataset}/{ldp}/beta{beta}/train.npy",
        val="data/ldp/{dataset}/{ldp}/beta{beta}/val.npy",
        privacy="data/ldp/{dataset}/{ldp}/beta{beta}/privacy.json",
    log:
        "logs/ldp/{dataset}/{ldp}/beta{beta}.log",
    conda:
        "../../envs/data.yaml"
    resources:
        chunk_images=LDP_CHUNK_IMAGES,
        noise_key=NOISE_KEY,  # where the secret is read (its id is the param)
    params:
        beta=checked_beta,
        settings=ldp_settings,
        seed=config["seed"],
        noise_source=config["ldp"]["noise_source"],
        key=copy_key,
        quality_images=config["ldp"]["quality_images"],
        code=LDP_CODE,
    script:
        "../scripts/ldp.py"


rule ldp_attack:
    input:
        clean="data/prepared/{dataset}/train.npy",
        noisy="data/ldp/{dataset}/{ldp}/beta{beta}/train.npy",
        privacy="data/ldp/{dataset}/{ldp}/beta{beta}/privacy.json",
    output:
        report(
            "results/ldp/{dataset}/{ldp}/beta{beta}/attack.json",
            caption="../report/ldp_attack.rst",
            category="{dataset}",
            subcategory="Local-DP copies",
        ),
    log:
        "logs/ldp_attack/{dataset}/{ldp}/beta{beta}.log",
    conda:
        "../../envs/data.yaml"
    params:
        beta=checked_beta,
        seed=config["seed"],
        queries=config["ldp"]["attack_queries"],
        quality_images=config["ldp"]["quality_images"],
        code=LDP_ATTACK_CODE,
    script:
        "../scripts/ldp_attack.py"


rule figure2:
    input:
        unpack(figure2_inputs),
        clean="data/prepared/{dataset}/train.npy",
        info="data/prepared/{dataset}/info.json",
    output:
        png=report(
            "results/figures/figure2_{dataset}.png",
            caption="../report/figure2.rst",
            category="{dataset}",
            subcategory="Local-DP copies",
        ),
        pdf="results/figures/figure2_{dataset}.pdf",
    log:
        "logs/figure2/{dataset}.log",
    conda:
        "../../envs/report.yaml"
    params:
        index=config["ldp"]["figure_index"],
        show_clean=config["ldp"]["figure_clean"],
        code=FIGURE_CODE,
    script:
        "../scripts/figure2.py"
