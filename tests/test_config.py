"""Config composition: every group option composes, extends its schema (lrx/run/schema.py) and
instantiates, a value of the wrong type or range is refused naming the key, the value and what is
valid, the user's own command resolves to the earlier attempt's row, the baseline defaults to the
model's shipped checkpoint, paths resolve against the project, and a key that has no effect is refused."""

import inspect
import re
import shlex
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from lrx.lowrank import METHODS
from lrx.run import config, schema
from tests.conftest import CONF, DATA_ROOT, REPO, compose_cfg, run_train

GROUPS = [
    "data",
    "model",
    "decomp",
    "data_recon",
    "finetune",
    "latency",
    "paths",
    "trainer",
    "logger",
    "callbacks",
    "experiment",
]


# what an option needs the user to give (the ??? of its file)
REQUIRED = {"custom": ["model.net._target_=torchvision.models.vgg11"]}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _resolved(overrides: list[str], tmp_path) -> dict:
    cfg = compose_cfg(overrides, tmp_path)
    return {**config.resolved(cfg), "hydra": {"run": {"dir": cfg.hydra.run.dir}}}


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_resolves_and_passes_the_schema(group, tmp_path):
    for option in _options(group):
        overrides = [f"{group}={option}", *REQUIRED.get(option, [])]
        cfg = compose_cfg(overrides, tmp_path)
        c = config.resolved(cfg)
        assert c["model"]["name"] and c["model"]["net"]["num_classes"] == c["data"]["num_classes"]
        if group != "experiment":  # experiments are sweeps: their jobs are checked in the sweep tests
            assert config.check(cfg) == [], option


def test_every_method_has_its_config_file():
    assert set(METHODS) <= set(_options("decomp"))


@pytest.mark.slow
@pytest.mark.parametrize("model", _options("model"))
def test_models_and_data_instantiate(model, tmp_path):
    cfg = compose_cfg([f"model={model}", *REQUIRED.get(model, [])], tmp_path)
    net = instantiate(cfg.model.net)
    assert getattr(net, "input_size", cfg.model.input_size) == cfg.model.input_size == cfg.data.resize
    assert instantiate(cfg.data).resize == cfg.model.input_size
    assert net(torch.zeros(2, 3, cfg.model.input_size, cfg.model.input_size)).shape == (2, cfg.data.num_classes)


@pytest.mark.parametrize("data, classes", [("cifar10", 10), ("cifar100", 100), ("fake", 10)])
def test_models_take_the_number_of_classes_and_the_input_size_from_the_data(data, classes, tmp_path):
    c = _resolved([f"data={data}", "model=resnet20_cifar"], tmp_path)
    assert c["model"]["net"]["num_classes"] == classes and c["model"]["input_size"] == c["data"]["input_size"]


# what each logger option builds: {key: Lightning logger class}
LOGGERS = {"csv": {"csv": "CSVLogger"}, "none": {}, "wandb": {"wandb": "WandbLogger"}}


@pytest.mark.parametrize("logger", _options("logger"))
def test_every_logger_writes_into_the_run_dir_and_wandb_is_offline_by_default(logger, tmp_path, monkeypatch):
    monkeypatch.delenv("LRX_WANDB_OFFLINE", raising=False)
    built = {key: instantiate(node) for key, node in (compose_cfg([f"logger={logger}"], tmp_path).logger or {}).items()}
    assert {key: type(lg).__name__ for key, lg in built.items()} == LOGGERS[logger]
    assert all(Path(lg.save_dir) == tmp_path for lg in built.values())
    if logger == "wandb":
        assert built["wandb"]._offline  # no account or network needed (WandbLogger tests its truth value)


def test_lrx_wandb_offline_false_logs_online(tmp_path, monkeypatch):
    monkeypatch.setenv("LRX_WANDB_OFFLINE", "false")  # after `wandb login`
    assert not instantiate(compose_cfg(["logger=wandb"], tmp_path).logger.wandb)._offline


