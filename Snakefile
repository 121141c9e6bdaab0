# dp-medbench: reproduce, audit and extend "Benchmarking Differentially Private Residual Networks for
# Medical Imagery" (Singh, Sikka, Kotti, Trask, 2020). See README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"


# The landing page of the report: the description, then the main results once a run has written them.
report: REPORT_LANDING


include: "workflow/rules/data.smk"
include: "workflow/rules/ldp.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/results.smk"


# The end of a run: the main results and where everything is, or what failed and what to do.
onsuccess:
    print(on_success(".", [os.path.relpath(c) for c in workflow.overwrite_configfiles]))


onerror:
    print(on_error(".", STARTED))


rule all:
    default_target: True
    input:
        prepared_outputs(),
        ldp_outputs(),
        cell_outputs(),
