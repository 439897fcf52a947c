import pytest

from losslab.lab.config import find_config, fingerprint, load_config_file, resolve_config
from losslab.lab.tasks import get_task


def test_precedence_defaults_file_cli():
    task = get_task("fewshot")
    cfg = resolve_config(task, {"losses": ["protonet"], "epochs": 7, "lr": 0.01}, {"epochs": "3"})
    assert cfg["epochs"] == 3  # explicit flag wins over the file
    assert cfg["lr"] == 0.01  # file wins over the default
    assert cfg["test_episodes"] == 1000  # default
    assert cfg["seeds"] == [0]


def test_lists_and_seeds():
    task = get_task("fewshot")
    cfg = resolve_config(task, None, {"losses": "protonet,protonet+icnn", "seeds": "3",
                                      "shots": "1,5", "train_way": "30,20"})
    assert cfg["losses"] == ["protonet", "protonet+icnn"]
    assert cfg["seeds"] == [0, 1, 2]
    assert task.settings(cfg) == [{"way": 5, "shot": 1, "train_way": 30},
                                  {"way": 5, "shot": 5, "train_way": 20}]
    cfg = resolve_config(task, {"seeds": [3, 8]}, {"losses": "protonet"})
    assert cfg["seeds"] == [3, 8]
    cfg = resolve_config(task, {"train_way": 20}, {"losses": "protonet"})
    assert [s["train_way"] for s in task.settings(cfg)] == [20, 20]


@pytest.mark.parametrize(
    ("file", "cli", "match"),
    [
        ({"epochs": 1, "epoch": 2}, {"losses": "protonet"}, "unknown key"),
        (None, {"losses": "protonet,nope"}, "unknown loss 'nope'"),
        (None, {"losses": "protonet+"}, "bad loss spec"),
        (None, {}, "no losses"),
        (None, {"losses": "protonet", "epochs": "x"}, "expected int"),
        (None, {"losses": "protonet", "backbone": "vit"}, "must be one of"),
        ({"task": "noisy"}, {"losses": "protonet"}, "for task 'noisy'"),
        (None, {"losses": "protonet,protonet"}, "repeated"),
    ],
)
def test_bad_configs(file, cli, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(get_task("fewshot"), file, cli)


def test_fingerprint_excludes_grid_and_speed_options():
    task = get_task("fewshot")
    a = resolve_config(task, None, {"losses": "protonet", "seeds": "1", "eval_batch": "64"})
    b = resolve_config(task, None, {"losses": "protonet,icnn", "seeds": "3", "shots": "1"})
    assert fingerprint(task, a) == fingerprint(task, b)
    c = resolve_config(task, None, {"losses": "protonet", "epochs": "2"})
    assert fingerprint(task, a) != fingerprint(task, c)


@pytest.mark.parametrize("name", ["demo", "miniimagenet_conv4", "miniimagenet_resnet12"])
def test_shipped_configs_resolve(name):
    task = get_task("fewshot")
    cfg = resolve_config(task, load_config_file(name), None)
    assert cfg["losses"] and task.settings(cfg)
    assert find_config(name).suffix == ".toml"


def test_paper_protocol_config():
    cfg = resolve_config(get_task("fewshot"), load_config_file("miniimagenet_conv4"), None)
    assert (cfg["epochs"], cfg["episodes_per_epoch"], cfg["val_episodes"],
            cfg["test_episodes"]) == (200, 100, 500, 1000)
    assert (cfg["lr"], cfg["lr_step"], cfg["lr_gamma"], cfg["query"]) == (1e-3, 20, 0.5, 15)
    assert [s["train_way"] for s in get_task("fewshot").settings(cfg)] == [30, 20]


def test_missing_config_file():
    with pytest.raises(ValueError, match="shipped configs"):
        load_config_file("no_such_config")


@pytest.mark.parametrize(
    ("file", "cli", "match"),
    [
        (None, {"losses": "protonet", "workers": "0"}, r"workers must be >= 1, got 0"),
        (None, {"losses": "protonet", "workers": "-2"}, r"workers must be >= 1"),
        (None, {"losses": "protonet,cross_entropy"},
         r"loss 'cross_entropy'.*kind 'logits'.*fewshot.*'episode'"),
        (None, {"losses": "protonet+cross_entropy"}, r"cross_entropy.*kind 'logits'"),
        ({"losses": ["protonet"], "loss_hparams": {"proto_triplt": {"margin": 0.3}}}, None,
         r"loss_hparams\.proto_triplt: unknown loss"),
        ({"losses": ["protonet"], "loss_hparams": {"proto_triplet": {"margin": 0.3}}}, None,
         r"loss_hparams\.proto_triplet: .*not in this run"),
        ({"losses": ["protonet"], "loss_hparams": {"protonet": {"temprature": 2.0}}}, None,
         r"loss_hparams\.protonet: unknown hyperparameter 'temprature'.*temperature"),
        ({"losses": ["protonet"], "loss_hparams": {"protonet": {"temperature": -1.0}}},
         None, r"loss_hparams\.protonet: .*temperature"),
    ],
)
def test_bad_runs_are_refused_before_any_job(file, cli, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(get_task("fewshot"), file, cli)


def test_hparams_of_a_file_loss_left_out_by_the_command_line_are_kept():
    """`--losses` picks a subset of a config file's losses: the file's tables of the others
    are not typos; they stay (and with them the run fingerprint)."""
    task = get_task("fewshot")
    file = {"losses": ["protonet", "proto_triplet"],
            "loss_hparams": {"proto_triplet": {"margin": 0.3}}}
    sub = resolve_config(task, file, {"losses": "protonet"})
    full = resolve_config(task, file, None)
    assert sub["loss_hparams"] == {"proto_triplet": {"margin": 0.3}}
    assert fingerprint(task, sub) == fingerprint(task, full)
