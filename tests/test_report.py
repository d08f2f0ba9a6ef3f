"""lrx.report on a synthetic sweep: finished runs, an unfinished one, a corrupt one, no training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from matplotlib.image import imread

from lrx.lowrank import method_class
from lrx.report import cli, plot, reference
from lrx.report import rows as report_rows
from lrx.results.files import DEPLOYED, RETIMED

REPO = Path(__file__).resolve().parents[1]

BASELINE = {
    "acc1": 87.56,
    "acc1_test": 87.5,
    "macs": 92_783_872,
    "params": 934_010,
    "origin": {"source": "checkpoint", "path": "checkpoints/alexnet_cifar.pt"},
}
SHAPES = {"conv2": [128, 48, 5, 5], "conv3": [192, 128, 3, 3], "conv4": [192, 192, 3, 3], "conv5": [128, 192, 3, 3]}
LAM = {"schedule": "fixed", "start": 0.01, "end": 1.0, "steps": 10}


def results(method, layers, bases, stages, conv_speedup, *, target=None, metric="latency", lam=LAM, cuda=False) -> dict:
    """A ``results.json`` as lrx.run.stages.run writes it (the timings table left out), for the layer
    ``bases`` list (ints, or (method, bases) pairs for the planner) and ``stages`` {stage: acc1}."""
    per_layer = [b if isinstance(b, tuple) else (method, b) for b in bases]
    records = [
        {
            "name": name,
            "shape": SHAPES[name],
            "method": m,
            "label": method_class(m).label,  # as lrx.lowrank.base.LowRankConv.from_conv records them
            "letter": method_class(m).letter,
            "bases": k,
            "rel_error": 0.5,
            "macs_speedup": 4.0,
            "solve_time_s": 0.01,
            "kept": True,
            "lambda": {**lam, "values": [lam["start"]], "scale": 97.4} if m == "scheme1" else None,
            "measured_speedup": {"cpu": conv_speedup, **({"cuda": 1.5} if cuda else {})},
        }
        for name, (m, k) in zip(layers, per_layer)
    ]
    final = {**{k: v for k, v in BASELINE.items() if k != "origin"}, "macs": 20_000_000, "params": 200_000}
    final.update(acc1=list(stages.values())[-1], acc1_test=list(stages.values())[-1] - 0.5)

    def lat(ms: float) -> dict:
        return {"cpu": ms, **({"cuda": ms / 10} if cuda else {})}

    return {
        "status": "complete",
        "model": "alexnet_cifar",
        "dataset": "cifar10",
        "method": "plan" if target else method,
        "baseline": {**BASELINE, "latency_ms": lat(40.0)},
        "final": {**final, "latency_ms": lat(40.0 / conv_speedup)},
        "stages": {name: {"acc1": acc, "acc1_test": acc - 0.5} for name, acc in stages.items()},
        "speedup": {
            "macs": BASELINE["macs"] / final["macs"],
            "conv": lat(conv_speedup),
            "model": lat(conv_speedup * 0.9),
        },
        "latency": {},
        "layers": records,
        "plan": {"target_speedup": target, "metric": metric, "predicted_conv_speedup": target} if target else None,
        "config": {
            "model": {"name": "alexnet_cifar", "input_size": 32},
            "latency": {"batch_sizes": [1, 32], "memory_format": "channels_last", "warmup": 3, "repeats": 10},
            "decomp": {"method": "plan", "layers": layers}
            if target
            else {"method": method, "layers": layers, "bases": bases[0]},
        },
    }


S1 = results("scheme1", ["conv2"], [8], {"filter": 60.0, "data": 80.0, "finetune": 84.0}, 1.6)
S2 = results("scheme2", ["conv2", "conv3", "conv4", "conv5"], [32] * 4, {"filter": 50.0, "data": 78.0}, 2.9, cuda=True)
PLAN = results(
    None,
    ["conv2", "conv4"],
    [("scheme1", 4), ("scheme2", 26)],
    {"filter": 70.0, "data": 83.0},
    2.5,
    target=2.5,
    lam={"schedule": "ascending", "start": 0.001, "end": 1.0, "steps": 10},
)


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A Hydra multirun dir: jobs 0-2 finished, 3 without status, 4 corrupt, 5 not written yet."""
    root = tmp_path / "multiruns" / "2026-11-30" / "10-00-00"
    for job, content in enumerate([S1, S2, PLAN, {k: v for k, v in S1.items() if k != "status"}]):
        job_dir = root / str(job)
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / "results.json").write_text(json.dumps(content))
    (root / "4" / ".hydra").mkdir(parents=True)
    (root / "4" / "results.json").write_text('{"status": "complete", "model": ')
    (root / "5" / ".hydra").mkdir(parents=True)
    (root / "5" / ".results.json.x1y2.tmp").write_text("{")
    return root


