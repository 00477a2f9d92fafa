"""HTML reports on real profiles: every plot is there as an embedded PNG, the decision table is the profile's."""

from __future__ import annotations

import base64
import json
import sys

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from fxfusion.cli.commands import app
from fxfusion.errors import FxFusionError
from fxfusion.profiles.profile import Profile
from fxfusion.reports.html import render_analysis_html, render_profile_html
from fxfusion.profiles.schema import schema_errors
from tests.helpers import HtmlDoc, edited, make_analysis

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


@pytest.fixture(scope="module")
def profile(tiny_profile) -> Profile:
    return Profile.load(tiny_profile)


@pytest.fixture(scope="module")
def doc(profile) -> HtmlDoc:
    return HtmlDoc(render_profile_html(profile, source="tiny.json"))


def expected_plots(profile: Profile) -> set[str]:
    groups = {(e.pattern, e.dtype) for e in profile.entries}
    return {f"speedup:{p}:{d}" for p, d in groups} | {f"roofline:{d}" for _, d in groups}


def png_bytes(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,"), src[:40]
    return base64.b64decode(src.split(",", 1)[1], validate=True)


def test_report_parses_and_is_balanced(doc):
    assert doc.tags[0] == "html" and "body" in doc.tags
    assert doc.unbalanced == [] and doc.stack == []


def test_one_speedup_plot_per_pattern_and_dtype_and_a_roofline_per_dtype(profile, doc):
    keys = [f["key"] for f in doc.figures]
    assert len(keys) == len(set(keys))
    assert set(keys) == expected_plots(profile)


def test_every_plot_is_an_embedded_png(doc):
    for fig in doc.figures:
        data = png_bytes(fig["src"])
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, fig["key"]
        assert fig["alt"] and fig["caption"]


def test_report_is_self_contained(profile):
    html = render_profile_html(profile)
    doc = HtmlDoc(html)
    assert "script" not in doc.tags and "link" not in doc.tags
    assert all(f["src"].startswith("data:") for f in doc.figures)
    assert "http://" not in html and "https://" not in html


def test_decision_table_rows_are_the_profile_entries(profile, doc):
    rows = [r for r in doc.rows if "data-key" in r["attrs"]]
    assert [r["attrs"]["data-key"] for r in rows] == [e.key() for e in profile.entries]
    for row, e in zip(rows, profile.entries):
        pattern, shape, dtype, flops, verdict, best = row["cells"][:6]
        assert (pattern, dtype, verdict, best) == (e.pattern, e.dtype, e.decision.verdict, e.decision.best_variant)
        assert row["attrs"]["data-verdict"] == e.decision.verdict
        assert shape == ", ".join(f"{k}={v}" for k, v in e.shape.items())
        assert float(flops) == pytest.approx(e.flops, rel=1e-2)
        if e.decision.speedup:
            assert f"{e.decision.speedup.median:.2f}x" in row["cells"][6]


def test_speedup_caption_names_the_sizes_and_every_variant_not_drawn(profile, doc):
    captions = {f["key"]: f["caption"] for f in doc.figures}
    for e in profile.entries:
        caption = captions[f"speedup:{e.pattern}:{e.dtype}"]
        assert ",".join(f"{k}={v}" for k, v in e.shape.items()) in caption
        for v in e.variants:
            if v.kind != "eager" and v.status != "ok":
                assert v.name in caption.split("Not drawn:", 1)[1]


def test_roofline_caption_counts_every_timed_variant(profile, doc):
    caption = next(f["caption"] for f in doc.figures if f["key"] == "roofline:float32")
    timed = sum(1 for e in profile.entries if e.dtype == "float32" for v in e.variants if v.status == "ok" and v.gflops)
    assert caption.startswith(f"{timed} measured variants")


def test_flip_shows_in_the_plot_and_table(profile):
    """A copy with sdpa 10x slower at the small attention size must report avoid there, and draw another image."""
    slow = edited(profile, {("full_attention", 0): ("sdpa", 0.1)})
    html = render_profile_html(slow)
    doc = HtmlDoc(html)
    small = min((e for e in slow.entries if e.pattern == "full_attention"), key=lambda e: e.flops)
    row = next(r for r in doc.rows if r["attrs"].get("data-key") == small.key())
    assert row["attrs"]["data-verdict"] == "avoid" and row["cells"][5] == "eager"
    before = {f["key"]: f["src"] for f in HtmlDoc(render_profile_html(profile)).figures}
    after = {f["key"]: f["src"] for f in doc.figures}
    assert after["speedup:full_attention:float32"] != before["speedup:full_attention:float32"]
    assert after["speedup:linear_bias_relu:float32"] == before["speedup:linear_bias_relu:float32"]  # deterministic


def test_profile_strings_are_escaped(profile):
    data = json.loads(json.dumps(profile.to_dict()))  # to_dict shares nested dicts with the module's profile
    data["metadata"]["command"] = "<script>alert(1)</script>"
    data["metadata"]["warnings"] = ["<i>italic</i> & co"]
    html = render_profile_html(Profile.from_dict(data))
    doc = HtmlDoc(html)
    assert "script" not in doc.tags and "i" not in doc.tags
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;i&gt;italic&lt;/i&gt; &amp; co" in html


def test_profile_without_measured_ceilings_draws_the_datasheet_roof_only(tmp_path):
    """A real calibration run with skip_ceilings: the roofline still places every entry, and says what is missing."""
    from fxfusion.calibration.calibrate import calibrate
    from tests.helpers import TINY_SPEC

    bare = calibrate(hardware="generic-cpu", device="cpu", patterns="qk_scores", quick=True, compile_modes=(),
                     spec=TINY_SPEC, skip_ceilings=True, output=tmp_path / "bare.json", command="pytest bare")
    assert bare.ceilings["best_gbs"] is None
    doc = HtmlDoc(render_profile_html(Profile.load(tmp_path / "bare.json")))
    assert {f["key"] for f in doc.figures} == expected_plots(bare)
    caption = next(f["caption"] for f in doc.figures if f["key"] == "roofline:float32")
    assert "no measured float32 ceiling" in caption


def test_profile_with_no_entries_still_renders(profile):
    data = json.loads(json.dumps(profile.to_dict()))
    data["entries"] = []
    doc = HtmlDoc(render_profile_html(Profile.from_dict(data)))
    assert doc.figures == [] and doc.unbalanced == [] and not [r for r in doc.rows if "data-key" in r["attrs"]]


def test_missing_matplotlib_is_one_clear_error(profile, monkeypatch, tmp_path, tiny_profile):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(FxFusionError, match=r"pip install 'fxfusion\[report\]'"):
        render_profile_html(profile)
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(tiny_profile), "-o", str(out)])
    assert result.exit_code == 1 and "fxfusion[report]" in result.output and not out.exists()