def test_the_callbacks_measure_the_network_as_the_config_says(tmp_path):
    from lightning.pytorch.callbacks import TQDMProgressBar

    from lrx.measure.estimator import Estimator
    from lrx.run.callbacks import ModelCost
    from lrx.run.train import _callbacks

    cfg = compose_cfg(["model=resnet20_cifar", "latency.memory_format=contiguous", "latency.estimator.max_rounds=7"])
    progress, cost = _callbacks(cfg)
    assert isinstance(progress, TQDMProgressBar) and progress.refresh_rate == 10
    assert isinstance(cost, ModelCost) and (cost.input_size, cost.memory_format) == (32, "contiguous")
    assert cost.estimator == Estimator.of(cfg.latency.estimator) and cost.estimator.max_rounds == 7


def test_trainer_instantiates(tmp_path):
    cfg = compose_cfg(["experiment=smoke"], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.max_epochs == 1


def test_the_users_command_runs_the_earlier_attempts_alexnet2_row(tmp_path):
    """``python -m lrx.train model=alexnet decomp.bases=8 -m``: Scheme 1, M = 8, conv2, lambda 1e-4."""
    c = _resolved(["model=alexnet", "decomp.bases=8"], tmp_path)
    d = c["decomp"]
    assert d["method"] == "scheme1" and d["layers"] == ["conv2"] and d["bases"] == 8
    assert d["lam"]["schedule"] == "fixed" and d["lam"]["start"] == 1e-4
    assert c["data"]["resize"] == 224 and "data_recon" not in c and "finetune" not in c
    assert Path(compose_cfg(["model=alexnet"], tmp_path).hydra.sweep.dir).is_relative_to(REPO / "outputs")


@pytest.mark.parametrize(
    "overrides, key, default",
    [
        ([], "latency.fold_bn", True),  # every deployment folds BatchNorm: the default timing does too
        (["decomp=plan"], "planner.metric", "latency"),  # the speed-up measured where it is served
        (["decomp=plan"], "planner.methods", ["scheme2"]),  # Scheme 1 never won a plan: searched when asked
    ],
)
def test_the_defaults_are_what_a_user_would_choose(overrides, key, default, tmp_path):
    assert OmegaConf.select(compose_cfg(overrides, tmp_path), key) == default


def test_a_model_without_default_layers_decomposes_every_conv(tmp_path):
    assert _resolved(["model=resnet20_cifar"], tmp_path)["decomp"]["layers"] == "all"


def test_paths_live_in_one_group(tmp_path):
    c = _resolved(["paths.data=/somewhere", "paths.baseline_cache=/cache", "paths.outputs=/out"], tmp_path)
    assert c["data"]["root"] == "/somewhere" and c["baseline"]["cache_dir"] == "/cache"
    assert c["hydra"]["run"]["dir"].startswith("/out/runs/")


# every option of a typed group, and the schema it extends
TYPED = {
    "decomp=none": ("decomp", schema.Decomp),
    "decomp=plan": ("planner", schema.Planner),
    "decomp=prune": ("decomp", schema.DecompPrune),
    **{f"decomp={m}": ("decomp", schema.DecompMethod) for m in METHODS},
    "data_recon=default": ("data_recon", schema.DataRecon),
    "data_recon=lstsq": ("data_recon", schema.DataRecon),
    "finetune=ce": ("finetune", schema.Finetune),
    "finetune=kd": ("finetune", schema.FinetuneKD),
    "latency=default": ("latency", schema.Latency),
    "deploy=default": ("deploy", schema.Deploy),
}


def test_every_option_of_a_typed_group_is_in_the_table():
    groups = {o.split("=")[0] for o in TYPED}
    assert {f"{g}={o}" for g in groups for o in _options(g)} == set(TYPED)


@pytest.mark.parametrize("option", sorted(TYPED))
def test_every_option_of_a_typed_group_extends_its_schema(option, tmp_path):
    cfg = compose_cfg([option], tmp_path)
    group, node = TYPED[option]
    assert OmegaConf.get_type(cfg[group]) is node
    assert OmegaConf.get_type(cfg.baseline) is schema.Baseline
    if option == "decomp=plan":
        assert OmegaConf.get_type(cfg.decomp) is schema.DecompPlan


def _stated(*files: str, key: str | None = None) -> dict:
    """The keys and values the YAML files state (their own text, no defaults list), later files winning."""
    stated = {}
    for f in files:
        text = OmegaConf.to_container(OmegaConf.load(CONF / f))
        stated.update({k: v for k, v in (text[key] if key else text).items() if k != "defaults"})
    return stated


@pytest.mark.parametrize(
    "stated, node",
    [
        (_stated("planner/default.yaml"), schema.Planner),
        (_stated("data_recon/default.yaml"), schema.DataRecon),
        (_stated("finetune/ce.yaml"), schema.Finetune),
        (_stated("finetune/ce.yaml", "finetune/kd.yaml"), schema.FinetuneKD),
        (_stated("latency/default.yaml"), schema.Latency),
        (_stated("deploy/default.yaml"), schema.Deploy),
        (_stated("train.yaml", key="baseline"), schema.Baseline),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_the_yaml_users_read_states_every_key_of_its_schema_at_its_default(stated, node):
    defaults = OmegaConf.to_container(OmegaConf.structured(node))
    assert set(stated) == set(defaults)
    assert {k: v for k, v in stated.items() if defaults[k] != "???"} == {
        k: v for k, v in defaults.items() if v != "???"
    }


def test_every_default_calibration_count_is_the_one_constant():
    """deploy.calibration_images (the YAML states the schema's: above) and the library's defaults."""
    from lrx.deploy import compare, targets
    from lrx.run import serving_choice
    from lrx.runtime import onnxruntime, openvino
    from lrx.runtime.calibration import CALIBRATION_IMAGES

    counts = [(onnxruntime.quantize, "subset_size"), (openvino.quantize, "subset_size")]
    counts += [(f, "calibration_images") for f in (targets.deploy, compare.fastest_dense, compare.compare_deployments)]
    counts += [(serving_choice.choose, "calibration_images")]
    defaults = {f"{f.__module__}.{f.__name__}": inspect.signature(f).parameters[p].default for f, p in counts}
    assert defaults == dict.fromkeys(defaults, CALIBRATION_IMAGES) and len(defaults) == 6
    assert schema.Deploy.calibration_images == CALIBRATION_IMAGES


@pytest.mark.parametrize("path", [CONF / "deploy" / "default.yaml", REPO / "docs" / "GUIDE.md"], ids=lambda p: p.name)
def test_the_deploy_config_and_the_guide_name_every_target(path):
    from lrx.deploy.targets import TARGETS

    named = set(re.findall(r"\b(?:torch|onnxruntime|openvino)-(?:fp32|bf16|int8)\b", path.read_text()))
    assert named == set(TARGETS)


def test_the_decomp_options_leave_the_shared_keys_to_the_schema(tmp_path):
    shared = {f.name for f in fields(schema.DecompMethod)} - {"method"}
    for option in _options("decomp"):
        assert not shared & set(_stated(f"decomp/{option}.yaml")), option
    d = _resolved(["decomp=cp"], tmp_path)["decomp"]
    assert d == {"method": "cp", "layers": ["conv2"], "bases": 8, "rank_multiple": 1}
    assert _resolved(["decomp=plan"], tmp_path)["decomp"] == {"method": "plan", "layers": "all", "rank_multiple": 1}


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["latency.guard=maybe"], ["latency.guard=maybe", "not a valid bool", "full_key: latency.guard"]),
        (["deploy.onnx=perhaps"], ["deploy.onnx=perhaps", "not a valid bool"]),
        (["latency.batch_sizes=32"], ["latency.batch_sizes=32", "not a ListConfig, list or tuple"]),
        (["latency.estimator.min_rounds=few"], ["estimator.min_rounds=few", "'few'", "converted to Integer"]),
        (["latency.decide_at.threads=1.5"], ["latency.decide_at.threads=1.5", "converted to Integer"]),
        (["decomp.rank_multiple=eight"], ["decomp.rank_multiple=eight", "converted to Integer"]),
        (["decomp=plan", "planner.target_speedup=fast"], ["planner.target_speedup=fast", "converted to Float"]),
        (["data_recon=default", "data_recon.batches=1.5"], ["data_recon.batches=1.5", "converted to Integer"]),
        (["finetune=kd", "finetune.kd_alpha=half"], ["finetune.kd_alpha=half", "converted to Float"]),
        (["latency.estimator.repeats=3"], ["latency.estimator.repeats", "not in 'Estimator'"]),
        (["deploy.fp16=true"], ["deploy.fp16", "not in 'Deploy'"]),
    ],
)
def test_a_value_of_the_wrong_type_fails_at_composition_naming_key_value_and_type(overrides, words, tmp_path):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(overrides, tmp_path)
    message = f"{info.value} {info.value.__cause__}"
    assert all(w in message for w in words), message