def test_collect_rows_and_unfinished(sweep):
    rows, unfinished = report_rows.collect([sweep])
    assert [r["kind"] for r in rows] == ["baseline", "job", "job", "job"]
    assert [r["conv_speedup_cpu"] for r in rows] == [1.0, 1.6, 2.5, 2.9]
    base, s1, plan, s2 = rows
    assert (base["method"], base["macs_m"], base["params_m"], base["acc1"]) == ("baseline", 92.783872, 0.93401, 87.56)
    assert (s1["method"], s1["lambda"], s1["layers"], s1["bases"], s1["label"]) == ("s1", "0.01", "conv2", "8", "s1 M8")
    assert (s2["method"], s2["lambda"], s2["layers"], s2["bases"]) == ("s2", None, "conv2-conv5", "32")
    assert s2["label"] == "s2 K32"
    assert s2["cuda_ms"] == pytest.approx(4.0 / 2.9) and s1["cuda_ms"] is None
    assert plan["method"] == "planner 2.5x latency (s1+s2)" and plan["label"] == "plan 2.5x s1+s2"
    assert (plan["lambda"], plan["layers"], plan["bases"]) == ("asc 0.001→1", "conv2,conv4", "M4/K26")
    assert s1["acc1"] == 84.0 and s1["stages"] == {"filter": 60.0, "data": 80.0, "finetune": 84.0}
    reasons = {p.relative_to(sweep).as_posix(): why for p, why in unfinished}
    assert reasons == {
        "3/results.json": "status missing",
        "4/results.json": "unparsable JSON",
        "5/.results.json.x1y2.tmp": "temporary file",
    }


def test_table_columns_and_rows(sweep):
    rows, _ = report_rows.collect([sweep])
    lines = report_rows.table_markdown(rows).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == [
        "model",
        "data",
        "method",
        "lambda",
        "layers",
        "#bases",
        "MACs(M)",
        "params(M)",
        "CPU time(ms)",
        "CUDA time(ms)",
        "acc@1(%)",
        "test acc@1(%)",
        "acc@1 after each stage(%)",
        "theoretical speed-up (MAC ratio)",
        "measured conv speed-up (CPU)",
        "its IQR (CPU)",
        "model speed-up (CPU)",
        "conv speed-up (CPU, BN folded)",
        "model speed-up (CPU, BN folded)",
        "ONNX Runtime time(ms)",
        "conv speed-up (ONNX Runtime)",
        "model speed-up (ONNX Runtime)",
        "best dense deployment (ms)",
        "best final deployment (ms)",
        "speed-up vs best dense",
        "its IQR (vs best dense)",
        "conv speed-up re-timed (CPU, median [range])",
        "solve time(s)",
    ]
    body = cells[2:]
    body = [r[:1] + r[2:] for r in body]  # the data column aside
    assert {r[1] for r in cells[2:]} == {"cifar10"}
    assert len(body) == 4 and [r[1] for r in body] == ["baseline", "s1", "planner 2.5x latency (s1+s2)", "s2"]
    assert body[0][5:14] == ["92.78", "0.934", "40.00", "4.00", "87.56", "87.50", "-", "1.00", "1.00"]  # CUDA: s2's
    assert body[0][26] == "-" and body[1][8] == "-" and body[1][25] == "-"  # not re-timed
    assert body[1][14] == "-"  # made before lrx recorded the spread
    assert body[1][16:18] == ["-", "-"]  # BatchNorm folding not measured
    assert body[1][18:21] == ["-", "-", "-"]  # not deployed: no ONNX Runtime figures
    assert all(r[21:25] == ["-"] * 4 for r in body)  # nor to targets: no deployment headline
    assert body[1][11] == "filter 60.00 → data 80.00 → finetune 84.00" and body[1][26] == "0.01"
    assert body[3][26] == "0.04"  # four layers at 0.01 s
    assert body[3][2:5] == ["-", "conv2-conv5", "32"] and body[3][8] == "1.38"  # 4.00 / 2.9


