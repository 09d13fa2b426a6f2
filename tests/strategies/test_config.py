"""AuditConfig: bad configuration fails at construction, naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from semsim_audit.attacks import ATTACKS, AttackConfig
from semsim_audit.config import AuditConfig


def test_defaults_audit_every_round_one_client() -> None:
    config = AuditConfig()
    assert config.attack == "inverting-gradients"
    assert [config.audits_round(r) for r in (1, 2, 3)] == [True, True, True]


def test_every_n_audits_round_one_then_every_nth() -> None:
    config = AuditConfig(every=3)
    assert [r for r in range(1, 10) if config.audits_round(r)] == [1, 4, 7]


def test_every_as_list_names_the_rounds() -> None:
    config = AuditConfig(every=[5, 2, 2])
    assert config.every == [2, 5]
    assert [r for r in range(1, 7) if config.audits_round(r)] == [2, 5]


@pytest.mark.parametrize(("fields", "named"), [
    ({"attack": "no-such-attack"}, "attack"),
    ({"attack_config": {"iterations": 0}}, "iterations"),
    ({"attack_config": {"no_such_knob": 1}}, "no_such_knob"),
    ({"every": 0}, "every"),
    ({"every": []}, "every"),
    ({"clients": 0}, "clients"),
    ({"clients": []}, "clients"),
    ({"threat_model": "omniscient"}, "threat_model"),
    ({"executor": "cluster"}, "executor"),
    ({"save_images": True}, "out_dir"),
    ({"device": "tpu"}, "device"),
    ({"timeout": 0}, "timeout"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_field_fails_at_start_naming_it(fields: dict, named: str) -> None:
    with pytest.raises(ValidationError) as error:
        AuditConfig(**fields)
    assert named in str(error.value)


def test_validation_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="attack"):
        AuditConfig(attack="nope")


def test_attack_settings_carry_seed_and_device() -> None:
    settings = AuditConfig(attack_config={"iterations": 7}, seed=3, device="cpu").attack_settings()
    assert (settings.iterations, settings.seed, settings.device) == (7, 3, "cpu")


def test_config_round_trips_through_json(tmp_path) -> None:
    config = AuditConfig(attack="idlg", every=[1, 3], clients=[7, 9], out_dir=tmp_path, save_images=True,
                         attack_config={"iterations": 9, "tv_weight": 0.0})
    assert AuditConfig.model_validate_json(config.model_dump_json()) == config


def test_attack_config_is_typed_and_dumps_only_what_the_user_set() -> None:
    config = AuditConfig(attack_config={"iterations": 9})
    assert isinstance(config.attack_config, AttackConfig)
    assert config.model_dump()["attack_config"] == {"iterations": 9}
    # What the user did not set comes from the recipe, not from a generic default.
    resolved = config.attack_settings().resolve(ATTACKS[config.attack].settings)
    assert resolved.objective == "cosine" and resolved.iterations == 9


def test_from_run_config_reads_kebab_keys_and_ignores_the_apps_own() -> None:
    config = AuditConfig.from_run_config({
        "audit-attack": "idlg", "audit-iterations": 7, "audit-every": "1,3", "audit-clients": 2,
        "audit-training": "declared", "audit-scoring-timeout": 30.0, "local-epochs": 2, "batch-size": 32,
        "lr": 0.05, "num-server-rounds": 5, "fraction-evaluate": 0.5, "audit-export-originals": True,
    })
    assert (config.attack, config.attack_config.iterations) == ("idlg", 7)
    assert (config.every, config.clients) == ([1, 3], 2)
    assert (config.training, config.scoring_timeout) == ("declared", 30.0)
    assert (config.local_epochs, config.local_batch_size, config.lr) == (2, 32, 0.05)


def test_from_run_config_overrides_win() -> None:
    assert AuditConfig.from_run_config({"audit-clients": 2}, clients=5).clients == 5


@pytest.mark.parametrize(("run_config", "message"), [
    ({"audit-every": 0}, "run config 'audit-every': every must be >= 1"),
    ({"audit-iterations": 0}, "run config 'audit-iterations'"),
    ({"audit-clients": "a,b"}, "run config 'audit-clients': expected an int or a comma-separated list"),
    ({"audit-training": "guess"}, "run config 'audit-training'"),
    ({"local-epochs": 0}, "run config 'local-epochs'"),
    ({"audit-evry": 2}, "run config 'audit-evry': unknown audit key"),
    ({"audit-save-images": True}, "'audit-save-images'=True needs 'audit-out-dir'"),
])
def test_from_run_config_errors_name_the_key(run_config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        AuditConfig.from_run_config(run_config)
    assert "\n" not in str(error.value)  # one line
