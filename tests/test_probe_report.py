"""``flava-zoo probe report``: the page's tables, header, escaping and errors, and (in a real
headless Chromium) that its embedded figures load when the page is moved alone, and that a
broken or absent figure is counted as not loaded.

Without a browser the browser tests skip, except under CI (``CI`` set, as ``.ci/run`` does,
which also installs Debian's ``chromium``), where they fail: the page is never silently
unchecked there."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from flava_zoo.evaluation.results import append_results, make_records
from flava_zoo.probes.common import Measure, ProbeError, ProbeWriter, pyplot
from flava_zoo.probes.report import ReportWarning, build_report, main
from flava_zoo.stats import Interval

ONE_THREAD = True

MODELS = {"a": "tiny <b>&amp</b>", "b": "base \"quoted\""}


def _records(folder, model, offset):
    """Two probes (negation, embeddings), each with one figure, for ``model`` in ``folder``."""
    writer = ProbeWriter(folder / "results.jsonl", folder / "figures", model, f"export:/x/{model}", {"pretrained": model})
    iv = Interval(estimate=60.0 + offset, low=50.0 + offset, high=70.0 + offset, level=0.95, method="bootstrap", n=40, resamples=1000)
    writer.write("negation", "test", {"flip_rate": Measure(60.0 + offset, iv, chance=50.0)}, 40, {"n": 40})
    t = Interval(estimate=0.25, low=0.2034, high=0.3, level=0.9, method="t", n=3)
    nmi = Measure(0.25 + offset / 100, t if offset else None, unit="1")
    writer.write("embeddings", "val", {"nmi": nmi, "ari": Measure(12.5, chance=0.0)}, 30)
    plt = pyplot()
    for probe in ("negation", "embeddings"):
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([0, 1], [offset, 1])
        writer.figure(probe, "curve", fig, f"{probe} curve of {model}")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The records and figures, written once for the module."""
    root = tmp_path_factory.mktemp("written")
    for i, (folder, model) in enumerate(MODELS.items()):
        _records(root / folder, model, 10 * i)
    return root


@pytest.fixture
def two_models(written, tmp_path):
    """Folders ``a`` and ``b`` of probe records and figures, one model each (a test's own copy)."""
    for folder in MODELS:
        shutil.copytree(written / folder, tmp_path / folder)
    return [tmp_path / "a", tmp_path / "b"]


def _browser():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    message = "no headless browser (chromium or chromium-browser) on PATH: apt-get install chromium"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: the report must be checked in a browser)")
    pytest.skip(message)