def test_main_writes_report_png_and_csv(sweep, tmp_path, capsys):
    out, csv_path = tmp_path / "out", tmp_path / "summary.csv"
    assert cli.main([str(sweep), "--out", str(out), "--csv", str(csv_path)]) == 0
    captured = capsys.readouterr()
    warning = captured.err.strip()
    assert len(warning.splitlines()) == 1 and "skipped 3 unfinished" in warning
    assert str(sweep / "3" / "results.json") in warning and str(sweep / "4" / "results.json") in warning
    assert report_rows.table_markdown(report_rows.collect([sweep])[0]) in captured.out
    md = (out / "report.md").read_text()
    every_run = md[md.index("## Every run") :]
    assert every_run.count("| alexnet_cifar |") == 4 and "Skipped 3 unfinished" in md

    image = imread(out / "report.png")
    assert image.shape[0] >= 400 and image.shape[1] >= 600

    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == [
            "model",
            "dataset",
            "method",
            "layers",
            "bases",
            "lambda_schedule",
            "stage",
            "acc1",
            "baseline_acc1",
            "macs_m",
            "params_m",
            "cpu_ms",
            "cuda_ms",
            "macs_speedup",
            "measured_speedup_cpu",
            "measured_speedup_cpu_iqr",
            "model_speedup_cpu",
            "conv_speedup_cpu_bn_folded",
            "model_speedup_cpu_bn_folded",
            "ort_ms",
            "conv_speedup_ort",
            "model_speedup_ort",
            "best_dense",
            "best_dense_ms",
            "best_dense_acc1",
            "best_final",
            "best_final_ms",
            "best_final_acc1",
            "speedup_vs_best_dense",
            "speedup_vs_best_dense_iqr",
        ]
        table = list(reader)
    assert [(r["method"], r["stage"], r["acc1"]) for r in table] == [
        ("baseline", "baseline", "87.56"),
        ("s1", "filter", "60.0"),
        ("s1", "data", "80.0"),
        ("s1", "finetune", "84.0"),
        ("planner 2.5x latency (s1+s2)", "filter", "70.0"),
        ("planner 2.5x latency (s1+s2)", "data", "83.0"),
        ("s2", "filter", "50.0"),
        ("s2", "data", "78.0"),
    ]
    s1 = table[1]
    assert s1["baseline_acc1"] == "87.56" and s1["macs_m"] == "20.0" and s1["measured_speedup_cpu"] == "1.6"
    assert s1["cuda_ms"] == "" and table[-1]["cuda_ms"] != "" and s1["lambda_schedule"] == "0.01"
    assert all(r["best_dense"] == r["speedup_vs_best_dense"] == "" for r in table)  # none deployed to targets
    assert "## Deployments" not in md and not (out / "deploy.png").exists()

    plot_path = tmp_path / "docs" / "tradeoff.png"
    assert cli.main([str(sweep), "--out", str(tmp_path / "out2"), "--plot", str(plot_path)]) == 0
    assert plot_path.is_file() and not (tmp_path / "out2" / "report.png").exists()


def test_the_plot_colours_by_method_and_labels_only_the_pareto_points(sweep):
    rows, _ = report_rows.collect([sweep])
    worse = min(rows[1:], key=lambda r: r["acc1"])  # a run, and one slower and less accurate than it
    rows.append({**worse, "label": "dominated", "acc1": worse["acc1"] - 5, "conv_speedup_cpu": 0.9})
    ax = plot.figure(rows).axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:4] == ["baseline", "s1", "s1+s2", "s2"] and legend[4].startswith("Pareto front, ")
    front = plot.pareto(rows)
    assert "dominated" not in [r["label"] for r in front] and len(front) > 1
    assert sorted(t.get_text() for t in ax.texts) == sorted(r["label"] for r in front)


def test_pareto_front_is_best_acc_for_at_least_that_speedup():
    xa = [(1.0, 87.0), (1.5, 86.0), (2.0, 86.5), (3.0, 70.0), (2.5, 60.0)]
    pts = [{"conv_speedup_cpu": x, "acc1": a} for x, a in xa]
    assert [(r["conv_speedup_cpu"], r["acc1"]) for r in plot.pareto(pts)] == [(1.0, 87.0), (2.0, 86.5), (3.0, 70.0)]


def test_errors_name_the_path(tmp_path, capsys):
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    (empty / "0").mkdir()
    (empty / "0" / "results.json").write_text("{}")
    for path in (empty, missing):
        assert cli.main([str(path)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("lrx.report: error:") and str(path) in err
    assert not (empty / "report.md").exists()


def test_complete_but_malformed_file_is_skipped(sweep):
    (sweep / "2" / "results.json").write_text(json.dumps({**PLAN, "final": {}}))
    rows, unfinished = report_rows.collect([sweep])
    assert [r["method"] for r in rows] == ["baseline", "s1", "s2"]
    assert any(p == sweep / "2" / "results.json" and why.startswith("malformed") for p, why in unfinished)


def test_peer_decompositions_get_their_names_and_ranks(tmp_path):
    peers = results(
        None,
        ["conv2", "conv3", "conv4"],
        [("scheme2", 26), ("cp", 32), ("tucker2", [64, 32])],
        {"filter": 70.0},
        2.2,
        target=3,
    )
    tucker = results("tucker2", ["conv3"], [[64, 32]], {"filter": 75.0}, 1.4)
    for i, res in enumerate((peers, tucker)):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(res))
    rows, _ = report_rows.collect([tmp_path])
    by_label = {r["label"]: r for r in rows}
    assert by_label["plan 3x s2+cp+tucker2"]["bases"] == "K26/R32/R64x32"  # methods in layer order
    assert by_label["tucker2 R64x32"]["method"] == "tucker2"


def test_a_reverted_finetuning_is_marked(tmp_path):
    res = {
        **results("scheme2", ["conv2"], [32], {"filter": 70.0, "data": 85.0, "finetune": 40.0}, 2.0),
        "finetune_reverted": True,
    }
    res["final"]["acc1"] = 85.0
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.json").write_text(json.dumps(res))
    _, row = report_rows.collect([tmp_path])[0]
    assert row["acc1"] == 85.0 and row["stages_text"] == "filter 70.00 → data 85.00 → finetune 40.00 (reverted: lower)"


def test_a_plan_in_macs_is_labelled_apart_from_a_measured_one(tmp_path):
    for i, metric in enumerate(["macs", "latency"]):
        res = results(None, ["conv2"], [("scheme2", 26)], {"filter": 70.0}, 2.0, target=3, metric=metric)
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(res))
    rows, _ = report_rows.collect([tmp_path])
    assert sorted(r["label"] for r in rows[1:]) == ["plan 3x MACs s2", "plan 3x s2"]


