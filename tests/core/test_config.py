from __future__ import annotations

import copy
import re

import pytest
import yaml
from dpmedbench.core.config import enabled_datasets, load_schema, validate_config
from dpmedbench.core.errors import ConfigError

from ..conftest import REPO


def test_empty_config_gets_every_default():
    cfg = validate_config({})
    assert cfg["betas"] == [1, 2, 4] and cfg["seeds"] == [0] and cfg["mechanisms"] == ["none", "ldp", "dpsgd"]
    assert cfg["image_size"] == 256 and cfg["seed"] == 42
    assert cfg["datasets"]["chest_xray"]["val_fraction"] == 0.1
    assert cfg["datasets"]["chest_xray"]["official_val"] == "train"
    assert cfg["datasets"]["aptos"]["test_fraction"] == 0.2
    assert cfg["datasets"]["aptos"]["demo"]["images_per_grade"] == 12
    assert enabled_datasets(cfg) == ["chest_xray", "aptos"]


def test_dataset_order_does_not_depend_on_the_file():
    reordered = validate_config({"datasets": {"aptos": {}, "chest_xray": {}}})
    assert list(reordered["datasets"]) == ["aptos", "chest_xray"]
    assert enabled_datasets(reordered) == ["chest_xray", "aptos"]


def test_defaults_are_not_shared_between_configs():
    a, b = validate_config({}), validate_config({})
    a["datasets"]["chest_xray"]["demo"]["image_sides"].append(1)
    assert b["datasets"]["chest_xray"]["demo"]["image_sides"] == [64, 160]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"betaz": [1]}, "<top level>: Additional properties are not allowed ('betaz' was unexpected)"),
        ({"datasets": {"chest_xray": {"val_fracton": 0.1}}}, "datasets.chest_xray: Additional properties"),
        ({"datasets": {"aptos": {"source": "mendeley"}}}, "datasets.aptos.source: 'mendeley' is not one of"),
        ({"datasets": {"aptos": {"val_fraction": 0.9}}}, "datasets.aptos.val_fraction: 0.9 is greater than"),
        ({"betas": [1, -2]}, "betas[1]: -2 is less than or equal to the minimum of 0"),
        ({"image_size": "256"}, "image_size: '256' is not of type 'integer'"),
        ({"mechanisms": ["none", "dp"]}, "mechanisms[1]: 'dp' is not one of"),
        ({"datasets": {"chest_xray": {"sha256": "abc"}}}, "datasets.chest_xray.sha256: 'abc' does not match"),
        ({"datasets": {"aptos": {"ldp": {"neighbourhood": 0}}}}, "datasets.aptos.ldp.neighbourhood: 0 is less than"),
        ({"datasets": {"aptos": {"ldp": {"block": 0}}}}, "datasets.aptos.ldp.block: 0 is less than"),
        ({"datasets": {"aptos": {"ldp": {"mechanism": "dp-pix"}}}}, "datasets.aptos.ldp.mechanism: 'dp-pix' is not"),
        ({"datasets": {"aptos": {"ldp": {"mechanism": []}}}}, "datasets.aptos.ldp.mechanism: [] is not"),
        (
            {"datasets": {"aptos": {"ldp": {"mechanism": ["dp_pix", "dp_pix"]}}}},
            "datasets.aptos.ldp.mechanism: ['dp_pix', 'dp_pix'] is not",
        ),
        (
            {"image_size": 250, "model": {"crop": 224}, "datasets": {"chest_xray": {"ldp": {"mechanism": ["dp_pix"]}}}},
            "datasets.chest_xray.ldp.block: 16 does not divide image_size 250; dp_pix needs whole b x b cells "
            "(divisors: 1, 2, 5, 10, 25, 50, 125, 250)",
        ),
    ],
)
def test_bad_values_are_rejected_with_their_key_path(config, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert expected in str(err.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        validate_config({"betaz": 1, "image_size": 3})
    assert "betaz" in str(err.value) and "image_size: 3" in str(err.value)


def test_local_source_needs_an_archive():
    with pytest.raises(ConfigError, match=r"datasets.aptos.archive: source is 'local' but no archive"):
        validate_config({"datasets": {"aptos": {"source": "local"}}})


def test_at_least_one_dataset_is_enabled():
    with pytest.raises(ConfigError, match="every dataset is disabled"):
        validate_config({"datasets": {"aptos": {"enabled": False}, "chest_xray": {"enabled": False}}})


@pytest.mark.parametrize("name", ["config.yaml", "config/demo.yaml", "config/medmnist.yaml"])
def test_shipped_configs_are_valid(name):
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    override = yaml.safe_load((REPO / name).read_text())
    merged = copy.deepcopy(base)
    _deep_update(merged, override)  # as Snakemake merges --configfile over config.yaml
    validate_config(merged)


def _deep_update(a: dict, b: dict) -> None:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _deep_update(a[k], v)
        else:
            a[k] = v


def _walk(schema: dict, path: str = ""):
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}{name}", sub
        yield from _walk(sub, f"{path}{name}.")


def test_every_schema_key_has_a_description_and_a_default():
    schema = load_schema()
    assert schema["additionalProperties"] is False
    keys = list(_walk(schema))
    assert len(keys) > 25
    for key, sub in keys:
        assert sub.get("description"), f"{key} has no description"
        assert "default" in sub, f"{key} has no default"
        if sub.get("type") == "object":
            assert sub.get("additionalProperties") is False, f"{key} accepts unknown keys"


def test_patient_unit_needs_patient_ids_and_per_example_gradients():
    from dpmedbench.core.config import dpsgd_settings

    ok = validate_config({"datasets": {"chest_xray": {"dpsgd": {"privacy_unit": "patient", "grad_sample_mode": "ew"}}}})
    assert dpsgd_settings(ok, "chest_xray")["privacy_unit"] == "patient"
    assert dpsgd_settings(ok, "aptos")["privacy_unit"] == "image"
    with pytest.raises(ConfigError, match=r"datasets.aptos.dpsgd.privacy_unit.*APTOS publishes one id per image"):
        validate_config({"dpsgd": {"privacy_unit": "patient", "grad_sample_mode": "ew"}})
    with pytest.raises(ConfigError, match="'bk' clips per image"):
        validate_config({"datasets": {"chest_xray": {"dpsgd": {"privacy_unit": "patient"}}}})
    with pytest.raises(ConfigError, match="MedMNIST none"):
        validate_config(
            {
                "datasets": {
                    "chest_xray": {"source": "medmnist", "dpsgd": {"privacy_unit": "patient"}},
                    "aptos": {"enabled": False},
                },
                "dpsgd": {"grad_sample_mode": "ew"},
            }
        )
    # without DP-SGD cells the unit is irrelevant and nothing is refused
    validate_config({"mechanisms": ["none"], "dpsgd": {"privacy_unit": "patient"}})


def test_archive_paths_are_expanded_checked_and_only_taken_with_source_local(tmp_path, monkeypatch):
    from dpmedbench.core.config import check_local_archives

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DPMB_DATA", str(tmp_path / "data"))
    cfg = validate_config(
        {
            "datasets": {
                "chest_xray": {"source": "local", "archive": "~/chest.zip", "sha256": "AB" * 32},
                "aptos": {"source": "local", "archive": "$DPMB_DATA/aptos"},
            }
        }
    )
    assert cfg["datasets"]["chest_xray"]["archive"] == f"{tmp_path}/chest.zip"
    assert cfg["datasets"]["aptos"]["archive"] == f"{tmp_path}/data/aptos"
    assert cfg["datasets"]["chest_xray"]["sha256"] == "ab" * 32
    with pytest.raises(ConfigError, match=rf"datasets.chest_xray.archive: {tmp_path}/chest.zip does not exist"):
        check_local_archives(cfg)
    (tmp_path / "chest.zip").write_bytes(b"")
    (tmp_path / "data" / "aptos").mkdir(parents=True)
    check_local_archives(cfg)
    with pytest.raises(ConfigError, match="source is 'kaggle', which ignores it: set source: local"):
        validate_config({"datasets": {"aptos": {"archive": str(tmp_path / "chest.zip")}}})


def test_a_folder_archive_with_a_link_out_of_it_is_refused_before_any_job(tmp_path):
    """The Snakefile checks this at start-up: a ConfigError it prints in one line, not a traceback from a job's
    input function."""
    from dpmedbench.core.config import check_local_archives

    folder = tmp_path / "aptos"
    (folder / "train_images").mkdir(parents=True)
    (tmp_path / "elsewhere.png").write_bytes(b"x")
    (folder / "train_images" / "a.png").symlink_to(tmp_path / "elsewhere.png")
    cfg = validate_config({"datasets": {"aptos": {"source": "local", "archive": str(folder)}}})
    with pytest.raises(ConfigError, match=r"datasets.aptos.archive: .*a.png: a symbolic link that points outside"):
        check_local_archives(cfg)


def test_one_canary_is_refused_with_its_key():
    with pytest.raises(ConfigError, match=r"datasets.aptos.evaluation.canaries: 1 canary cannot be audited"):
        validate_config({"datasets": {"aptos": {"evaluation": {"canaries": 1}}}})
    with pytest.raises(ConfigError, match=r"  evaluation.canaries: 1 canary"):
        validate_config({"evaluation": {"canaries": 1}})
    assert validate_config({"evaluation": {"canaries": 2}})["evaluation"]["canaries"] == 2


def test_a_block_that_dp_pix_does_not_use_is_not_checked():
    """Only a dataset with dp_pix needs b to divide the image size; laplace_pixel copies ignore the block."""
    cfg = validate_config({"image_size": 250, "model": {"crop": 224}, "datasets": {"aptos": {"ldp": {"block": 16}}}})
    assert cfg["datasets"]["aptos"]["ldp"]["mechanism"] == "laplace_pixel"


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("datasets: {chest_xray: {train: {lr: .nan}}}", "datasets.chest_xray.train.lr: nan"),
        ("dpsgd: {noise_multiplier: .inf}", "dpsgd.noise_multiplier: inf"),
        ("dpsgd: {delta: .nan}", "dpsgd.delta: nan"),
        ("dpsgd: {max_grad_norm: -.inf}", "dpsgd.max_grad_norm: -inf"),
        ("betas: [1, .nan]", "betas[1]: nan"),
        ("datasets: {aptos: {val_fraction: .nan}}", "datasets.aptos.val_fraction: nan"),
    ],
)
def test_non_finite_numbers_are_refused_with_their_key(yaml_text, key):
    """NaN passes every minimum of a JSON schema and infinity every open bound: the schema alone let `lr: .nan`
    train a cell into a 'result' of 50 % accuracy. Every number must be finite."""
    with pytest.raises(ConfigError, match=re.escape(f"{key} is not a finite number")):
        validate_config(yaml.safe_load(yaml_text))


@pytest.mark.parametrize("path", ["data/</script><img src=x onerror=alert(1)>.zip", "chest\nxray.zip", "a\x00b"])
def test_a_configured_path_with_markup_or_control_characters_is_refused(path):
    """Configured paths reach the HTML report (its embedded configuration): markup and control characters are
    refused with the key named, before any job."""
    config = {"datasets": {"chest_xray": {"source": "local", "archive": path}}}
    with pytest.raises(ConfigError, match=r"datasets.chest_xray.archive: .* holds '<', '>' or a control character"):
        validate_config(config)