# -- CLI -------------------------------------------------------------------------------------------------------------

def test_report_cli_writes_the_html(tiny_profile, tmp_path, profile):
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(tiny_profile), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    doc = HtmlDoc(out.read_text())
    assert {f["key"] for f in doc.figures} == expected_plots(profile)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left


def broken_inputs(tmp_path, tiny_profile):
    data = json.loads(tiny_profile.read_text())
    invalid = json.loads(tiny_profile.read_text())
    invalid["entries"][0]["decision"]["verdict"] = "maybe"
    files = {
        "missing": (tmp_path / "nope.json", "does not exist"),
        "not_json": (tmp_path / "cut.json", "is not valid JSON"),
        "wrong_kind": (tmp_path / "other.json", "kind"),
        "schema_invalid": (tmp_path / "invalid.json", "$.entries[0].decision.verdict"),
    }
    files["not_json"][0].write_text(tiny_profile.read_text()[:500])
    files["wrong_kind"][0].write_text(json.dumps({**data, "kind": "something.else"}))
    files["schema_invalid"][0].write_text(json.dumps(invalid))
    return files


@pytest.mark.parametrize("case", ["missing", "not_json", "wrong_kind", "schema_invalid"])
def test_report_cli_bad_input_is_one_line_and_writes_nothing(case, tmp_path, tiny_profile):
    path, message = broken_inputs(tmp_path, tiny_profile)[case]
    out = tmp_path / "out.html"
    result = runner.invoke(app, ["report", str(path), "-o", str(out)])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_report_cli_refuses_to_overwrite_its_input(tiny_profile):
    before = tiny_profile.read_bytes()
    result = runner.invoke(app, ["report", str(tiny_profile), "-o", str(tiny_profile)])
    assert result.exit_code == 1 and "input" in result.output
    assert tiny_profile.read_bytes() == before


# -- analysis reports ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def analysis(profile) -> dict:
    data = make_analysis(profile)
    assert schema_errors(data, "analysis") == []
    return data