CONV = {"median": 2.7, "min": 2.61, "max": 2.78, "rounds": [2.61, 2.7, 2.78]}


@pytest.mark.parametrize(
    "retimed",
    [{"convs": {"conv_speedup": CONV}, "network": {"targets": {}}}, {"conv_speedup": CONV}],
    ids=["python -m lrx.retime", "scripts/retime.py, before the sections"],
)
def test_a_run_timed_again_shows_the_median_and_range_of_its_rounds(sweep, retimed):
    (sweep / "1" / RETIMED).write_text(json.dumps(retimed))
    rows, _ = report_rows.collect([sweep])
    retimed = {r["conv_speedup_cpu"]: r["retimed"] for r in rows}
    assert retimed == {1.0: None, 1.6: None, 2.5: None, 2.9: "2.70 [2.61-2.78]"}  # job 1 is S2, at 2.9x
    assert "| 2.70 [2.61-2.78] |" in report_rows.table_markdown(rows)


def test_a_run_timed_again_only_in_its_targets_shows_no_re_timed_conv_speed_up(sweep):
    (sweep / "1" / RETIMED).write_text(json.dumps({"network": {"targets": {}}}))
    rows, _ = report_rows.collect([sweep])
    assert [r["retimed"] for r in rows] == [None] * len(rows)


def test_every_committed_run_is_reported():
    """results/runs holds runs of every round (some with the old decomp keys in their config):
    every one of them is a row, and every method is named by its label."""
    runs = Path(__file__).resolve().parents[1] / "results" / "runs"
    finished, _ = report_rows.find([runs])
    rows, unfinished = report_rows.collect([runs])
    assert finished and not unfinished
    assert len([r for r in rows if r["kind"] == "job"]) == len([1 for _, res in finished if res["layers"]])
    deployed = {
        p.parent for p, res in finished if (p.parent / DEPLOYED).is_file() or (res.get("deploy") or {}).get("targets")
    }
    assert deployed and {r["run"] for r in rows if r["deploy"]} == deployed  # the file beside them is read
    assert all(r["best_dense_text"].startswith(r["best_dense"]) for r in rows if r["deploy"] and r["deploy"]["best"])
    labels = " ".join(r["label"] for r in rows).replace("+", " ").split()
    assert {"s1", "s2", "tucker2", "cp"} <= set(labels)


def test_a_method_is_named_by_the_label_and_letter_its_records_carry(tmp_path):
    res = results("channel_svd", ["conv3"], [40], {"filter": 75.0}, 1.8)
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.json").write_text(json.dumps(res))
    _, row = report_rows.collect([tmp_path])[0]
    assert row["label"] == "csvd K40" and row["method"] == "csvd"


def test_a_runs_conv_speedup_spread_and_unstable_flag_are_shown(tmp_path):
    res = json.loads(json.dumps(S1))
    res["speedup"] |= {"conv_iqr": {"cpu": [1.52, 1.68]}, "unstable": {"cpu": True}}
    (tmp_path / "results.json").write_text(json.dumps(res))
    (row,) = [r for r in report_rows.collect([tmp_path])[0] if r["kind"] == "job"]
    assert row["conv_iqr_cpu"] == "1.52-1.68 unstable" and "| 1.52-1.68 unstable |" in report_rows.table_markdown([row])


def deployment(targets: dict, best: tuple[str, str] | None, reference: float = 87.56) -> dict:
    """``results["deploy"]`` as lrx.deploy.compare writes it, for ``targets`` {name: (dense ms, dense
    acc@1, final ms, final acc@1)} and the ``best`` (dense, final) targets; None: no best dense."""

    def side(ms, acc1):
        return {"ms": ms, "acc1": acc1, "runtime": "test", "check": {"max_rel_error": 0.0, "top1_agreement": 1.0}}

    table = {
        name: {
            "baseline": side(dms, dacc),
            "final": side(fms, facc),
            "speedup": dms / fms,
            "speedup_iqr": [dms / fms - 0.1, dms / fms + 0.1],
            "unstable": False,
        }
        for name, (dms, dacc, fms, facc) in targets.items()
    }
    headline = None
    if best:
        dense, final = table[best[0]]["baseline"], table[best[1]]["final"]
        ratio = dense["ms"] / final["ms"]
        headline = {
            "dense": best[0],
            "final": best[1],
            "dense_ms": dense["ms"],
            "final_ms": final["ms"],
            "dense_acc1": dense["acc1"],
            "final_acc1": final["acc1"],
            "within": 0.5,
            "speedup": ratio,
            "speedup_iqr": [ratio - 0.2, ratio + 0.3],
            "unstable": True,
        }
    return {
        "date": "2026-12-06",
        "machine": "test machine",
        "threads": 2,
        "batch_size": 32,
        "bn_folded": True,
        "reference_acc1": reference,
        "calibration_images": 300,
        "load": {"busy_cores": [0.0], "waited_s": 0.0, "quiet": True},
        "targets": table,
        "best": headline,
        "rounds": 10,
        "seconds": 1.0,
        "busy_cores": 0.0,
    }


