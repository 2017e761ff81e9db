"""verify/results.json and report.json are typed records with a schema version; their JSON schemas
are published in docs/schemas and must match the models."""

import copy
import json
from pathlib import Path

import pytest

from edgepipe.core.errors import MissingArtifactError
from edgepipe.pipeline.records import Report, VerifyResults, checked, json_schemas

DOCS = Path(__file__).parents[2] / "docs" / "schemas"


def test_published_schemas_match_the_models():
    for name, schema in json_schemas().items():
        published = json.loads((DOCS / f"{name}.json").read_text())
        assert published == schema, f"docs/schemas/{name}.json is stale: run `edgepipe schema --out docs/schemas`"


def _report(tiny_build) -> dict:
    return json.loads((tiny_build["root"] / "build" / "report.json").read_text())


def test_the_records_a_build_writes_validate(tiny_build):
    report = _report(tiny_build)
    assert checked(Report, report, "report.json") is report
    results = json.loads((tiny_build["root"] / "build" / "verify" / "results.json").read_text())
    assert checked(VerifyResults, results, "results.json") is results


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(schema="edgepipe-report/2"), "has schema 'edgepipe-report/2'; this edgepipe reads"),
    (lambda r: r.pop("schema"), "has schema None"),
    (lambda r: r.pop("gates"), "gates: Field required"),
    (lambda r: r["rows"][1].update(accuracy=1.5), "rows.1.accuracy: Input should be less than or equal to 1"),
    (lambda r: r["rows"][1].update(status="great"), "rows.1.status"),
    (lambda r: r["gates"][0].update(status="maybe"), "gates.0.status"),
    (lambda r: r.update(exit_code=0, passed="yes"), "passed: Input should be a valid boolean"),
    (lambda r: r.update(surprise=1), "surprise: Extra inputs are not permitted"),
])
def test_a_damaged_or_foreign_report_is_refused_with_the_fix(tiny_build, edit, message):
    report = copy.deepcopy(_report(tiny_build))
    edit(report)
    with pytest.raises(MissingArtifactError) as e:
        checked(Report, report, "report.json")
    assert message in str(e.value) and "edgepipe report" in e.value.fix
