"""Load and validate the workflow configuration against ``workflow/schemas/config.schema.yaml``.

Validation fills in every default, so downstream code never needs ``.get(key, default)``, and reports every
problem at once with the dotted path of the offending key.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError, LayoutError
from .fileio import tree_files
from .names import LDP_MECHANISMS

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "schemas" / "config.schema.yaml"


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Read the schema and inline its local ``#/definitions/...`` references."""
    with open(path) as fh:
        schema = yaml.safe_load(fh)
    definitions = schema.get("definitions", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/definitions/"):
                merged = copy.deepcopy(definitions[ref.removeprefix("#/definitions/")])
                merged.update({k: v for k, v in node.items() if k != "$ref"})
                return inline(merged)
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


def _with_defaults(validator_class: type) -> type:
    """A validator class that fills in ``default`` values of missing properties before descending."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Mapping, instance: Any, schema: Mapping) -> Iterator:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if name not in instance and "default" in subschema:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft7Validator)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "<top level>"


def validate_config(config: dict[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``config`` in place, filling defaults; raise :class:`ConfigError` listing every problem.

    >>> cfg = validate_config({"betas": [1, 2]})
    >>> cfg["image_size"], cfg["datasets"]["aptos"]["test_fraction"]
    (256, 0.2)
    """
    schema = load_schema() if schema is None else schema
    _normalise(config)
    _check_values(config)
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for err in errors:
            if err.validator == "additionalProperties":
                allowed = sorted(err.schema.get("properties", {}))
                lines.append(f"  {_key_path(err)}: {err.message}; allowed keys: {', '.join(allowed)}")
            else:
                lines.append(f"  {_key_path(err)}: {err.message}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))
    _check_semantics(config)
    return config


#: Characters no configured string may hold: markup (a path reaches the HTML report) and control characters.
_UNSAFE = re.compile(r"[<>\x00-\x1f\x7f]")


def _check_values(node: Any, path: str = "") -> None:
    """Refuse, with the key's path, what a JSON schema's bounds let through: a number that is NaN or infinite
    (NaN passes every ``minimum``), and a string with markup or control characters (configured paths reach the
    report's HTML).

    >>> _check_values({"dpsgd": {"max_grad_norm": float("nan")}})
    Traceback (most recent call last):
    ...
    dpmedbench.core.errors.ConfigError: invalid configuration:
      dpsgd.max_grad_norm: nan is not a finite number
    >>> _check_values({"betas": [1, float("inf")]})
    Traceback (most recent call last):
    ...
    dpmedbench.core.errors.ConfigError: invalid configuration:
      betas[1]: inf is not a finite number
    """
    if isinstance(node, dict):
        for key, value in node.items():
            _check_values(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_values(value, f"{path}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"invalid configuration:\n  {path}: {node} is not a finite number")
    elif isinstance(node, str) and _UNSAFE.search(node):
        raise ConfigError(
            f"invalid configuration:\n  {path}: {node!r} holds '<', '>' or a control character, which no setting "
            "may (paths reach the HTML report); rename the file or folder"
        )


def _normalise(config: dict[str, Any]) -> None:
    """Expand ``~`` and environment variables in archive paths (Snakemake refuses ``~`` in paths) and lower-case
    SHA-256 digests, before validation."""
    for ds in (config.get("datasets") or {}).values():
        if not isinstance(ds, dict):
            continue
        if isinstance(ds.get("archive"), str):
            ds["archive"] = os.path.expandvars(os.path.expanduser(ds["archive"]))
        if isinstance(ds.get("sha256"), str):
            ds["sha256"] = ds["sha256"].strip().lower()


def check_local_archives(config: Mapping[str, Any]) -> None:
    """Every enabled dataset with source 'local' names an archive that exists; checked before any job, since
    Snakemake would otherwise skip a fetch whose earlier outputs exist and keep data from another source."""
    for name in enabled_datasets(config):
        ds = config["datasets"][name]
        if ds["source"] == "local" and not Path(ds["archive"]).exists():
            raise ConfigError(
                f"invalid configuration:\n  datasets.{name}.archive: {ds['archive']} does not exist; give the path "
                f"of the downloaded zip (or .npz) or of the folder it was extracted to"
            )
        if ds["source"] == "local" and Path(ds["archive"]).is_dir():
            try:  # a link out of the folder or a FIFO, said before any job (the digest walks the folder too)
                tree_files(ds["archive"])
            except LayoutError as exc:
                raise ConfigError(f"invalid configuration:\n  datasets.{name}.archive: {exc}") from None


def _check_semantics(config: Mapping[str, Any]) -> None:
    """Rules a JSON schema cannot express."""
    datasets = config["datasets"]
    if config["model"]["crop"] > config["image_size"]:
        raise ConfigError(
            f"invalid configuration:\n  model.crop: {config['model']['crop']} is larger than image_size "
            f"{config['image_size']}"
        )
    for name in [None, *datasets]:
        where = "evaluation.canaries" if name is None else f"datasets.{name}.evaluation.canaries"
        value = (
            config["evaluation"]["canaries"] if name is None else datasets[name].get("evaluation", {}).get("canaries")
        )
        if value == 1:
            raise ConfigError(
                f"invalid configuration:\n  {where}: 1 canary cannot be audited (the audit guesses about at least 2); "
                f"use 0 (off), or hundreds to certify anything"
            )
    if not any(d["enabled"] for d in datasets.values()):
        raise ConfigError("invalid configuration:\n  datasets: every dataset is disabled; enable at least one")
    for name, ds in datasets.items():
        if ds["enabled"] and ds["source"] != "local" and ds["archive"]:
            raise ConfigError(
                f"invalid configuration:\n  datasets.{name}.archive is set ({ds['archive']}) but source is "
                f"'{ds['source']}', which ignores it: set source: local to use the archive, or remove archive"
            )
        if ds["enabled"] and "dpsgd" in config["mechanisms"]:
            _check_privacy_unit(name, ds, dpsgd_settings(config, name))
            mode = dpsgd_settings(config, name)["grad_sample_mode"]
            if config["model"]["precision"] == "bf16" and mode != "bk":
                raise ConfigError(
                    f"invalid configuration:\n  model.precision: 'bf16' with datasets.{name}.dpsgd.grad_sample_mode / "
                    f"dpsgd.grad_sample_mode {mode!r}: only 'bk' keeps the per-example norms and clipping in float32 "
                    f"under autocast; use 'bk' or precision 'float32'"
                )
        if ds["enabled"] and "ldp" in config["mechanisms"] and "dp_pix" in ldp_mechanisms(config, name):
            block = ds["ldp"]["block"]
            if config["image_size"] % block:
                raise ConfigError(
                    f"invalid configuration:\n  datasets.{name}.ldp.block: {block} does not divide image_size "
                    f"{config['image_size']}; dp_pix needs whole b x b cells (divisors: "
                    f"{', '.join(str(d) for d in range(1, config['image_size'] + 1) if config['image_size'] % d == 0)})"
                )
        if ds["enabled"] and ds["source"] == "local" and not ds["archive"]:
            raise ConfigError(
                f"invalid configuration:\n  datasets.{name}.archive: source is 'local' but no archive is set; "
                f"give the path of the downloaded zip or of the folder it was extracted to"
            )


def dpsgd_settings(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The DP-SGD settings of ``dataset``'s cells: the global ``dpsgd`` section with the dataset's non-null
    overrides (``datasets.<name>.dpsgd``).

    >>> cfg = validate_config({"datasets": {"chest_xray": {"dpsgd": {"grad_sample_mode": "ew"}}}})
    >>> dpsgd_settings(cfg, "chest_xray")["grad_sample_mode"], dpsgd_settings(cfg, "aptos")["grad_sample_mode"]
    ('ew', 'bk')
    """
    overrides = config["datasets"][dataset].get("dpsgd", {})
    return {**config["dpsgd"], **{k: v for k, v in overrides.items() if v is not None}}


def ldp_mechanisms(config: Mapping[str, Any], dataset: str) -> list[str]:
    """The Local-DP mechanisms of ``dataset`` (``datasets.<name>.ldp.mechanism``, one or a list), in the registry's
    order whatever the order in the file (reordering a list reruns nothing).

    >>> ldp_mechanisms(validate_config({"datasets": {"aptos": {"ldp": {"mechanism": ["dp_pix", "laplace_pixel"]}}}}),
    ...                "aptos")
    ['laplace_pixel', 'dp_pix']
    >>> ldp_mechanisms(validate_config({}), "chest_xray")
    ['laplace_pixel']
    """
    chosen = config["datasets"][dataset]["ldp"]["mechanism"]
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    return [name for name in LDP_MECHANISMS if name in chosen]


def ldp_copy_settings(config: Mapping[str, Any], dataset: str, mechanism: str) -> dict[str, Any]:
    """What decides one Local-DP mechanism's copies of ``dataset`` (and nothing else: DP-Pix's cell side does not
    touch the other mechanisms' copies).

    >>> ldp_copy_settings(validate_config({}), "aptos", "laplace_pixel")
    {'mechanism': 'laplace_pixel', 'clip': False, 'neighbourhood': 16}
    """
    ldp = config["datasets"][dataset]["ldp"]
    settings = {"mechanism": mechanism, "clip": ldp["clip"], "neighbourhood": ldp["neighbourhood"]}
    if mechanism == "dp_pix":
        settings["block"] = ldp["block"]
    return settings


def canaries_of(config: Mapping[str, Any], dataset: str) -> int:
    """The one-run audit's canaries in ``dataset``'s DP-SGD cells: ``datasets.<name>.evaluation.canaries`` if
    set, else ``evaluation.canaries``.

    >>> canaries_of(validate_config({"datasets": {"aptos": {"evaluation": {"canaries": 8}}}}), "aptos")
    8
    """
    override = config["datasets"][dataset].get("evaluation", {}).get("canaries")
    return int(config["evaluation"]["canaries"] if override is None else override)


def _check_privacy_unit(name: str, ds: Mapping[str, Any], dp: Mapping[str, Any]) -> None:
    if dp["privacy_unit"] != "patient":
        return
    where = f"invalid configuration:\n  datasets.{name}.dpsgd.privacy_unit / dpsgd.privacy_unit: 'patient'"
    npz = ds["source"] == "local" and str(ds["archive"] or "").lower().endswith(".npz")
    if name != "chest_xray" or ds["source"] == "medmnist" or npz:
        raise ConfigError(
            f"{where} needs patient ids, and {name} from source '{ds['source']}' has none (APTOS publishes one id "
            f"per image, MedMNIST none); use 'image' (the privacy record then says what a patient gets)"
        )
    if dp["grad_sample_mode"] == "bk":
        raise ConfigError(
            f"{where} clips each patient's summed gradient, which needs per-image gradients: 'bk' clips per image "
            f"(the ghost norm of a sum needs the cross terms between its images). Set grad_sample_mode to 'ew', "
            f"'hooks' or 'vmap' (globally or in datasets.{name}.dpsgd)"
        )


#: The order of datasets in every list the workflow builds (jobs, params, tables), whatever the order of the keys
#: in a config file: otherwise reordering a file would change params and rerun jobs.
DATASET_ORDER = ("chest_xray", "aptos")


def enabled_datasets(config: Mapping[str, Any]) -> list[str]:
    """Names of the datasets that take part in the run, in :data:`DATASET_ORDER`."""
    return [name for name in DATASET_ORDER if config["datasets"][name]["enabled"]]


def canonical(value: Any) -> Any:
    """``value`` with every mapping's keys sorted, recursively.

    Snakemake compares ``params`` by their text, so the same settings written in another key order (as a
    YAML dump or a hand edit can produce) would otherwise count as changed and rerun whole stages.

    >>> canonical({"b": 1, "a": {"d": 2, "c": 3}})
    {'a': {'c': 3, 'd': 2}, 'b': 1}
    """
    if isinstance(value, Mapping):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def uses_noise_key(config: Mapping[str, Any]) -> bool:
    """Whether any job of the grid draws keyed noise (``noise_source: keyed``): a Local-DP copy, or a DP-SGD
    cell (its noise, Poisson masks and canaries).

    >>> uses_noise_key(validate_config({})), uses_noise_key(validate_config({"mechanisms": ["none"]}))
    (True, False)
    >>> uses_noise_key(validate_config({"ldp": {"noise_source": "os"}, "dpsgd": {"noise_source": "seeded"}}))
    False
    """
    mechanisms = config["mechanisms"]
    copies = "ldp" in mechanisms and config["ldp"]["noise_source"] == "keyed"
    cells = "dpsgd" in mechanisms and any(
        dpsgd_settings(config, d)["noise_source"] == "keyed" for d in enabled_datasets(config)
    )
    return copies or cells