TARGETS = {  # openvino-int8's dense network lost too much: torch-bf16 is the best dense
    "torch-fp32": (30.0, 87.56, 12.0, 86.9),
    "torch-bf16": (20.0, 87.3, 8.0, 86.8),
    "openvino-int8": (10.0, 86.0, 5.0, 85.5),
}
DEPLOYMENT = deployment(TARGETS, ("torch-bf16", "openvino-int8"))


def with_deployment(res: dict, deploy: dict | None) -> dict:
    """``res`` deployed to targets: ``results["deploy"]`` (an ONNX export beside it) and the speed-up."""
    best = (deploy or {}).get("best")
    speedup = {
        **res["speedup"],
        "vs_best_dense": best and best["speedup"],
        "vs_best_dense_iqr": best and best["speedup_iqr"],
    }
    return {**res, "deploy": {"onnx": {"exported": True}, **(deploy or {})}, "speedup": speedup}


@pytest.fixture
def deployed_sweep(sweep) -> Path:
    """The sweep with S2 (job 1) deployed to targets in its results.json; S1 and PLAN not."""
    (sweep / "1" / "results.json").write_text(json.dumps(with_deployment(S2, DEPLOYMENT)))
    return sweep


def test_a_deployed_run_shows_its_headline_and_the_others_blank_cells(deployed_sweep):
    rows, _ = report_rows.collect([deployed_sweep])
    base, s1, plan, s2 = rows
    assert (s2["best_dense"], s2["best_dense_ms"], s2["best_dense_acc1"]) == ("torch-bf16", 20.0, 87.3)
    assert (s2["best_final"], s2["best_final_ms"], s2["best_final_acc1"]) == ("openvino-int8", 5.0, 85.5)
    assert s2["vs_best_dense"] == pytest.approx(4.0) and s2["vs_best_dense_iqr"] == "3.80-4.30 unstable"
    assert all(r["deploy"] is None and r["best_dense"] is None and r["vs_best_dense"] is None for r in (base, s1, plan))
    lines = report_rows.table_markdown(rows).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    at = cells[0].index("best dense deployment (ms)")
    assert cells[0][at : at + 4] == [
        "best dense deployment (ms)",
        "best final deployment (ms)",
        "speed-up vs best dense",
        "its IQR (vs best dense)",
    ]
    assert cells[-1][at : at + 4] == ["torch-bf16 20.00", "openvino-int8 5.00", "4.00", "3.80-4.30 unstable"]
    assert all(c[at : at + 4] == ["-"] * 4 for c in cells[2:-1])


def test_the_report_lists_every_target_of_the_deployed_runs(deployed_sweep, tmp_path):
    out, csv_path = tmp_path / "out", tmp_path / "summary.csv"
    assert cli.main([str(deployed_sweep), "--out", str(out), "--csv", str(csv_path)]) == 0
    md = (out / "report.md").read_text()
    section = md[md.index("## Deployments") :]
    assert section.count("### ") == 1 and "### s2 K32: alexnet_cifar on cifar10" in section
    assert str(deployed_sweep / "1") in section and "test machine, 2026-12-06, batch 32, 2 threads" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and "target" not in line]
    assert rows == [
        "| torch-fp32 | 30.00 | 87.56 | 12.00 | 86.90 | 2.50 (2.40-2.60) |",
        "| torch-bf16 (best dense) | 20.00 | 87.30 | 8.00 | 86.80 | 2.50 (2.40-2.60) |",
        "| openvino-int8 (best final) | 10.00 | 86.00 | 5.00 | 85.50 | 2.00 (1.90-2.10) |",
    ]
    assert "**4.00x** (3.80-4.30 unstable)" in section and "within 0.5 point of the reference 87.56%" in section
    with open(csv_path, newline="") as f:
        table = list(csv.DictReader(f))
    s2 = [r for r in table if r["method"] == "s2"]
    assert s2 and all(
        (r["best_dense"], r["best_final"], r["best_dense_ms"]) == ("torch-bf16", "openvino-int8", "20.0") for r in s2
    )
    assert all(r["speedup_vs_best_dense"] == "" for r in table if r["method"] != "s2")


def test_older_runs_are_read_from_the_file_beside_results_json(sweep):
    (sweep / "0" / DEPLOYED).write_text(json.dumps(DEPLOYMENT))  # S1: results.json has no deploy
    other = deployment({"torch-fp32": (30.0, 87.56, 15.0, 87.0)}, ("torch-fp32", "torch-fp32"))
    (sweep / "1").joinpath("results.json").write_text(json.dumps(with_deployment(S2, other)))
    (sweep / "1" / DEPLOYED).write_text(json.dumps(DEPLOYMENT))  # results.json's own wins
    (sweep / "2" / "results.json").write_text(json.dumps({**PLAN, "deploy": {"onnx": {"exported": True}}}))
    rows = {r["label"]: r for r in report_rows.collect([sweep])[0]}
    assert rows["s1 M8"]["deploy"] == DEPLOYMENT and rows["s1 M8"]["best_dense"] == "torch-bf16"
    assert rows["s2 K32"]["best_dense"] == "torch-fp32" and rows["s2 K32"]["vs_best_dense"] == pytest.approx(2.0)
    assert rows["plan 2.5x s1+s2"]["deploy"] is None and rows["plan 2.5x s1+s2"]["best_dense_text"] is None