@pytest.mark.parametrize(
    "overrides, ckpt",
    [
        ([], "alexnet_cifar.pt"),
        (["model=resnet20_cifar"], "resnet20_cifar.pt"),
        (["experiment=quickstart"], "alexnet_cifar.pt"),
        (["experiment=resnet20_table"], "resnet20_cifar.pt"),
        (["data=cifar100"], None),  # shipped for CIFAR-10 only: trained
        (["data=fake"], None),
        (["model=alexnet"], None),  # ships none
        (["baseline.ckpt=null"], None),  # train (or reuse the cached training)
        (["experiment=smoke"], None),  # the whole pipeline, the baseline's training included
    ],
)
def test_the_baseline_is_the_models_shipped_checkpoint_for_its_data(overrides, ckpt, tmp_path):
    path = _resolved(overrides, tmp_path)["baseline"]["ckpt"]
    assert path == (ckpt and str(REPO / "checkpoints" / ckpt))
    assert ckpt is None or Path(path).is_file()


def test_paths_resolve_against_the_project_from_any_working_directory(tmp_path, monkeypatch):
    from lrx.data import default_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LRX_BASELINE_CACHE", raising=False)
    monkeypatch.delenv("LRX_DATA_ROOT", raising=False)
    c = _resolved([], tmp_path)
    assert c["paths"]["root"] == str(REPO) and (REPO / "conf" / "train.yaml").is_file()
    assert c["data"]["root"] == default_root() == str(REPO / "data")
    assert c["baseline"]["cache_dir"] == str(REPO / "outputs" / "baselines")
    assert Path(c["hydra"]["run"]["dir"]).is_relative_to(REPO / "outputs" / "runs")
    assert Path(c["baseline"]["ckpt"]).is_file()


