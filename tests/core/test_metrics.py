"""classification_metrics: a class with no true samples has no recall (None, JSON null), not 0 %,
and does not drag macro F1 down; the numbers for a complete label set are unchanged."""

import json

import numpy as np
import pytest

from edgepipe.core.metrics import classification_metrics

CLASSES = ["cat", "dog", "owl"]


def test_all_classes_present_gives_the_usual_numbers():
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 2, 0, 2])
    m = classification_metrics(pred, truth, CLASSES)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["per_class_recall"] == pytest.approx({"cat": 2 / 3, "dog": 1.0, "owl": 2 / 3})
    f1 = [2 * p * r / (p + r) for p, r in [(2 / 3, 2 / 3), (2 / 3, 1.0), (1.0, 2 / 3)]]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert m["per_class_precision"] == pytest.approx({"cat": 2 / 3, "dog": 2 / 3, "owl": 1.0})
    assert m["per_class_f1"] == pytest.approx(dict(zip(CLASSES, f1)))


def test_a_class_without_true_samples_has_recall_none_and_no_say_in_macro_f1():
    """A labelled folder holding only cats and dogs, all right: owl's recall is undefined, and macro
    F1 is 1.0 (the old code said owl 0 % and macro F1 0.67)."""
    truth = pred = np.array([0, 0, 1, 1, 1])
    m = classification_metrics(pred, truth, CLASSES)
    assert m["per_class_recall"] == {"cat": 1.0, "dog": 1.0, "owl": None}
    assert m["macro_f1"] == 1.0 and m["accuracy"] == 1.0
    assert json.loads(json.dumps(m))["per_class_recall"]["owl"] is None  # null in results / bundle.json


def test_a_class_only_predicted_counts_with_f1_zero():
    """No owls in the folder, but one image called an owl: owl has predictions, so it is one of the
    classes macro F1 averages over, with F1 0 (all its predictions are wrong); its recall stays None."""
    truth = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])
    m = classification_metrics(pred, truth, CLASSES)
    assert m["per_class_recall"] == {"cat": 0.5, "dog": 1.0, "owl": None}
    cat_f1 = 2 * 1.0 * 0.5 / 1.5
    assert m["macro_f1"] == pytest.approx((cat_f1 + 1.0 + 0.0) / 3)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # accuracy of no samples: nan
def test_no_samples_at_all_gives_macro_f1_none():
    m = classification_metrics(np.array([], int), np.array([], int), CLASSES)
    assert m["macro_f1"] is None and m["per_class_recall"] == {c: None for c in CLASSES}


def test_a_class_never_predicted_has_precision_none_and_f1_zero_when_it_has_samples():
    """owl has two samples and no prediction: its precision is undefined (None), its recall 0 and its
    F1 0; cat was predicted for an owl, so its precision is 2/3."""
    truth = np.array([0, 0, 1, 2, 2])
    pred = np.array([0, 0, 1, 0, 1])
    m = classification_metrics(pred, truth, CLASSES)
    assert m["per_class_precision"] == pytest.approx({"cat": 2 / 3, "dog": 0.5, "owl": None})
    assert m["per_class_f1"]["owl"] == 0.0 and m["per_class_recall"]["owl"] == 0.0
