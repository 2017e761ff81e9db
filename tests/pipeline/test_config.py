from pathlib import Path

import pytest

from edgepipe.core.errors import ConfigError
from edgepipe.pipeline.config import load_config
from tests.corpus import HOSTILE_CONFIGS

EXAMPLE = Path(__file__).parents[2] / "examples" / "elpv.yaml"


def test_example_config_is_valid_and_paths_resolve_against_its_folder():
    cfg = load_config(EXAMPLE)
    assert cfg.model.backbone == "tf_efficientnet_lite0"
    assert cfg.output_dir == (EXAMPLE.parent / "../build/elpv").resolve()
    assert cfg.dataset.source == "elpv"


def test_relative_dataset_root_is_resolved_against_the_config(write_config, tmp_path):
    cfg = load_config(write_config({"name": "x", "dataset": {"source": "imagefolder", "root": "imgs"}}))
    assert cfg.dataset.root == (tmp_path / "imgs").resolve()


@pytest.mark.parametrize("data, fragment", [
    ({"name": "x", "modle": {}}, "modle: unknown key"),
    ({"name": "x", "model": {"backbone": "resnet9000"}}, "unknown backbone 'resnet9000'; choose one of:"),
    ({"name": "x", "model": {"image_size": "big"}}, "model.image_size"),
    ({"name": "x", "model": {"image_size": 100}}, "multiple of 32"),
    ({"name": "x", "dataset": {"source": "imagefolder"}}, "needs dataset.root"),
    ({"name": "x", "dataset": {"source": "csv"}}, "needs dataset.csv"),
    ({"name": "x", "dataset": {"split": {"val": 0.5, "test": 0.5}}}, "at least 20 %"),
    ({"dataset": {}}, "name: Field required"),
    # wrong types, section by section
    ({"name": 7}, "name: Input should be a valid string"),
    ({"name": "x", "seed": "one"}, "seed: Input should be a valid integer"),
    ({"name": "x", "dataset": ["imagefolder"]}, "dataset: Input should be a valid dictionary"),
    ({"name": "x", "dataset": {"allow_outside_root": "sometimes"}}, "dataset.allow_outside_root: Input should be a valid boolean"),
    ({"name": "x", "finetune": {"augment": {"flips": "yes please"}}}, "finetune.augment.flips: Input should be a valid boolean"),
    ({"name": "x", "calibration": {"size": "many"}}, "calibration.size: Input should be a valid integer"),
    ({"name": "x", "calibration": {"size": 0}}, "calibration.size: Input should be greater than or equal to 1"),
    ({"name": "x", "targets": "onnxruntime"}, "targets: Input should be a valid list"),
    ({"name": "x", "verify": {"runs": 2.5}}, "verify.runs: Input should be a valid integer"),
    ({"name": "x", "gates": {"min_agreement": 1.5}}, "gates.min_agreement: Input should be less than or equal to 1"),
])
def test_bad_config_gives_one_line_naming_the_key(write_config, data, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(write_config(data))
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)
    assert e.value.exit_code == 2


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_config_hash_changes_with_content(write_config):
    a = load_config(write_config({"name": "x"}, "a.yaml"))
    b = load_config(write_config({"name": "x", "seed": 1}, "b.yaml"))
    assert a.sha256() != b.sha256()
    assert a.sha256() == load_config(write_config({"name": "x"}, "c.yaml")).sha256()


@pytest.mark.parametrize("name", sorted(HOSTILE_CONFIGS))
def test_hostile_config_is_refused_at_load_naming_the_key(tmp_path, name):
    text, fragment = HOSTILE_CONFIGS[name]
    path = tmp_path / "build.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_yaml_merge_keys_may_override_what_they_merge(tmp_path):
    path = tmp_path / "build.yaml"
    path.write_text("strict: &strict {min_agreement: 0.5}\nname: x\ngates:\n  <<: *strict\n  min_agreement: 0.9\n")
    with pytest.raises(ConfigError, match="strict: unknown key"):  # merged fine; the anchor's own key is unknown
        load_config(path)


def test_a_binary_config_file_is_one_line(tmp_path):
    path = tmp_path / "build.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01binary")
    with pytest.raises(ConfigError, match="not a text file"):
        load_config(path)