@pytest.mark.slow
def test_the_cli_resolves_the_shipped_checkpoint_from_another_folder(tmp_path):
    res = run_train(["--cfg", "job", "--resolve"], cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert OmegaConf.create(res.stdout).baseline.ckpt == str(REPO / "checkpoints" / "alexnet_cifar.pt")


def test_the_baseline_origin_is_project_relative_inside_the_project_else_absolute(tmp_path):
    from lrx.models import AlexNetCIFAR
    from lrx.run.baseline import get_baseline, recipe_key

    cfg = compose_cfg([], tmp_path)
    assert get_baseline(cfg, AlexNetCIFAR(), None) == {"source": "checkpoint", "path": "checkpoints/alexnet_cifar.pt"}
    outside = tmp_path / "mine.pt"
    shutil.copy(REPO / "checkpoints" / "alexnet_cifar.pt", outside)
    origin = get_baseline(compose_cfg([f"baseline.ckpt={outside}"], tmp_path), AlexNetCIFAR(), None)
    assert origin["path"] == str(outside.resolve())
    with open_dict(cfg):
        del cfg["hydra"]
    key = recipe_key(cfg)  # the shipped checkpoints are no part of a trained baseline's recipe
    with open_dict(cfg):
        del cfg.model["checkpoints"]
    assert recipe_key(cfg) == key


def test_imagefolder_counts_its_classes_unless_given(tmp_path):
    c = _resolved(["data=imagefolder"], tmp_path)
    assert c["data"]["num_classes"] is None and c["model"]["net"]["num_classes"] is None
    assert _resolved(["data=imagefolder", "data.num_classes=3"], tmp_path)["model"]["net"]["num_classes"] == 3


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["decomp=none", "decomp.bases=8"], "decomp.bases"),
        (["decomp=scheme2", "decomp.lam.start=0.1"], "decomp.lam"),  # lambda is Scheme 1's alone
        (["planner.target_speedup=3"], "planner"),  # the planner comes with decomp=plan
        (["data_recon.steps=10"], "data_recon"),  # off unless selected
        (["finetune.epochs=3"], "finetune"),
        (["finetune=ce", "finetune.temperature=2"], "finetune.temperature"),  # a distillation setting
    ],
)
def test_a_key_of_a_group_that_is_off_fails_at_composition_naming_it(overrides, key, tmp_path):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(overrides, tmp_path)
    assert key in str(info.value.__cause__ or info.value) + str(info.value)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["decomp=none", "+decomp.bases=8"], ["decomp.bases", "decomp=none"]),
        (["decomp=scheme2", "+decomp.lam.start=0.1"], ["decomp.lam.start", "scheme2", "none"]),
        (["+planner.target_speedup=3"], ["planner.", "decomp=plan"]),
        (["+data_recon.steps=10"], ["data_recon.", "missing", "data_recon=default"]),
        (["+latency.estimator.repeats=3"], ["latency.estimator.repeats is not a setting", "min_rounds"]),
        (["finetune=ce", "+finetune.temperature=2"], ["finetune.temperature", "finetune.loss=ce", "epochs"]),
        (["+deploy.fp16=true"], ["deploy.fp16 is not a setting of deploy", "check_images, onnx, opset"]),
    ],
)
def test_a_key_forced_in_with_plus_is_still_refused(overrides, words, tmp_path):
    with pytest.raises(config.ConfigError) as info:
        config.check(compose_cfg(overrides, tmp_path))
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize(
    "overrides, ignored",
    [
        (["decomp.lam.steps=4"], "decomp.lam.steps"),  # a fixed schedule has no steps
        (["decomp=plan", "planner.error=filter", "planner.samples=64"], "planner.samples"),
        (
            ["decomp=plan", "planner.methods=[scheme2]", "+planner.options.scheme1.lam.start=0.01"],
            "planner.options.scheme1",
        ),
        (["data_recon=lstsq", "data_recon.lr=0.1"], "data_recon.lr"),  # no gradient steps
        (["latency.guard=false", "latency.runtime=onnxruntime"], "latency.runtime"),  # nothing times candidates
        (["decomp=plan", "planner.metric=macs", "planner.closed_loop_rounds=7"], "planner.closed_loop_rounds"),
        (["deploy.targets=[torch-fp32]", "deploy.opset=20"], "deploy.opset"),  # no ONNX graph
        (["deploy.targets=[]", "deploy.check_images=4"], "deploy.check_images"),  # nothing is deployed or exported
        (["deploy.targets=[torch-fp32]", "deploy.calibration_images=10"], "deploy.calibration_images"),  # no int8
    ],
)
def test_a_key_without_effect_is_an_error_in_a_run_and_a_warning_in_a_sweep(overrides, ignored, tmp_path, tiny_root):
    from lrx.run.job import prepare

    cfg = compose_cfg([*overrides, f"data.root={tiny_root}", "data.val_size=10"], tmp_path)
    assert any(k.startswith(ignored) for k in config.check(cfg))
    with pytest.raises(config.ConfigError, match=ignored.replace(".", r"\.") + ".*no effect"):
        prepare(cfg)
    assert any(k.startswith(ignored) for k in prepare(cfg, sweep=True).ignored_keys)


