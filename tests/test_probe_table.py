"""Every probe on a set of models (flava_zoo.bench.probe_table): resumable runs and the table."""

from __future__ import annotations

from flava_zoo.bench.probe_table import ProbeModel, run_all, write_table
from flava_zoo.evaluation.results import read_results

ONE_THREAD = True


def test_run_all_resumes_and_tabulates(tmp_path, random_export, vqa_checkpoint):
    models = [
        ProbeModel("random", str(random_export), classifiers={"vqa": str(vqa_checkpoint)}),
        ProbeModel("random_again", str(random_export)),
    ]
    log: list[str] = []
    options = {"compositional": {"n": 8}, "subquestions": {"n": 8}}
    results = run_all(models, tmp_path / "out", ["compositional", "subquestions"], options, log.append)
    records = read_results(results)
    # compositional takes the vqa classifier where there is one; subquestions needs one
    assert {r.model for r in records if r.task == "probe/compositional"} == {"random", "random_again"}
    assert {r.lineage.get("classifier_task") for r in records if r.model == "random"} == {"shapes/vqa"}
    assert not [r for r in records if r.task == "probe/subquestions" and r.model == "random_again"]
    assert any("random_again: no vqa classifier given, skipped" in line for line in log)
    count = len(records)
    log.clear()
    run_all(models, tmp_path / "out", ["compositional", "subquestions"], options, log.append)
    assert len(read_results(results)) == count  # resumed: nothing ran again
    assert sum("already" in line for line in log) == 3
    table = write_table(results, tmp_path / "probes.md", ["random", "random_again"], ["python make.py"]).read_text()
    assert "## compositional" in table and "## subquestions" in table and "python make.py" in table
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if "| image_to_text_R@1 |" in line and "| test |" in line]  # fmt: skip
    # one row per classifier the probe ran with: each model's cell where it ran, chance 1/8
    assert sorted((r[0], "[" in r[3], "[" in r[4], r[5]) for r in rows) == [
        ("shapes/vqa", True, False, "12.5"), ("–", False, True, "12.5")]  # fmt: skip
