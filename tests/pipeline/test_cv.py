"""k-fold cross-validation: the folds over train + val (pipeline/data.py) and `edgepipe cv`
(pipeline/cv.py), which runs the ordinary fine-tune stage once per fold."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.errors import DataError
from edgepipe.pipeline.config import FoldConfig, SplitConfig
from edgepipe.pipeline.data import stratified_split
from edgepipe.pipeline.records import CvReport
from tests.conftest import write_tiny_project


def _folds(labels, k, seed=0, groups=None):
    return [stratified_split(labels, SplitConfig(fold=FoldConfig(index=i, of=k)), seed, groups) for i in range(1, k + 1)]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_partition_train_and_val_stratified_and_leave_test_alone(k):
    labels = np.array([0] * 70 + [1] * 30 + [2] * 12)
    plain = stratified_split(labels, SplitConfig(), seed=4)
    pool = np.sort(np.concatenate([plain.train, plain.val]))
    folds = _folds(labels, k, seed=4)
    vals = [f.val for f in folds]
    assert np.array_equal(np.sort(np.concatenate(vals)), pool)  # every pool image validates exactly once
    for f in folds:
        assert np.array_equal(f.test, plain.test)
        assert np.array_equal(np.sort(np.concatenate([f.train, f.val])), pool) and not set(f.train) & set(f.val)
        for c, n in enumerate(np.bincount(labels[pool])):  # stratified: each class split evenly, ±1
            assert abs((labels[f.val] == c).sum() - n / k) <= 1
    again = _folds(labels, k, seed=4)
    assert all(np.array_equal(a.val, b.val) for a, b in zip(folds, again))
    assert any(not np.array_equal(a.val, b.val) for a, b in zip(folds, _folds(labels, k, seed=5)))


def test_copies_stay_in_one_fold():
    labels = np.array([0] * 40 + [1] * 40)
    groups = np.arange(80)
    groups[[3, 9, 17, 25]] = 3  # four copies of one class-0 image
    in_pool = 0
    for seed in range(12):
        folds = _folds(labels, 4, seed, groups)
        copies_in = [set(f.val) & {3, 9, 17, 25} for f in folds]
        if not set(folds[0].test) & {3, 9, 17, 25}:  # the group is in train + val: one fold holds all four
            in_pool += 1
            assert [len(c) for c in copies_in].count(4) == 1 and sum(map(len, copies_in)) == 4, (seed, copies_in)
    assert in_pool >= 4  # the assertion above ran, not only seeds that put the copies in test


def test_more_folds_than_a_class_has_images_is_refused_with_the_count():
    labels = np.array([0] * 40 + [1] * 6)
    with pytest.raises(DataError, match=r"class 'rare' has \d distinct image\(s\).*too few for 8 folds.*--folds \d"):
        stratified_split(labels, SplitConfig(fold=FoldConfig(index=1, of=8)), 0, classes=("common", "rare"))


def test_fold_config_range():
    with pytest.raises(ValueError, match="above the number of folds"):
        FoldConfig(index=4, of=3)


def test_cv_runs_the_finetune_stage_per_fold_and_reports_mean_and_std(tmp_path):
    config = write_tiny_project(tmp_path)
    result = CliRunner().invoke(cli, ["cv", str(config), "--folds", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "cv" / "cv.json").read_text())
    CvReport.model_validate(report)
    assert report["folds"] == 3 and [f["fold"] for f in report["per_fold"]] == [1, 2, 3]
    vals = [f["val_accuracy"] for f in report["per_fold"]]
    assert report["val_accuracy"]["mean"] == pytest.approx(np.mean(vals))
    assert report["val_accuracy"]["std"] == pytest.approx(np.std(vals, ddof=1))
    # 12 images per class, 3 in test: the 18 train + val images validate 6 per fold, test shared
    assert all(f["val_images"] == 6 and f["train_images"] == 12 for f in report["per_fold"])
    assert report["test_images"] == 6
    for f in report["per_fold"]:  # each fold is an ordinary fine-tune stage with its own manifest
        manifest = json.loads((tmp_path / "out" / "cv" / f"fold-{f['fold']}" / "manifest.json").read_text())
        assert manifest["config"]["dataset"]["split"]["fold"] == {"index": f["fold"], "of": 3}
        assert manifest["stages"]["finetune"]["status"] == "complete"
        assert manifest["stages"]["finetune"]["metrics"]["val_accuracy"] == f["val_accuracy"]
    splits = {json.loads((tmp_path / "out" / "cv" / f"fold-{k}" / "manifest.json").read_text())["dataset"]["split_sha256"]
              for k in (1, 2, 3)}
    assert len(splits) == 3
    md = (tmp_path / "out" / "cv" / "report.md").read_text()
    assert f"**Val accuracy {report['val_accuracy']['mean']:.2%} ± {report['val_accuracy']['std']:.2%}**" in md
    assert "mean ± std" in result.output
    assert not (tmp_path / "out" / "manifest.json").exists()  # the build's own output is not touched

    again = CliRunner().invoke(cli, ["cv", str(config), "--folds", "3"])  # done folds are not retrained
    assert again.exit_code == 0 and again.output.count("finetune: up to date") == 3
    assert json.loads((tmp_path / "out" / "cv" / "cv.json").read_text())["per_fold"] == report["per_fold"]


def test_cv_with_too_many_folds_is_one_line_and_exit_2(tmp_path):
    config = write_tiny_project(tmp_path)
    result = CliRunner().invoke(cli, ["cv", str(config), "--folds", "12"])
    assert result.exit_code == 2
    assert "too few for 12 folds" in result.output and "Traceback" not in result.output


def test_a_build_config_cannot_set_a_fold(tmp_path):
    config = write_tiny_project(tmp_path, dataset={"source": "imagefolder", "root": "data",
                                                   "split": {"val": 0.25, "test": 0.25, "fold": {"index": 1, "of": 3}}})
    result = CliRunner().invoke(cli, ["build", str(config)])
    assert result.exit_code == 2 and "dataset.split.fold is set by `edgepipe cv`" in result.output