@pytest.mark.parametrize("targets", ["auto", "[torch-fp32]"])
def test_check_images_count_for_the_deployment_targets_without_onnx_export(targets, tmp_path):
    cfg = compose_cfg([f"deploy.targets={targets}", "deploy.check_images=4"], tmp_path)
    assert config.check(cfg) == []  # each target's graphs are checked on them


@pytest.mark.parametrize("targets", ["auto", "[onnxruntime-fp32]", "[onnxruntime-int8]"])
def test_the_opset_counts_for_the_onnx_runtime_targets_without_onnx_export(targets, tmp_path):
    assert config.check(compose_cfg([f"deploy.targets={targets}", "deploy.opset=20"], tmp_path)) == []


def test_a_plan_whose_planner_group_was_emptied_is_refused(tmp_path):
    cfg = compose_cfg(["decomp=plan"], tmp_path)
    with open_dict(cfg):
        cfg.planner = None  # what an experiment file stating `planner:` with no keys under it leaves
    with pytest.raises(config.ConfigError, match="decomp=plan needs the planner group"):
        config.check(cfg)


def test_a_runtime_without_its_extra_is_refused_naming_the_extra(tmp_path, monkeypatch):
    from lrx.runtime import onnxruntime as onnx_graphs

    monkeypatch.setattr(onnx_graphs, "missing_packages", lambda: ["onnxruntime"])
    cfg = compose_cfg(["latency.runtime=onnxruntime"], tmp_path)
    with pytest.raises(config.ConfigError, match=r"latency.runtime=onnxruntime needs onnxruntime.*\.\[onnx\]"):
        config.check(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("group, bad", [("model", "resnet9000"), ("data", "imagenet")])
def test_unknown_option_lists_valid_choices(group, bad, tmp_path):
    res = run_train([f"{group}={bad}"], cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    assert bad in res.stderr
    for option in _options(group):
        assert option in res.stderr
    assert not list(tmp_path.rglob("results.json"))


@pytest.mark.parametrize(
    "launcher, target",
    [
        ("basic", "BasicLauncher"),
        ("joblib", "JoblibLauncher"),
        ("submitit_slurm", "SlurmLauncher"),
        ("slurm", "SlurmLauncher"),
    ],
)
def test_every_launcher_composes(launcher, target, tmp_path):
    cfg = compose_cfg([f"hydra/launcher={launcher}"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith(target)


@pytest.mark.slow
def test_every_seed_table_row_composes(tmp_path):
    group = "table/seed_table"
    rows = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    cfg = compose_cfg(["experiment=seed_table"], tmp_path)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert sorted(cfg.hydra.sweeper.params[f"+{group}"].split(",")) == rows
    methods = {}
    for row in rows:
        cfg = compose_cfg(["experiment=seed_table", f"+{group}={row}"], tmp_path)
        c = config.resolved(cfg)
        assert config.check(cfg) == []
        methods[row] = c["decomp"]["method"]
        assert not c["latency"]["guard"]  # a table shows each row's measured speed-up, below 1x too
        if methods[row] != "none":
            assert c["decomp"]["layers"] == ["conv2"] and c["decomp"]["bases"] == 8
            assert c["decomp"]["lam"] == {**c["decomp"]["lam"], "schedule": "fixed", "start": 1e-4}
    assert methods == {"baseline": "none", "s1_filter": "scheme1", "s1_tuned": "scheme1"}


ALEXNET_CONVS = ["conv2", "conv3", "conv4", "conv5"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, methods, targets, metric, layers, guard",
    [
        ("scheme_sweep", "[scheme1],[scheme2]", "1.5,2,3,4", "macs", ALEXNET_CONVS, False),
        ("peer_table", "[scheme1],[scheme2],[tucker2],[cp],[channel_svd]", "3,6", "macs", ALEXNET_CONVS, False),
        ("planner_sweep", None, "2,3,4", "latency", ALEXNET_CONVS, True),
        # ResNet-20's small convs: the table reports what the guard puts back
        ("resnet20_table", "[scheme1],[scheme2],[tucker2],[cp],[channel_svd]", "2,3", "macs", "all", True),
    ],
)
def test_comparison_sweeps_run_all_three_stages_at_their_targets(
    tmp_path, experiment, methods, targets, metric, layers, guard
):
    cfg = compose_cfg([f"experiment={experiment}"], tmp_path)
    params = cfg.hydra.sweeper.params
    assert params.get("planner.methods") == methods and params["planner.target_speedup"] == targets
    c = config.resolved(cfg)
    assert c["decomp"] == {"method": "plan", "layers": layers, "rank_multiple": 1}
    assert c["planner"]["metric"] == metric and c["data_recon"]["steps"] == 0 and c["finetune"]["epochs"] >= 1
    assert c["latency"]["guard"] == guard
    for job in (methods or "[scheme1]").split(","):  # every job of the sweep passes the schema
        for target in targets.split(","):
            job_cfg = compose_cfg(
                [f"experiment={experiment}", f"planner.methods={job}", f"planner.target_speedup={target}"], tmp_path
            )
            assert config.check(job_cfg) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "method_args", [[], ["decomp=scheme2", "decomp.bases={conv2: 43, conv3: 82, conv4: 80, conv5: 102}"]]
)
def test_the_rank_multiple_sweep_rounds_fixed_ranks_and_deploys(tmp_path, method_args):
    cfg = compose_cfg(["experiment=rank_multiple", *method_args], tmp_path)
    assert cfg.hydra.sweeper.params["decomp.rank_multiple"] == "1,8,16"
    for multiple in (1, 8, 16):  # every job of the sweep passes the schema
        c = config.resolved(
            compose_cfg(["experiment=rank_multiple", *method_args, f"decomp.rank_multiple={multiple}"], tmp_path)
        )
        assert c["decomp"]["layers"] == ALEXNET_CONVS and c["decomp"]["rank_multiple"] == multiple
        assert c["deploy"]["onnx"] is True and c["latency"]["guard"] is False and "finetune" not in c
    assert config.check(compose_cfg(["experiment=rank_multiple", *method_args], tmp_path)) == []


@pytest.mark.parametrize(
    "overrides",
    [
        ["decomp=tucker2"],
        ["decomp=tucker2", "decomp.bases=vbmf"],
        ["decomp=cp", "decomp.bases=16"],
        ["decomp=channel_svd"],
        ["decomp=scheme2", "decomp.layers=conv*"],
    ],
)
def test_every_method_config_validates_against_its_model(overrides, tmp_path):
    from lrx.lowrank import validate

    cfg = compose_cfg(overrides, tmp_path)
    assert config.check(cfg) == []
    d = config.resolved(cfg)["decomp"]
    plan = validate(instantiate(cfg.model.net), d["layers"], d["method"], d["bases"], **config.method_options(d))
    assert [name for name, _, _ in plan] == (
        ["conv2"] if d["layers"] == ["conv2"] else [f"conv{i}" for i in range(1, 6)]
    )


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["model=torchvision", "model.arch=resnet9000"], ["model.arch='resnet9000'", "resnet18", "vgg11_bn"]),
        (["model=torchvision", "model.weights=IMAGENET9K"], ["model.weights='IMAGENET9K'", "IMAGENET1K_V1", "null"]),
    ],
)
def test_a_bad_torchvision_name_is_one_clear_error(overrides, words, tmp_path):
    from lrx.run.job import _instantiate

    with pytest.raises(ValueError) as info:
        _instantiate(compose_cfg(overrides, tmp_path).model.net)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_pretrained_weights_offline_say_how_to_pass_a_local_file(tmp_path, monkeypatch):
    import torchvision.models as tvm

    from lrx.run.job import _instantiate

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tvm._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(OSError, match=r"model.weights='DEFAULT'.*resnet18-.*\.pth.*baseline.ckpt=PATH"):
        _instantiate(compose_cfg(["model=torchvision", "model.weights=DEFAULT"], tmp_path).model.net)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["googlenet", "inception_v3"])
