"""Bad input fails before any work: every invalid setting is refused by prepare() (the config
schema first, then the data, the checkpoint, the layers and bases, the reach of a MAC target) in
one line that names the key and the value, with nothing written; a broken network (NaN/Inf) is
never reported; files are written readable and a run that cannot write says so in one line."""

import os
import re
import stat
import subprocess

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import open_dict
from torch import nn

from lrx.compress.planner import check_request
from lrx.io import WriteError, check_writable, save_torch, write_json
from lrx.lowrank import DecompositionError
from lrx.models import AlexNetCIFAR
from lrx.results.files import MODEL, RESULTS
from lrx.run import stages
from lrx.run.baseline import NonFiniteError, check_finite_network, get_baseline, recipe_key
from lrx.run.job import prepare
from lrx.run.stages import run
from tests.conftest import REPO, compose_cfg, run_train
from tests.helpers.data import smoke_args

SHIPPED = REPO / "checkpoints" / "alexnet_cifar.pt"


def _with(state: dict, key: str, index, value) -> dict:
    state[key][index] = value
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Files that are not usable baselines, by name."""
    d = tmp_path_factory.mktemp("bad-files")
    (d / "notes.txt").write_text("hello world\n")
    (d / "config.yaml").write_text("lrx: error: 101\nlayers: [conv2]\n")
    (d / "empty.pt").write_bytes(b"")
    (d / "folder.pt").mkdir()
    torch.save([1, 2], d / "list.pt")
    torch.save(3, d / "int.pt")
    torch.save({"conv1.weight": 1.0}, d / "floats.pt")
    torch.save({"state_dict": "weights"}, d / "nested.pt")
    torch.save(_with(AlexNetCIFAR().state_dict(), "conv1.weight", (0, 0, 0, 0), float("nan")), d / "nan.pt")
    torch.save(_with(AlexNetCIFAR().state_dict(), "bn1.running_var", 3, float("inf")), d / "inf_bn.pt")
    return d


def p(overrides: str, *words: str, error: type = ValueError):
    """A case: the overrides, the words its message must hold (the full key and the bad value)."""
    return pytest.param(overrides.split(), words, error, id=overrides)


CASES = [
    # decomp (Scheme 1 on conv2 by default)
    p("decomp.method=scheme9", "decomp.method='scheme9'", "scheme2"),
    p("decomp.bases=0", "decomp.bases=0", "[1, 25]"),
    p("decomp.bases=26", "decomp.bases=26", "[1, 25]"),
    p("decomp.layers=[conv2,conv3] decomp.bases=[4,4,4]", "decomp.bases=[4, 4, 4]", "length 3"),
    p("decomp.layers=[conv9]", "decomp.layers=['conv9']", "valid conv layers"),
    p("decomp.layers=[bn1]", "decomp.layers=['bn1']", "BatchNorm2d"),
    p("decomp.lam.schedule=weird", "decomp.lam.schedule='weird'", "'ascending'"),
    p("decomp.lam.start=-0.1", "decomp.lam.start=-0.1", ">= 0"),
    p("decomp.lam.schedule=ascending decomp.lam.steps=0", "decomp.lam.steps=0", ">= 1"),
    p("decomp=scheme2 decomp.layers=[conv3] decomp.bases=385", "decomp.bases=385", "[1, 384]"),
    p("decomp=tucker2 decomp.bases=weird", "decomp.bases='weird'", "vbmf"),
    p("decomp=cp decomp.bases=-1", "decomp.bases=-1", "method 'cp'"),
    p("decomp=channel_svd decomp.bases=1.5", "decomp.bases=1.5", "method 'channel_svd'"),
    p("decomp=none +decomp.bases=8", "decomp.bases", "decomp=none"),
    p("decomp=none decomp.bases=8", "decomp.bases", error=ConfigCompositionException),
    # planner (decomp=plan)
    p("decomp=plan planner.target_speedup=1", "planner.target_speedup=1", "> 1"),
    p("decomp=plan planner.metric=flops", "planner.metric='flops'", "latency"),
    p("decomp=plan planner.error=mse", "planner.error='mse'", "kl"),
    p("decomp=plan planner.samples=0", "planner.samples=0", ">= 1"),
    p("decomp=plan planner.metric=latency planner.closed_loop_rounds=-1", "planner.closed_loop_rounds=-1", ">= 0"),
    p("decomp=plan planner.methods=[]", "planner.methods=[]", "non-empty"),
    p("decomp=plan planner.methods=[scheme9]", "planner.methods=['scheme9']", "tucker2"),
    p("decomp=plan +planner.options.scheme9.lam=1", "planner.options='scheme9'", "keyed by method"),
    # a MAC target out of reach of the cheapest candidates (a latency target needs timings: the planner decides)
    p(
        "decomp=plan planner.metric=macs planner.target_speedup=1000",
        "planner.target_speedup=1000",
        "out of reach",
        "at most",
    ),
    p(
        "decomp=plan planner.metric=macs decomp.layers=[conv2] planner.target_speedup=3",
        "planner.target_speedup=3",
        "(not selected)",
    ),
    p("planner.target_speedup=3", "planner", error=ConfigCompositionException),
    # data_recon (experiment=smoke selects data_recon=default)
    p("data_recon.mode=weird", "data_recon.mode='weird'", "asymmetric"),
    p("decomp.bases=25 data_recon.mode=weird", "data_recon.mode='weird'"),  # the guard would put conv2 back
    p("data_recon.optimizer=rmsprop", "data_recon.optimizer='rmsprop'", "adam"),
    p("data_recon.batches=0", "data_recon.batches=0", ">= 1"),
    p("data_recon.batches=3 data_recon.holdout_batches=3", "data_recon.holdout_batches=3", "batches=3"),
    p("data_recon.lr=0", "data_recon.lr=0", "> 0"),
    p("data_recon.lstsq=maybe", "data_recon.lstsq=maybe", "not a valid bool", error=ConfigCompositionException),
    p("data_recon.lstsq=false data_recon.steps=0", "data_recon.lstsq=false", "data_recon.steps=0"),
    # finetune (experiment=smoke selects finetune=kd)
    p("finetune.loss=weird", "finetune.loss='weird'", "kd"),
    p("finetune.epochs=0", "finetune.epochs=0", ">= 1"),
    p("finetune.temperature=0", "finetune.temperature=0", "> 0"),
    p("finetune.kd_alpha=2", "finetune.kd_alpha=2", "[0, 1]"),
    p("finetune.optimizer=null finetune.scheduler=null", "finetune.optimizer=None", "_target_"),
    p("finetune.optimizer=null", "finetune.scheduler.max_lr", "cannot be resolved", "optimizer"),
    p("finetune=ce finetune.temperature=2", "finetune.temperature", error=ConfigCompositionException),
    # latency, and the callback that times the network like it
    p("latency.batch_sizes=[0]", "latency.batch_sizes=[0]", ">= 1"),
    p("latency.batch_sizes=[]", "latency.batch_sizes=[]", "non-empty"),
    p("latency.estimator.min_rounds=1", "latency.estimator.min_rounds=1", ">= 2"),
    p(
        "latency.estimator.min_rounds=6 latency.estimator.max_rounds=4",
        "latency.estimator.max_rounds=4",
        ">= latency.estimator.min_rounds=6",
    ),
    p("latency.estimator.block_s=0", "latency.estimator.block_s=0", "> 0"),
    p("latency.estimator.warmup_s=-1", "latency.estimator.warmup_s=-1", ">= 0"),
    p("+latency.estimator.repeats=3", "latency.estimator.repeats is not a setting", "min_rounds"),
    p("latency.threads=[0]", "latency.threads=[0]", "null (torch's threads) or a non-empty list of integers from 1"),
    p("latency.threads=[1,999]", "latency.threads=[1, 999]", "integers from 1 to"),
    p("latency.decide_at.busy=999", "latency.decide_at.busy=999", "fewer than the cores"),
    p("latency.threads=2", "latency.threads=2", "not a ListConfig, list or tuple", error=ConfigCompositionException),
    p("latency.decide_at.batch_size=8", "latency.decide_at.batch_size=8", "measured latency.batch_sizes: [1, 32]"),
    p("latency.threads=[1,2] latency.decide_at.threads=4", "latency.decide_at.threads=4", "latency.threads: [1, 2]"),
    p("latency.quiet_wait_s=-1", "latency.quiet_wait_s=-1", ">= 0"),
    p("latency.memory_format=weird", "latency.memory_format='weird'", "channels_last"),
    p("latency.memory_format=weird callbacks.cost=null", "latency.memory_format='weird'", "channels_last"),
    p("latency.guard=maybe", "latency.guard=maybe", "not a valid bool", error=ConfigCompositionException),
    p("latency.fold_bn=maybe", "latency.fold_bn=maybe", "not a valid bool", error=ConfigCompositionException),
    p("latency.runtime=tvm", "latency.runtime='tvm'", "torch, onnxruntime"),
    p("callbacks.cost.batch_size=0", "callbacks.cost.batch_size=0", ">= 1"),
    p("callbacks.cost.estimator=5", "callbacks.cost.estimator=5", "a mapping with the keys warmup_s"),
    p("+callbacks.extra=3", "callbacks.extra=3", "_target_"),
    # data (checked by the data module's constructor, then its setup, which reads the files)
    p("data.val_size=0", "data.val_size=0", "1 .. 49999"),
    p("data.val_size=100", "data.val_size=100", "100 training images"),
    p("data.eval_batch_size=0", "data.eval_batch_size=0", ">= 1"),
    p("data.batch_size=0", "data.batch_size=0", ">= 1"),
    p("data.num_workers=-1", "data.num_workers=-1", ">= 0"),
    p("data.split_seed=-1", "data.split_seed=-1", ">= 0"),
    p("data.root=/nonexistent", "data.root", "'/nonexistent'", error=FileNotFoundError),
    # model, trainer, seed
    p("model.input_size=0", "model.input_size=0", ">= 1"),
    p("model.epochs=0", "model.epochs=0", ">= 1"),
    p("model=torchvision model.arch=resnet9000", "model.arch='resnet9000'", "resnet18"),
    p("trainer.max_epochs=-1", "trainer.max_epochs=-1", ">= 1"),
    p("trainer.limit_val_batches=0", "trainer.limit_val_batches=0", "fraction"),
    p("trainer.limit_train_batches=1.5", "trainer.limit_train_batches=1.5", "fraction"),
    p("seed=-1", "seed=-1", ">= 0"),
    p("seed=abc", "seed='abc'", ">= 0"),
    # paths and the baseline
    p(
        "paths.baseline_cache=null baseline.cache_dir=${{paths.baseline_cache}}",
        "baseline.cache_dir cannot be resolved",
        "'None'",
        "type 'str'",
    ),
    p("paths.data=/nonexistent data.root=${{paths.data}}", "data.root", "'/nonexistent'", error=FileNotFoundError),
    p("baseline.ckpt=123", "baseline.ckpt='123'", "does not exist", "state_dict"),  # a path, typed str
    p("baseline.ckpt={files}/missing.pt", "baseline.ckpt='{files}/missing.pt'", "does not exist", "'state_dict'"),
    p("baseline.ckpt={files}/folder.pt", "baseline.ckpt='{files}/folder.pt'", "is a directory"),
    p("baseline.ckpt={files}/notes.txt", "baseline.ckpt='{files}/notes.txt'", "cannot be read", "state_dict"),
    p("baseline.ckpt={files}/config.yaml", "baseline.ckpt='{files}/config.yaml'", "cannot be read", "state_dict"),
    p("baseline.ckpt={files}/empty.pt", "baseline.ckpt='{files}/empty.pt'", "cannot be read", "state_dict"),
    p("baseline.ckpt={files}/list.pt", "baseline.ckpt='{files}/list.pt'", "type list", "state_dict"),
    p("baseline.ckpt={files}/int.pt", "baseline.ckpt='{files}/int.pt'", "type int", "state_dict"),
    p("baseline.ckpt={files}/floats.pt", "baseline.ckpt='{files}/floats.pt'", "'conv1.weight' is of type float"),
    p("baseline.ckpt={files}/nested.pt", "baseline.ckpt='{files}/nested.pt'", "type str under 'state_dict'"),
    p(
        "baseline.ckpt={files}/nan.pt",
        "baseline.ckpt={files}/nan.pt",
        "conv1.weight holds 1 NaN/Inf",
        error=NonFiniteError,
    ),
    p("baseline.ckpt={files}/inf_bn.pt", "bn1.running_var holds 1 NaN/Inf", error=NonFiniteError),
    # pruning, and the planner's pruning candidates
    p("decomp=prune decomp.ratio=1.5", "decomp.ratio=1.5", "(0, 1)"),
    p("decomp=prune decomp.criterion=l3", "decomp.criterion='l3'", "l1, l2, taylor"),
    p("decomp=prune decomp.rank_multiple=64", "decomp.rank_multiple=64", "48 channels", "'conv1'"),
    p(
        "model=resnet20_cifar decomp=prune decomp.layers=[stage1.block1.conv2]",
        "cannot prune 'stage1.block1.conv2'",
        "residual addition",
        "stage1.block1.conv1",
    ),
    p("decomp=plan planner.speedups=[2,1]", "planner.speedups=[2.0, 1.0]", "numbers > 1"),
    p("decomp=plan planner.speedups=[]", "planner.speedups=[]", "numbers > 1"),
    p("decomp=plan planner.methods=[prune] planner.prune.ratios=[0.5,1.2]", "planner.prune.ratios=1.2", "(0, 1)"),
    p("decomp=plan planner.methods=[prune] planner.prune.criterion=taylor", "planner.prune.criterion='taylor'"),
    p(
        "decomp=plan planner.methods=[prune] data_recon=default data_recon.mode=symmetric",
        "data_recon.mode='symmetric'",
        "asymmetric",
    ),
    p(
        "decomp=plan latency.runtime=onnxruntime deploy.targets=[torch-fp32]",
        "latency.runtime=onnxruntime latency.precision=auto",
        "torch-fp32",
    ),
    # deploy
    p("deploy.targets=[openvino-fp16]", "deploy.targets: 'openvino-fp16' is not a deployment target", "openvino-int8"),
    p("deploy.targets=fast", "deploy.targets='fast'", '"auto"', "torch-bf16"),
    p("deploy.targets=[torch-fp32,torch-fp32]", "deploy.targets=['torch-fp32', 'torch-fp32']", "distinct"),
    p("deploy.targets=[openvino-int8] deploy.calibration_images=0", "deploy.calibration_images=0", "openvino-int8"),
    p("deploy.serving=fast", "deploy.serving='fast'", "default, auto"),
    p("deploy.serving_busy=999", "deploy.serving_busy=999", "fewer than the cores"),
    p("deploy.serving=auto deploy.targets=[]", "deploy.serving='auto'", "with deploy.targets"),
]


@pytest.mark.parametrize("overrides, words, error", CASES)
def test_prepare_refuses_a_bad_setting_in_one_line_naming_it_and_writes_nothing(
    tmp_path, tiny_root, files, overrides, words, error
):
    run_dir, cache = tmp_path / "run", tmp_path / "baselines"
    overrides = [o.format(files=files) for o in overrides]
    with pytest.raises(error) as info:
        prepare(compose_cfg([*smoke_args(tiny_root), f"baseline.cache_dir={cache}", *overrides], run_dir))
    e = info.value
    message = f"{e} {e.__cause__}" if error is ConfigCompositionException else str(e)
    assert all(w.format(files=files) in message for w in words), message
    assert error is ConfigCompositionException or "\n" not in message
    assert not run_dir.exists() and not cache.exists()


def test_the_table_spans_every_group():
    keys = {o.split("=")[0].lstrip("+~").split(".")[0] for case in CASES for o in case.values[0]}
    assert {"decomp", "data_recon", "finetune", "latency", "callbacks", "data", "model", "trainer"} <= keys
    assert {"paths", "baseline", "seed"} <= keys and len(CASES) >= 30


def test_the_reach_of_a_mac_target_is_the_plans_own(tmp_path):
    net, layers = AlexNetCIFAR(), ["conv2", "conv3"]
    with pytest.raises(DecompositionError) as info:
        check_request(net, layers, 100.0, "macs", ["scheme2"], input_size=32)
    reach = float(re.search(r"at most ([0-9.]+)x", str(info.value)).group(1))
    check_request(net, layers, reach * 0.99, "macs", ["scheme2"], input_size=32)  # just within reach
    with pytest.raises(DecompositionError, match="out of reach"):
        check_request(net, layers, reach * 1.01, "macs", ["scheme2"], input_size=32)
    check_request(net, layers, 100.0, "latency", ["scheme2"], input_size=32)  # latency: the timings decide


# --- broken networks: NaN/Inf in weights, buffers or logits --------------------------------------


class Overflowing(nn.Module):
    """Finite weights whose logits overflow to Inf."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 2)
        nn.init.constant_(self.fc.weight, 3e38)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_check_finite_names_the_tensor_or_the_logits():
    net = AlexNetCIFAR()
    check_finite_network(net, "baseline", torch.randn(2, 3, 32, 32))
    net.bn2.running_mean[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^baseline: bn2.running_mean holds 1 NaN/Inf value\(s\)"):
        check_finite_network(net, "baseline")
    with pytest.raises(FloatingPointError, match="its logits on 2 validation images hold 4 NaN/Inf"):
        check_finite_network(Overflowing(), "final network", torch.ones(2, 3, 4, 4))


def _job(tmp_path, *overrides):
    """A checked job on the tiny data, its baseline cached under tmp_path, its config as lrx.train gets it."""
    cfg = compose_cfg([f"baseline.cache_dir={tmp_path / 'baselines'}", *overrides], tmp_path / "run")
    with open_dict(cfg):
        del cfg["hydra"]
    return prepare(cfg)


def _timings(*args, **kwargs) -> dict:
    """What run() measures, made up: one batch size at torch's thread count, nothing replaced."""
    same = {"speedup": 1.0, "speedup_iqr": [1.0, 1.0], "unstable": False}
    point = {
        "model_ms": {"baseline": 1.0, "approx": 1.0},
        **{f"{k}_{v}": w for k in ("conv", "model") for v, w in same.items()},
    }
    return {"cpu": {torch.get_num_threads(): {1: point}}}


def test_a_cached_baseline_with_nan_stops_the_run_before_it_is_evaluated(tmp_path, tiny_root, monkeypatch):
    job = _job(tmp_path, *smoke_args(tiny_root), "decomp=none")
    key = recipe_key(job.cfg)
    state = _with(AlexNetCIFAR().state_dict(), "conv3.weight", (1, 2, 0, 0), float("inf"))
    save_torch(tmp_path / "baselines" / key / "baseline.pt", {"key": key, "meta": {}, "state_dict": state})
    monkeypatch.setattr(stages, "_accuracies", lambda *a: pytest.fail("a broken baseline was evaluated"))
    with pytest.raises(NonFiniteError, match=r"baseline \(cache .*baseline.pt\): conv3.weight holds 1 NaN/Inf"):
        run(job, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_diverged_training_is_not_cached(tmp_path, tiny_root, monkeypatch):
    job = _job(tmp_path, *smoke_args(tiny_root), "decomp=none")

    def diverged(cfg, net, *args):
        nn.init.constant_(net.fc.weight, float("nan"))
        return {}

    monkeypatch.setattr("lrx.run.baseline.train", diverged)
    with pytest.raises(NonFiniteError, match=r"just trained \(not cached\): fc.weight"):
        get_baseline(job.cfg, job.net, job.datamodule)
    assert not list((tmp_path / "baselines").rglob("baseline.pt"))


def test_a_final_network_broken_by_a_stage_is_never_timed_or_written(tmp_path, tiny_root, monkeypatch):
    tiny = [f"data.root={tiny_root}", "data.val_size=10", "logger=none"]  # no data reconstruction, no fine-tuning
    here = ["latency.runtime=torch", "latency.precision=fp32"]  # where to time is not this test's: no target timed
    job = _job(tmp_path, *tiny, *here, "decomp=scheme2", f"baseline.ckpt={SHIPPED}")

    def breaks(s):
        nn.init.constant_(s.approx.conv2.vertical.weight, float("nan"))

    monkeypatch.setattr(stages, "_guard", breaks)
    monkeypatch.setattr(stages, "_timings", lambda *a, **k: pytest.fail("a broken network was timed"))
    with pytest.raises(NonFiniteError, match=r"^final network: conv2.vertical.weight holds \d+ NaN/Inf"):
        run(job, tmp_path / "run")
    assert not (tmp_path / "run" / MODEL).exists() and not (tmp_path / "run" / RESULTS).exists()


# --- writing: permissions, write access, a failed final write -------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_written_files_get_the_permissions_open_would_give(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        paths = [write_json(tmp_path / RESULTS, {"a": 1}), save_torch(tmp_path / MODEL, {"w": torch.zeros(2)})]
    finally:
        os.umask(old)
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [mode, mode]
    assert sorted(x.name for x in tmp_path.iterdir()) == [MODEL, RESULTS]  # no temp file left


def test_a_folder_that_cannot_be_written_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(WriteError, match=f"cannot create a file in {tmp_path / 'file' / 'run'}: "):
        check_writable(tmp_path / "file" / "run")
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'file' / RESULTS}: "):
        write_json(tmp_path / "file" / RESULTS, {})
    assert check_writable(tmp_path / "new") == tmp_path / "new" and list((tmp_path / "new").iterdir()) == []


@pytest.mark.slow
def test_a_failed_final_write_names_the_file_and_leaves_no_results(tmp_path, tiny_root, monkeypatch):
    job = _job(tmp_path, *smoke_args(tiny_root), "decomp=none", f"baseline.ckpt={SHIPPED}", "latency.batch_sizes=[1]")
    monkeypatch.setattr(stages, "_timings", _timings)
    (tmp_path / "run" / MODEL / "taken").mkdir(parents=True)  # model.pt is a folder: it cannot be replaced
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'run' / MODEL}: "):
        run(job, tmp_path / "run")
    assert not (tmp_path / "run" / RESULTS).exists()