def test_a_run_deployed_again_by_python_m_lrx_retime_is_read_from_retime_json(sweep):
    other = deployment({"torch-fp32": (30.0, 87.56, 15.0, 87.0)}, ("torch-fp32", "torch-fp32"))
    (sweep / "0" / RETIMED).write_text(json.dumps({"convs": {}, "deploy": DEPLOYMENT}))
    (sweep / "0" / DEPLOYED).write_text(json.dumps(other))  # older: the re-deployment wins
    (sweep / "1" / RETIMED).write_text(json.dumps({"convs": {}}))  # not deployed again
    (sweep / "1" / DEPLOYED).write_text(json.dumps(other))
    rows = {r["label"]: r for r in report_rows.collect([sweep])[0]}
    assert rows["s1 M8"]["deploy"] == DEPLOYMENT and rows["s2 K32"]["deploy"] == other


def test_a_deployment_without_a_best_dense_leaves_the_headline_blank(sweep, tmp_path):
    lossy = {
        **deployment({"openvino-int8": (10.0, 80.0, 5.0, 79.0)}, None),
        "calibration_images": None,  # as a run with no int8 target records it
        "failed": {"torch-bf16": "final network: top-1 agreement 0.5"},
    }
    (sweep / "0" / "results.json").write_text(json.dumps(with_deployment(S1, lossy)))
    rows, _ = report_rows.collect([sweep])
    (s1,) = [r for r in rows if r["label"] == "s1 M8"]
    assert s1["deploy"] == {"onnx": {"exported": True}, **lossy}
    assert all(s1[k] is None for k in report_rows.HEADLINE)
    section = report_rows.deployment_markdown(rows)
    assert "| openvino-int8 | 10.00 | 80.00 | 5.00 | 79.00 | 2.00 (1.90-2.10) |" in section
    assert "no best dense" in section and "calibrated" not in section
    assert "Left out: torch-bf16 (final network: top-1 agreement 0.5)." in section
    assert cli.main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "deploy.png").is_file()


def test_the_deployment_plot_is_written_only_where_a_run_was_deployed(deployed_sweep, tmp_path):
    plot_path = tmp_path / "docs" / "tradeoff.png"
    assert cli.main([str(deployed_sweep), "--out", str(tmp_path / "out"), "--plot", str(plot_path)]) == 0
    image = imread(tmp_path / "docs" / "deploy.png")  # beside the plot
    assert image.shape[0] >= 400 and image.shape[1] >= 400
    explicit = tmp_path / "elsewhere" / "targets.png"
    assert cli.main([str(deployed_sweep), "--out", str(tmp_path / "out"), "--deploy-plot", str(explicit)]) == 0
    assert explicit.is_file() and not (tmp_path / "out" / "deploy.png").exists()
    rows, _ = report_rows.collect([deployed_sweep])
    assert plot.deploy_plot([r for r in rows if not r["deploy"]], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_the_deployment_plot_shows_both_networks_in_every_target(deployed_sweep):
    rows, _ = report_rows.collect([deployed_sweep])
    fig = plot.deploy_figure(rows)
    (ax,) = [a for a in fig.axes if a.axison]  # one panel: one run deployed
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:3] == list(TARGETS) and {"dense network", "final network", "Pareto front"} <= set(legend)
    drawn = {}  # (ms, acc1) -> (marker, colour) of every point drawn
    for c in ax.collections:
        if len(c.get_offsets()) == 1:
            drawn[tuple(c.get_offsets()[0])] = (
                c.get_paths()[0].vertices.round(3).tobytes(),
                tuple(c.get_facecolors()[0]),
            )
    dense = [drawn[(ms, acc1)] for ms, acc1, _, _ in TARGETS.values()]
    final = [drawn[(ms, acc1)] for _, _, ms, acc1 in TARGETS.values()]
    assert (
        len({m for m, _ in dense}) == len({m for m, _ in final}) == 1 and dense[0][0] != final[0][0]
    )  # marker per side
    assert [c for _, c in dense] == [c for _, c in final] and len({c for _, c in dense}) == len(
        TARGETS
    )  # colour per target
    (ring,) = [c for c in ax.collections if c.get_gid() == "pareto"]
    front = [(float(x), float(y)) for x, y in ring.get_offsets()]
    assert front == [
        (5.0, 85.5),
        (8.0, 86.8),
        (12.0, 86.9),
        (20.0, 87.3),
        (30.0, 87.56),
    ]  # dense int8 beaten by final bf16
    assert sorted(t.get_text() for t in ax.texts) == ["best dense", "best final"]


