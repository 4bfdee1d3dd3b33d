"""Device lists for search workers, from a fake environment (no GPU needed)."""

from __future__ import annotations

import pytest

from proxy_bundle.errors import InputError
from proxy_bundle.hpo.devices import (WorkerSlot, algo_device_setting, dataloader_workers, pack_choice, plan_workers,
                                      resolve_devices, visible_devices)


def test_parent_visible_devices_are_kept():
    env = {"CUDA_VISIBLE_DEVICES": "3"}
    # The only GPU this process sees is physical GPU 3: its worker must get 3, not 0.
    assert resolve_devices("auto", env, cuda_count=1) == ["3"]
    assert resolve_devices("0", env, cuda_count=1) == ["3"]
    assert WorkerSlot("3", 0).env == {"CUDA_VISIBLE_DEVICES": "3"}
    assert resolve_devices("1,0", {"CUDA_VISIBLE_DEVICES": "5,7"}, cuda_count=2) == ["7", "5"]
    assert resolve_devices(None, {}, cuda_count=2) == ["0", "1"]
    assert resolve_devices("auto", {}, cuda_count=0) == ["cpu"]
    assert resolve_devices("auto", {"CUDA_VISIBLE_DEVICES": ""}, cuda_count=0) == ["cpu"]
    assert resolve_devices("cpu", env, cuda_count=1) == ["cpu"] and WorkerSlot("cpu", 0).env == {
        "CUDA_VISIBLE_DEVICES": ""}
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "GPU-ab12,GPU-cd34"}) == ["GPU-ab12", "GPU-cd34"]
    # MONAI's BundleAlgo rebuilds range(device_count()) = "0"; the runner's setting keeps the parent's "3".
    fixed = algo_device_setting({"CUDA_VISIBLE_DEVICES": "0", "n_devices": 1, "NUM_NODES": 1}, env, cuda_count=1)
    assert fixed["CUDA_VISIBLE_DEVICES"] == "3" and fixed["n_devices"] == 1 and fixed["NUM_NODES"] == 1


@pytest.mark.parametrize("spec", ["2", "0,x", "gpu0"])
def test_unknown_devices_are_input_errors(spec):
    with pytest.raises(InputError, match="--devices"):
        resolve_devices(spec, {"CUDA_VISIBLE_DEVICES": "3,4"}, cuda_count=2)


def test_packing_and_loader_workers():
    lanes = plan_workers(["0", "1"], 3, packable=True)
    assert [(w.device, w.lane) for w in lanes] == [("0", 0), ("0", 1), ("0", 2), ("1", 0), ("1", 1), ("1", 2)]
    assert [(w.device, w.lane) for w in plan_workers(["0", "1"], 3, packable=False)] == [("0", 0), ("1", 0)]
    assert dataloader_workers(16, 4, on_gpu=True) == 3 and dataloader_workers(2, 1, on_gpu=False) == 0
    assert dataloader_workers(64, 1, on_gpu=True) == 8
    # The probe: 4 concurrent proxy trainings give 2.7x one (H200 figures); 8 and 16 add little.
    steps = {1: 36.9, 2: 70.0, 4: 99.6, 8: 57.7}
    assert pack_choice(steps, {n: 2e9 for n in steps}, 140e9) == 4
    assert pack_choice(steps, {n: 30e9 for n in steps}, 140e9) == 2  # 4 x 30 GB does not fit
    assert pack_choice({1: 5.0, 2: 5.1}, {1: 1.0, 2: 1.0}, None) == 1  # no gain: no packing