# --- the CLI: one line, before any training or solving -------------------------------------------


def _nan_copy_of_the_shipped_checkpoint(path):
    ckpt = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    ckpt["state_dict"]["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(ckpt, path)


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("lrx: error: ")]
    return line


def _nothing_done(tmp_path, run_dir) -> None:
    assert not list(tmp_path.rglob(RESULTS)) and not list(tmp_path.rglob(MODEL))
    log = run_dir / "train.log"
    assert not log.exists() or "training baseline" not in log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, words",
    [
        (["decomp=none", "baseline.ckpt={tmp}/nan.pt"], ["baseline.ckpt=", "conv1.weight holds 1 NaN/Inf value(s)"]),
        (["baseline.ckpt={tmp}/notes.txt"], ["baseline.ckpt=", "notes.txt", "cannot be read", "'state_dict'"]),
        (["data.val_size=0"], ["data.val_size=0 is invalid"]),
        (["latency.batch_sizes=[]"], ["latency.batch_sizes=[] is invalid"]),
    ],
    ids=["nan-in-conv1", "text-checkpoint", "data-val-size", "latency-batch-sizes"],
)
def test_the_cli_refuses_bad_input_in_one_line_before_any_work(tmp_path, tiny_root, args, words):
    _nan_copy_of_the_shipped_checkpoint(tmp_path / "nan.pt")
    (tmp_path / "notes.txt").write_text("a baseline? no\n")
    run_dir = tmp_path / "run"
    base = [*smoke_args(tiny_root), f"hydra.run.dir={run_dir}", f"baseline.cache_dir={tmp_path / 'baselines'}"]
    line = _one_error_line(run_train([*base, *(a.format(tmp=tmp_path) for a in args)], cwd=tmp_path, timeout=300))
    assert all(w in line for w in words), line
    _nothing_done(tmp_path, run_dir)
    assert not (tmp_path / "baselines").exists()