def test_pareto_front_by_latency():
    pts = [{"ms": ms, "acc1": a} for ms, a in [(10.0, 86.0), (5.0, 85.5), (8.0, 85.0), (20.0, 87.3), (30.0, 87.0)]]
    front = plot.pareto(pts, speed=lambda p: -p["ms"])
    assert [(p["ms"], p["acc1"]) for p in front] == [(20.0, 87.3), (10.0, 86.0), (5.0, 85.5)]


FLAGS = {"avx2": True, "avx512_f": True, "avx512_vnni": True, "avx512_bf16": False, "amx_int8": False}


def recorded(res: dict, command: str) -> dict:
    """``res`` as lrx writes it now: with its command, date, machine and CPU flags."""
    return {
        **res,
        "command": command,
        "date": "2026-12-08T10:00:00+00:00",
        "machine": "Xeon, 2 cores",
        "cpu_flags": FLAGS,
    }


def test_each_row_names_the_machine_date_and_command_or_says_they_were_not_recorded(sweep):
    (sweep / "0" / "results.json").write_text(json.dumps(recorded(S1, "python -m lrx.train decomp.bases=8")))
    (sweep / "1" / "train.log").write_text("no stamp\n[2026-12-01 09:00:00,000][lrx][INFO] - start\n")
    (sweep / "2" / DEPLOYED).write_text(json.dumps(DEPLOYMENT))  # made later, by another command
    rows = {r["label"]: r for r in report_rows.collect([sweep])[0]}
    s1, s2, plan = rows["s1 M8"], rows["s2 K32"], rows["plan 2.5x s1+s2"]
    assert s1["where"] == {
        "machine": "Xeon, 2 cores",
        "flags": "avx2 avx512_f avx512_vnni",
        "date": "2026-12-08",
        "command": "python -m lrx.train decomp.bases=8",
    }
    assert s2["where"] == {
        "machine": "not recorded",
        "flags": "not recorded",
        "date": "2026-12-01",
        "command": "not recorded",
    }
    assert plan["where"]["date"] == "not recorded"
    assert plan["deploy_where"] == {
        "machine": "test machine",
        "flags": "not recorded",
        "date": "2026-12-06",
        "command": "not recorded",
    }


def test_the_best_within_a_point_against_the_best_dense_deployment_per_model(sweep):
    # S2 loses 1.5 points against its best dense (85.5 vs 87.0), PLAN 0.5 and S1 0.2
    close = deployment({"torch-fp32": (30.0, 87.3, 10.0, 86.8)}, ("torch-fp32", "torch-fp32"))
    closer = deployment({"torch-fp32": (30.0, 87.3, 15.0, 87.1)}, ("torch-fp32", "torch-fp32"))
    lossy = deployment({"openvino-int8": (10.0, 87.0, 2.0, 85.5)}, ("openvino-int8", "openvino-int8"))
    command = "python -m lrx.train experiment=plan_mix"
    (sweep / "0" / "results.json").write_text(json.dumps(with_deployment(S1, closer)))
    (sweep / "1" / "results.json").write_text(json.dumps(with_deployment(S2, lossy)))
    (sweep / "2" / "results.json").write_text(json.dumps(recorded(with_deployment(PLAN, close), command)))
    rows, _ = report_rows.collect([sweep])
    (line,) = [line for line in reference.best_against_dense(rows[1:]).splitlines() if "alexnet_cifar" in line]
    assert "| plan 2.5x s1+s2 |" in line and "| **3.00x** (2.80-3.30 unstable) |" in line and "| 0.50 |" in line
    assert f"| test machine | not recorded | 2026-12-06 | `{sweep / '2'}` | `{command}` |" in line


def test_a_model_without_a_network_within_a_point_is_named_with_its_fewest_points_lost(sweep):
    lossy = deployment({"openvino-int8": (10.0, 87.0, 2.0, 85.5)}, ("openvino-int8", "openvino-int8"))
    (sweep / "1" / "results.json").write_text(json.dumps(with_deployment(S2, lossy)))
    text = reference.best_against_dense(report_rows.collect([sweep])[0][1:])
    assert "|" not in text and "alexnet_cifar on cifar10 (test machine): none within a point" in text
    assert f"the fewest points lost, 1.50, at 5.00x (`{sweep / '1'}`)" in text


def test_methods_at_equal_macs_are_the_runs_planned_for_one_mac_ratio_with_different_methods(tmp_path):
    runs = {
        "s1_3x": results("scheme1", ["conv2"], [8], {"filter": 80.0}, 1.2, target=3, metric="macs"),
        "s2_3x": results("scheme2", ["conv2"], [16], {"filter": 86.0}, 2.0, target=3, metric="macs"),
        "s2_6x": results("scheme2", ["conv2"], [8], {"filter": 84.0}, 3.0, target=6, metric="macs"),
        "s2_latency": results("scheme2", ["conv2"], [8], {"filter": 84.0}, 3.0, target=3),
    }
    for name, res in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
    lines = reference.equal_macs(report_rows.collect([tmp_path])[0][1:]).splitlines()[2:]
    assert [line.split(" | ")[2:5] for line in lines] == [["3x", "s2", "4.64"], ["3x", "s1", "4.64"]]
    assert "| 86.00 (-1.56) | 2.00 | 1.80 |" in lines[0]