def test_networks_with_auxiliary_logits_return_plain_logits_in_training(arch, tmp_path):
    cfg = compose_cfg(["model=torchvision", f"model.arch={arch}", "data=fake", "data.input_size=80"], tmp_path)
    net = instantiate(cfg.model.net).train()
    assert isinstance(net(torch.zeros(2, 3, 80, 80)), torch.Tensor)


def _experiment_commands() -> list[list[str]]:
    """The overrides of each ``python -m lrx.train`` command an experiment's comments show."""
    commands = []
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        for line in path.read_text().splitlines():
            command = line[line.find("python -m lrx.train") :].split("&&")[0].split("`")[0]
            words = shlex.split(command) if "python -m lrx.train" in line else []
            if words[:3] == ["python", "-m", "lrx.train"]:
                commands.append([w.replace("../shared/data", str(DATA_ROOT)) for w in words[3:] if w != "-m"])
    return commands


@pytest.mark.parametrize(
    "words",
    [
        *_experiment_commands(),
        # plan_mix's comments: the same budget for one structure alone
        ["experiment=plan_mix", "planner.methods=[prune]"],
        ["experiment=plan_mix", "planner.methods=[scheme2]"],
        ["experiment=plan_mix", "planner.methods=[scheme2,channel_svd]"],
    ],
    ids=" ".join,
)
def test_every_command_an_experiment_documents_composes_and_checks(words, tmp_path):
    assert config.check(compose_cfg(words, tmp_path)) == []  # no key without effect either