def _render(page, tmp_path):
    """The DOM of ``page`` after its load event, as headless Chromium dumps it."""
    run = subprocess.run(
        [
            _browser(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'browser-profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def _counts(dom):
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    loaded = re.search(r'data-figures-loaded="(\d+)"', body.group(0))
    total = re.search(r'data-figures-total="(\d+)"', body.group(0))
    assert loaded and total, f"the page's load script did not run: {body.group(0)}"
    return int(loaded.group(1)), int(total.group(1))


def test_every_figure_loads_in_a_browser_when_the_page_is_moved_alone(two_models, tmp_path):
    page = build_report(two_models, tmp_path / "out")
    alone = tmp_path / "elsewhere" / "page.html"
    alone.parent.mkdir()
    shutil.move(page, alone)
    shutil.rmtree(tmp_path / "a" / "figures")  # the page may not point at the files
    shutil.rmtree(tmp_path / "b" / "figures")
    dom = _render(alone, tmp_path)
    assert _counts(dom) == (4, 4)
    assert "fig-slot fig-broken" not in dom
    assert "60.0" in dom and "70.0" in dom and MODELS["b"].replace('"', "&quot;") in alone.read_text()


def test_a_broken_and_an_absent_figure_are_counted_and_marked(two_models, tmp_path):
    (tmp_path / "a" / "figures" / "tiny_b_amp_b" / "negation_curve.png").write_bytes(b"not an image")
    absent = tmp_path / "b" / "figures" / "base_quoted" / "embeddings_curve.png"
    absent.unlink()
    with pytest.warns(ReportWarning) as caught:
        page = build_report(two_models, tmp_path / "out")
    messages = [str(w.message) for w in caught]
    assert any(str(absent) in m and "does not exist" in m for m in messages)
    assert any("not a PNG" in m for m in messages)
    text = page.read_text()
    assert f"figure missing: {absent}" in text
    dom = _render(page, tmp_path)
    assert _counts(dom) == (2, 4)
    assert dom.count('class="fig-slot fig-broken"') == 1  # the unreadable PNG, marked by the script
    assert dom.count("fig-missing") == 1


def test_tables_hold_values_intervals_chance_and_the_header_names_the_models(two_models, tmp_path):
    page = build_report(two_models, tmp_path / "out.html")
    assert page == tmp_path / "out.html"
    text = page.read_text()
    assert "<b>&amp" not in text and "tiny &lt;b&gt;&amp;amp&lt;/b&gt;" in text  # escaped everywhere
    assert 'src="data:image/png;base64,' in text and "file:" not in text
    negation = re.search(r'<table class="probe" data-probe="negation">(.*?)</table>', text).group(1)
    header = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", negation)
    assert header == ["split", "metric", "unit", "tiny &lt;b&gt;&amp;amp&lt;/b&gt;", "base &quot;quoted&quot;", "chance", "flip_rate"]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", negation)
    assert cells[:2] == ["test", "%"]
    assert re.sub(r"<[^>]+>", "", cells[2]) == "60.0 [50.0, 70.0]"
    assert re.sub(r"<[^>]+>", "", cells[3]) == "70.0 [60.0, 80.0]"
    assert cells[4] == "50.0" and "chance/" not in negation
    assert "95% interval: percentile bootstrap over items (n = 40, 1000 resamples)" in negation
    embeddings = re.search(r'data-probe="embeddings">(.*?)</table>', text).group(1)
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", embeddings)]
    assert cells[2:5] == ["0.250", "0.350 [0.203, 0.300]", "&mdash;"]  # unit 1: no chance
    assert cells[5:10] == ["val", "%", "12.5", "12.5", "0.0"]
    assert "no interval" in embeddings and "90% interval: Student&#x27;s t over runs (n = 3)" in embeddings
    models = re.search(r'<table class="models">(.*?)</table>', text).group(1)
    assert "export:/x/tiny &lt;b&gt;" in models and "&quot;pretrained&quot;" in models
    from flava_zoo.version import __version__

    assert f"<td>{__version__}</td>" in models
    # figures side by side: each probe's grid has one column per model, in the models' order
    grids = re.findall(r'repeat\((\d+), minmax', text)
    assert grids == ["2", "2"]
    first = text.index("negation curve of tiny")
    assert first < text.index("negation curve of base") < text.index("embeddings curve of tiny")


def test_a_rerun_shows_the_latest_record(two_models, tmp_path):
    later = make_records(
        {"flip_rate": 99.0}, model=MODELS["a"], model_source="export:/x", task="probe/negation", split="test", num_samples=5
    )
    append_results(two_models[0] / "results.jsonl", later)
    text = build_report(two_models, tmp_path / "out").read_text()
    negation = re.search(r'data-probe="negation">(.*?)</table>', text).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", negation)
    assert cells[2] == "99.0" and "measured again later" in text  # no interval: the rerun had none


def test_errors_name_the_file(two_models, tmp_path, capsys):
    with pytest.raises(ProbeError, match="nowhere: no such file or folder"):
        build_report([two_models[0], tmp_path / "nowhere"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProbeError, match="the folder has no results.jsonl"):
        build_report([tmp_path / "empty"], tmp_path / "out")
    other = tmp_path / "eval.jsonl"
    append_results(other, make_records({"acc": 50.0}, model="m", model_source="s", task="shapes/vqa", split="val", num_samples=3))
    with pytest.raises(ProbeError, match=re.escape(f"{other} holds no probe records")):
        build_report([other], tmp_path / "out")
    with open(two_models[1] / "figures.jsonl", "a") as f:
        f.write(json.dumps({"model": "m", "probe": "negation", "figure": "x"}) + "\n")
    with pytest.raises(ProbeError, match=r"figures.jsonl, line 3: field 'path'"):
        build_report(two_models, tmp_path / "out")
    assert main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert "the folder has no results.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_command_writes_the_page_and_warns_of_absent_figures(two_models, tmp_path, capsys):
    (tmp_path / "a" / "figures" / "tiny_b_amp_b" / "negation_curve.png").unlink()
    from flava_zoo.probes.cli import main as probe_main

    assert probe_main(["report", "--results", *map(str, two_models), "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "out" / "report.html")
    assert "warning: figure 'curve' of tiny <b>&amp</b> (negation)" in err and "does not exist" in err


def test_a_probe_run_with_two_classifiers_keeps_both_rows(tmp_path):
    results = tmp_path / "r" / "results.jsonl"
    for task, value in (("shapes/vqa", 48.0), ("shapes/memes", 57.0)):
        writer = ProbeWriter(results, tmp_path / "r" / "figures", "m", "src",
                             {"pretrained": "src", "classifier": f"{task}.ckpt", "classifier_task": task})  # fmt: skip
        writer.write("interactions", "test", {"full/accuracy": Measure(value, chance=50.0)}, 20)
    page = build_report([tmp_path / "r"], tmp_path / "out.html").read_text()
    table = page.split('data-probe="interactions"', 1)[1].split("</table>", 1)[0]
    assert "<th>classifier</th>" in table
    assert re.search(r"<td>shapes/vqa</td><td>test</td><th>full/accuracy</th>.*?48\.0", table)
    assert re.search(r"<td>shapes/memes</td><td>test</td><th>full/accuracy</th>.*?57\.0", table)
    assert "measured again later" not in page