def test_structures_at_the_same_budget_set_each_set_of_methods_beside_the_others(tmp_path):
    def run(methods, bases, ms, acc, epochs=8):
        res = results("scheme2", ["conv2", "conv3"], bases, {"finetune": acc}, 2.0, target=3)
        res["plan"] |= {"runtime": "openvino", "precision": "int8"}
        res["config"] |= {"planner": {"methods": methods}, "finetune": {"epochs": epochs, "loss": "kd"}}
        best = ("openvino-int8", "openvino-int8")
        return with_deployment(res, deployment({"openvino-int8": (20.0, 87.5, ms, acc)}, best))

    runs = {
        "mix": run(["scheme2", "prune"], [32, 40], 5.0, 86.8),
        "lowrank": run(["scheme2"], [24, 40], 8.0, 86.9),
        "prune": run(["prune"], [24, 64], 10.0, 86.0),
        "mix_4_epochs": run(["scheme2", "prune"], [32, 40], 5.0, 86.0, epochs=4),
    }
    pruned = {"method": "prune", "label": "prune", "letter": "N"}  # as lrx.compress.prune.record writes them
    for name, layers in [("mix", [0]), ("prune", [0, 1]), ("mix_4_epochs", [0])]:
        for i in layers:
            runs[name]["layers"][i] |= pruned
    runs["lowrank"]["layers"][0]["kept"] = False  # the guard put conv2 back
    for name, res in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
    lines = reference.same_budget(report_rows.collect([tmp_path])[0][1:]).splitlines()[2:]
    assert [line.split(" | ")[1:5] for line in lines] == [
        ["3x in openvino int8", "8 kd", "scheme2+prune", "conv2 prune N32, conv3 s2 K40"],
        ["3x in openvino int8", "8 kd", "scheme2", "conv2 dense, conv3 s2 K40"],
        ["3x in openvino int8", "8 kd", "prune", "conv2 prune N24, conv3 prune N64"],
    ]
    assert "| openvino-int8 5.00 ms, 86.80% | 0.70 | **4.00x**" in lines[0]


def test_the_planner_table_sets_each_prediction_beside_what_was_measured(tmp_path):
    res = results("scheme2", ["conv2"], [16], {"filter": 86.0}, 2.9, target=3)
    res["plan"] |= {"predicted_conv_speedup": 3.01, "closed_loop": [{"measured": 2.7}, {"measured": 2.95}]}
    deployed = with_deployment(res, deployment({"torch-fp32": (30.0, 87.3, 12.0, 86.8)}, ("torch-fp32", "torch-fp32")))
    (tmp_path / "results.json").write_text(json.dumps(deployed))
    (line,) = reference.planner(report_rows.collect([tmp_path])[0][1:]).splitlines()[2:]
    assert line.startswith("| alexnet_cifar | 3x | torch fp32 | 3.01 | 2.95 (round 2) | 2.90 | 2.50 | 86.00 (-1.56) |")
    res["plan"]["closed_loop"][-1]["measures"] = "network"
    (tmp_path / "results.json").write_text(json.dumps(res))
    (line,) = reference.planner(report_rows.collect([tmp_path])[0][1:]).splitlines()[2:]
    assert "| 3.01 | 2.95 (round 2, whole network) |" in line
    res["plan"] |= {"runtime": "openvino", "precision": "int8", "closed_loop": []}
    (tmp_path / "results.json").write_text(json.dumps(res))
    (line,) = reference.planner(report_rows.collect([tmp_path])[0][1:]).splitlines()[2:]
    assert "| openvino int8 | 3.01 | - | not measured | - |" in line


def test_each_machine_has_its_dates_runs_and_fastest_network_within_a_point(sweep):
    (sweep / "0" / "results.json").write_text(json.dumps(recorded(S1, "python -m lrx.train")))
    table = reference.each_machine(report_rows.collect([sweep])[0][1:])
    assert "| Xeon, 2 cores | avx2 avx512_f avx512_vnni | 2026-12-08 | 1 | alexnet_cifar | - | - |" in table
    assert "| not recorded | not recorded | not recorded | 2 | alexnet_cifar | - | - |" in table


def test_the_committed_reference_page_is_what_the_report_writes_from_the_committed_runs(monkeypatch):
    """results/runs/report.md is regenerated by ``python -m lrx.report results/runs``, never edited."""
    monkeypatch.chdir(REPO)
    runs = [Path("results/runs")]
    rows, unfinished = report_rows.collect(runs)
    assert (REPO / "results" / "runs" / "report.md").read_text() == cli.markdown(rows, unfinished, runs)


def test_each_model_lists_every_run_on_its_baseline_fastest_first(deployed_sweep):
    text = reference.each_model(report_rows.collect([deployed_sweep])[0])
    assert text.startswith("### alexnet_cifar on cifar10, baseline 87.56%\n\n92.78 M MACs, 0.934 M params")
    runs = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and "network" not in line]
    assert runs == ["| s2 K32", "| plan 2.5x s1+s2", "| s1 M8"]
    assert "| 4.00 (torch-bf16 → openvino-int8; test machine, 2026-12-06) |" in text