@pytest.fixture
def unwritable(tmp_path):
    """A folder nobody can create files in (root too: made immutable where the file system allows)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        try:
            check_writable(folder)
            pytest.skip("cannot make a folder unwritable here")
        except WriteError:
            pass
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.mark.slow
@pytest.mark.parametrize(
    "how",
    [
        ["++hydra.callbacks.write_access._target_=lrx.run.train.WriteAccess"],  # before Hydra writes its own files
        ["hydra.output_subdir=null", "hydra/job_logging=stdout"],  # Hydra writes nothing there: lrx.train checks
    ],
    ids=["hydra-callback", "lrx-train"],
)
def test_an_unwritable_run_dir_is_one_line_naming_it(tmp_path, tiny_root, unwritable, how):
    args = [*smoke_args(tiny_root), f"hydra.run.dir={unwritable}", f"baseline.cache_dir={tmp_path / 'baselines'}"]
    line = _one_error_line(run_train([*args, *how], cwd=tmp_path, timeout=300))
    assert f"cannot create a file in {unwritable}" in line, line
    _nothing_done(tmp_path, unwritable)
    assert not (tmp_path / "baselines").exists()


@pytest.mark.slow
def test_a_failed_final_write_is_logged_and_one_line(tmp_path, tiny_root):
    run_dir = tmp_path / "run"
    (run_dir / MODEL / "taken").mkdir(parents=True)
    args = [*smoke_args(tiny_root), "decomp=none", f"baseline.ckpt={SHIPPED}", "latency.batch_sizes=[1]"]
    line = _one_error_line(run_train([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=300))
    assert f"cannot write {run_dir / MODEL}" in line, line
    assert f"cannot write {run_dir / MODEL}" in (run_dir / "train.log").read_text()
    assert not (run_dir / RESULTS).exists()