def test_analysis_report_lists_every_site_with_its_verdict(analysis):
    doc = HtmlDoc(render_analysis_html(analysis))
    assert doc.unbalanced == [] and "script" not in doc.tags
    rows = [r for r in doc.rows if r["attrs"].get("data-verdict")]
    assert [(r["attrs"]["data-site"], r["attrs"]["data-verdict"]) for r in rows] == \
           [(s["id"], s["verdict"]) for s in analysis["sites"]]
    why = {r["attrs"]["data-why"]: r["cells"][0] for r in doc.rows if "data-why" in r["attrs"]}
    assert "also used by add_1" in why["g0.s1"]  # the reason, escaped and shown in the full-width row under the site


def test_analysis_report_highlights_site_nodes_in_the_graph(analysis):
    def model(x, w, b, w1, b1):
        y = torch.relu(F.linear(x, w, b))
        h = F.linear(y, w1, b1)
        return F.gelu(h) + h

    gm = torch.fx.symbolic_trace(model)
    html = render_analysis_html(analysis, graphs=[gm])
    doc = HtmlDoc(html)
    ops = [r for r in doc.rows if "data-node" in r["attrs"]]
    assert [(r["cells"][0], r["attrs"].get("data-site")) for r in ops] == \
           [("linear", "g0.s0"), ("relu", "g0.s0"), ("linear_1", "g0.s1"), ("gelu", "g0.s1"), ("add", None)]
    verdict = analysis["sites"][0]["verdict"]
    assert f'<span class="chip v-{verdict}">linear</span>' in html
    assert "<td>add</td>" in html  # a node in no site is listed, not highlighted


def test_analysis_report_without_graphs_still_colours_site_nodes(analysis):
    html = render_analysis_html(analysis)
    assert 'class="chip v-illegal" data-site="g0.s1"' in html
    assert "aten.add.Tensor" in html and "&lt;warning&gt;" in html


def test_analysis_report_tolerates_missing_optional_fields(analysis):
    data = json.loads(json.dumps(analysis))
    for site in data["sites"]:
        site.pop("title")
    data["metadata"].pop("dtype")
    data["verification"] = {"ok": True}
    doc = HtmlDoc(render_analysis_html(data))
    assert doc.unbalanced == []


def test_report_cli_renders_an_analysis_file(analysis, tmp_path):
    path, out = tmp_path / "analysis.json", tmp_path / "analysis.html"
    path.write_text(json.dumps(analysis))
    result = runner.invoke(app, ["report", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 sites" in result.output and 'data-site="g0.s0"' in out.read_text()


def test_real_analysis_highlights_every_site_node_by_verdict(tiny_profile, profile):
    """A real `analyze` run (conv+BN+ReLU decided from the real tiny profile) rendered with its captured graphs."""
    analyze_mod = pytest.importorskip("fxfusion.planning.analyze", reason="fxfusion.planning.analyze (issue 3) is not in this tree")
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4096, 64)).eval()
    source = analyze_mod.ProfileSource(profile, "cpu", str(tiny_profile))
    result = analyze_mod.analyze(model, (torch.randn(1, 16, 16, 16),), source, time_forward=False)
    data = result.to_dict()
    assert schema_errors(data, "analysis") == []
    conv = next(s for s in data["sites"] if s["pattern"] == "conv2d_bn_relu")
    assert conv["decision"]["verdict"] == profile.decide("conv2d_bn_relu", conv["shape"]).verdict
    html = render_analysis_html(data, result.captured.graphs)
    doc = HtmlDoc(html)
    assert doc.unbalanced == []
    ops = {r["attrs"]["data-node"]: r for r in doc.rows if "data-node" in r["attrs"]}
    for site in data["sites"]:
        for node in site["nodes"]:
            assert ops[node]["attrs"]["data-site"] == site["id"]
            assert f'<span class="chip v-{site["verdict"]}">{node}</span>' in html
    unmatched = [name for name, row in ops.items() if not row["attrs"].get("data-site")]
    assert len(unmatched) == sum(data["unmatched"].values()) > 0  # flatten: listed, in no site
    assert all(op in html for op in data["unmatched"])


def test_analysis_report_renders_the_verification_as_tables():
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "docs" / "results" / "h200-analyze" / "resnet_basic.json"
    data = json.loads(path.read_text())
    html = render_analysis_html(data)
    doc = HtmlDoc(html)
    assert doc.unbalanced == []
    section = html[html.index('<section id="verification">'):]
    assert "<b>VERIFIED</b>" in section and '<a href="#verification">' in html
    assert "<td>planned</td>" in section and "predicted" in section and "paired per round" in section
    assert '<table class="groups">' in section and "<td>g0.s0</td>" in section
    assert "<details><summary>the verification as JSON</summary>" in section


