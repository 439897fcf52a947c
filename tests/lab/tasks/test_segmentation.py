"""The segmentation lab task end to end on a tiny configuration (seconds)."""

from __future__ import annotations

import pytest

pytest.importorskip("skimage")

from losslab.lab.config import resolve_config
from losslab.lab.results import read_rows
from losslab.lab.runner import run_bench
from losslab.lab.tasks import get_task
from losslab.lab.tasks.segmentation import SmallUNet, pack_mask, preview_figure, unpack_mask


def _config(**over):
    task = get_task("segmentation")
    cfg = {"losses": ["dice_ce", "cl_dice+dice_ce"], "seeds": 1,
           "setting": ["thin", "noisy"], "n_train": 16, "n_test": 6, "epochs": 1,
           "batch_size": 8, "width": 4, "device": "cpu", "threads": 1, **over}
    return task, resolve_config(task, cfg, None)


def test_end_to_end_and_report(tmp_path):
    task, cfg = _config()
    out = run_bench(task, cfg, tmp_path / "run", quiet=True)
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 4
    for r in rows:
        m = r["metrics"]
        assert 0 <= m["dice"] <= 100 and 0 <= m["cl_dice"] <= 100
        assert m["betti0_error"] >= 0 and m["betti1_error"] >= 0
    md = (out / "table.md").read_text()
    assert "`cl_dice+dice_ce`" in md and "Betti-0 error" in md
    png = preview_figure(str(out))
    assert open(png, "rb").read(4) == b"\x89PNG"


def test_mask_packing_round_trip():
    import numpy as np
    import torch

    m = torch.rand(7, 9) > 0.5
    assert np.array_equal(unpack_mask(pack_mask(m.long()), (7, 9)), m.numpy())


def test_unet_shapes_and_bad_configuration():
    import torch

    assert SmallUNet(1, 1, 4)(torch.zeros(2, 1, 40, 40)).shape == (2, 1, 40, 40)
    task, cfg = _config()
    with pytest.raises(ValueError, match="size"):
        task.validate({**cfg, "size": 42})
    with pytest.raises(ValueError, match="kind"):
        _config(losses=["cross_entropy"])


def test_shipped_config_resolves():
    from losslab.lab.config import load_config_file

    task = get_task("segmentation")
    cfg = resolve_config(task, load_config_file("segmentation_glyphs"), None)
    assert "skeleton_recall+dice_ce" in cfg["losses"] and cfg["setting"]


@pytest.mark.slow  # the persistence of every training image, pure Python
def test_betti_matching_loss_and_error_in_a_job(tmp_path):
    """A thin-setting job trained with the Betti matching compound; its Betti matching error is
    the mean of :func:`betti_matching_error` (T construction) over the first test images,
    recomputed here from the predictions the seed-0 job records; 0 images: not scored."""
    import numpy as np
    import torch

    from losslab.lab.data.segmentation import make_segmentation_data
    from losslab.metrics import betti_matching_error

    task, cfg = _config(losses=["betti_matching+dice_ce"], setting=["thin"], n_test=4,
                        betti_matching_images=4,
                        loss_hparams={"betti_matching": {"construction": "T"}})
    out = run_bench(task, cfg, tmp_path / "run", quiet=True)
    (row,) = read_rows(out / "results.jsonl")
    m = row["metrics"]
    data = make_segmentation_data("thin", n_train=cfg["n_train"], n_test=4, seed=0,
                                  size=cfg["size"], scale=cfg["scale"])
    pred = torch.from_numpy(np.stack([unpack_mask(p, (cfg["size"],) * 2)
                                      for p in m["preview"]]).astype(np.int64))
    want = betti_matching_error(pred, torch.from_numpy(data.y_test), construction="T").mean(0)
    assert m["betti_matching0"] == pytest.approx(float(want[0]))
    assert m["betti_matching1"] == pytest.approx(float(want[1]))
    assert m["betti_matching_error"] == pytest.approx(float(want.sum()))
    assert "Betti matching error" in (out / "table.md").read_text()

    task, cfg = _config(losses=["dice_ce"], setting=["thin"], betti_matching_images=0)
    out = run_bench(task, cfg, tmp_path / "none", quiet=True)
    (row,) = read_rows(out / "results.jsonl")
    assert row["metrics"]["betti_matching_error"] is None
    with pytest.raises(ValueError, match="betti_matching_images"):
        task.validate({**cfg, "betti_matching_images": -1})