# -- readable at 1400 px: the prose in full-width rows, labelled predictions, captions that explain ------------------

def test_decision_reasons_sit_in_a_full_width_row_under_each_entry(profile, doc):
    why = {r["attrs"]["data-why"]: r["cells"] for r in doc.rows if "data-why" in r["attrs"]}
    assert list(why) == [e.key() for e in profile.entries]
    for e in profile.entries:
        (text,) = why[e.key()]
        assert text.startswith("why: " + e.decision.reason)
        refused = [v.name for v in e.variants if v.status != "ok"]
        assert all(name in text.split("not timed:", 1)[1] for name in refused)
    main = next(r for r in doc.rows if "data-key" in r["attrs"])
    assert len(main["cells"]) == 11  # generic-cpu: nominal peaks, so no "% of roofline" column
    assert '<div class="wide"><table class="decisions">' in render_profile_html(profile)


def test_the_two_predicted_savings_of_an_analysis_page_are_labelled():
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "docs" / "results" / "h200-analyze" / "transformer_block.json"
    html = render_analysis_html(json.loads(path.read_text()))
    top, verification = html.split('<section id="verification">')
    assert "<b>Library estimate</b> of the saving per forward pass: 0.123 ms" in top
    assert "<b>in-model prediction</b>" in top
    assert "saving per forward: predicted 0.2568 ms in the model (each group&#x27;s region timed inside the model)" \
        in verification


def _drawn(monkeypatch):
    """Capture the matplotlib figures instead of encoding them."""
    from fxfusion.reports import plots

    figures = []
    monkeypatch.setattr(plots, "to_data_uri", lambda fig: figures.append(fig) or "data:image/png;base64,")
    return plots, figures


def test_speedup_plots_use_a_log_axis_and_a_style_per_variant_kind(profile, monkeypatch):
    plots, figures = _drawn(monkeypatch)
    entries = [e for e in profile.entries if e.pattern == "conv2d_bn_relu"]
    plot = plots.speedup_plot(entries, 0.02)
    (ax,) = figures[0].axes
    assert ax.get_yscale() == "log" and "log scale" in plot.caption
    figures[0].canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True) if t.get_text()]
    assert labels and all(label.endswith("x") for label in labels)
    styles = {line.get_label(): line.get_linestyle() for line in ax.get_lines() if "(" in line.get_label()}
    assert all(style == ("--" if "(compile)" in name else "-") for name, style in styles.items())


def test_roofline_colours_by_family_and_says_when_tf32_lifts_float32_points(profile, monkeypatch):
    plots, _ = _drawn(monkeypatch)
    colors = plots.family_colors({"linear_bias": "linear", "linear_bias_relu": "linear", "conv2d_bn_relu": "conv"})
    assert colors["linear_bias"] != colors["linear_bias_relu"]
    blue, orange = colors["linear_bias"], colors["conv2d_bn_relu"]
    assert blue[2] > blue[0] and orange[0] > orange[2]  # one hue per family
    assert "TF32" not in plots.roofline_plot(profile, "float32").caption  # a CPU profile: no TF32
    data = profile.to_dict()
    data["metadata"].update(device="cuda", tf32={"matmul": False, "cudnn": True})
    data["hardware"]["peak_gflops"]["tf32"] = 1000.0
    caption = plots.roofline_plot(Profile.from_dict(data), "float32").caption
    assert "TF32 was on for cuDNN (metadata.tf32.cudnn = true): the float32 conv points ran on TF32" in caption
    assert "dotted: the datasheet TF32 peak, 1000 GFLOP/s" in caption


def test_a_roofline_of_every_pattern_keeps_its_axes_beside_a_legend_in_columns():
    # the shipped H200 profile has 41 patterns: in one legend column they collapsed the axes (matplotlib warned)
    import warnings
    from pathlib import Path

    from fxfusion.reports.plots import LEGEND_ROWS, roofline_plot

    profile = Profile.load(Path(__file__).resolve().parent.parent / "profiles" / "h200.json")
    assert len({e.pattern for e in profile.entries}) > LEGEND_ROWS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied because axes sizes collapsed to zero"
        plot = roofline_plot(profile, "float32")
    assert plot.data_uri.startswith("data:image/png;base64,")
