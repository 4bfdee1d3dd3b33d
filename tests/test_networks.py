"""Proxy network factory, measured cost model and the ``scale`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import torch
from monai.networks.nets import DynUNet, SegResNet, SegResNetDS, UNet

from proxy_bundle.errors import InputError
from proxy_bundle.networks.cost import evaluate_candidates, measure_cost, measure_module, parse_roi, pick_proxy
from proxy_bundle.networks.command import NETWORK_NAMES
from proxy_bundle.networks.scaling import NETWORKS, ProxySpec, full_kwargs, num_levels, scaled_kwargs, scaled_network
from proxy_bundle.options import Network

ROOT = Path(__file__).resolve().parents[1]
BASE = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


SPECS = {
    "segresnet": [ProxySpec(), ProxySpec(width=0.5), ProxySpec(width=0.5, blocks=0.5, levels=3), ProxySpec(levels=1)],
    "segresnetds": [ProxySpec(width=0.125), ProxySpec(width=0.25, blocks=0.5), ProxySpec(width=0.125, levels=2)],
    "unet": [ProxySpec(), ProxySpec(width=0.25, levels=3), ProxySpec(width=0.5, levels=2)],
    "dynunet": [ProxySpec(width=0.125), ProxySpec(width=0.125, levels=3)],
}


@pytest.mark.parametrize("name,spec", [(n, s) for n, specs in SPECS.items() for s in specs],
                         ids=lambda v: v if isinstance(v, str) else v.label().replace(" ", "_"))
def test_scaled_networks_forward_with_full_output_shape(name, spec):
    torch.manual_seed(0)
    net = scaled_network(name, {**BASE, "in_channels": 2, "out_channels": 3}, spec).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, 32, 32, 32))
    assert tuple(out.shape) == (1, 3, 32, 32, 32)


def test_segresnet_kwargs_and_param_counts_match_monai_constructor():
    base = {**BASE, "init_filters": 8, "blocks_down": (1, 2, 2, 4)}
    kw = scaled_kwargs("segresnet", base, ProxySpec(width=0.5, blocks=0.5, levels=3))
    assert (kw["init_filters"], kw["blocks_down"], kw["blocks_up"]) == (4, (1, 1, 1), (1, 1))
    assert kw["norm"] == ("GROUP", {"num_groups": 4})  # 8 groups cannot split 4 channels
    assert base == {**BASE, "init_filters": 8, "blocks_down": (1, 2, 2, 4)}  # pure: input untouched

    full = scaled_network("segresnet", base, ProxySpec())
    assert n_params(full) == n_params(SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=8,
                                                blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)))
    half = scaled_network("segresnet", base, ProxySpec(width=0.5))
    assert n_params(half) == n_params(SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=4,
                                                blocks_down=(1, 2, 2, 4), norm=("GROUP", {"num_groups": 4})))
    shallow = scaled_network("segresnet", base, ProxySpec(blocks=0.5, levels=3))
    assert n_params(shallow) == n_params(SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=8,
                                                   blocks_down=(1, 1, 1), blocks_up=(1, 1)))


def test_tiny_unet_parameter_count_by_hand():
    # UNet(channels=(8, 16)) at width 0.5 -> channels (4, 8), instance norm without affine, PReLU (1 weight):
    # down  Conv3d(1->4, k3, stride 2) + bias + PReLU:        1*4*27 + 4 + 1 = 113
    # bottom Conv3d(4->8, k3)          + bias + PReLU:        4*8*27 + 8 + 1 = 873
    # up    ConvTranspose3d(4+8 -> 2, k3) + bias, conv only:  12*2*27 + 2   = 650
    net = scaled_network("unet", {**BASE, "channels": (8, 16), "strides": (2,)}, ProxySpec(width=0.5))
    assert n_params(net) == 113 + 873 + 650
    report = measure_cost("unet", {**BASE, "channels": (8, 16), "strides": (2,)}, 8, ProxySpec(width=0.5))
    assert report.params == 1636


@pytest.mark.parametrize("name,base", [
    ("segresnet", {**BASE, "init_filters": 32}),
    ("segresnetds", BASE),
    ("unet", {**BASE, "num_res_units": 2}),
    ("dynunet", BASE),
])
def test_half_width_has_about_a_quarter_of_the_parameters(name, base):
    full = n_params(scaled_network(name, base, ProxySpec()))
    half = n_params(scaled_network(name, base, ProxySpec(width=0.5)))
    assert 3.5 < full / half < 4.5


def test_defaults_follow_monai_and_blocks_levels_scale():
    kw = full_kwargs("segresnetds", BASE)
    assert (kw["init_filters"], kw["blocks_down"], kw["norm"], kw["dsdepth"]) == (32, (1, 2, 2, 4), "batch", 1)
    assert num_levels("segresnet", BASE) == 4 and num_levels("unet", BASE) == 5 and num_levels("dynunet", BASE) == 5
    ds = scaled_kwargs("segresnetds", {**BASE, "dsdepth": 3}, ProxySpec(width=0.25, blocks=0.5, levels=3))
    assert (ds["init_filters"], ds["blocks_down"], ds["blocks_up"], ds["dsdepth"]) == (8, (1, 1, 1), (1, 1), 2)
    unet = scaled_kwargs("unet", {**BASE, "num_res_units": 4}, ProxySpec(width=0.25, blocks=0.5, levels=3))
    assert (unet["channels"], unet["strides"], unet["num_res_units"]) == ((4, 8, 16), (2, 2), 2)
    assert scaled_kwargs("unet", BASE, ProxySpec(blocks=0.5))["num_res_units"] == 0  # plain convs stay plain
    dyn = scaled_kwargs("dynunet", BASE, ProxySpec(width=0.5, levels=4))
    assert dyn["filters"] == (16, 32, 64, 128) and dyn["upsample_kernel_size"] == (2, 2, 2)
    # A group norm the user chose is kept valid under scaling.
    grouped = scaled_kwargs("unet", {**BASE, "norm": ("group", {"num_groups": 8})}, ProxySpec(width=0.25))
    assert grouped["norm"] == ("group", {"num_groups": 4})
    net = scaled_network("unet", {**BASE, "norm": ("group", {"num_groups": 8})}, ProxySpec(width=0.25))
    assert isinstance(net, UNet)
    assert isinstance(scaled_network("dynunet", BASE, ProxySpec(width=0.125)), DynUNet)
    assert isinstance(scaled_network("segresnetds", BASE, ProxySpec(width=0.125)), SegResNetDS)


@pytest.mark.parametrize("make", [
    lambda: ProxySpec(width=0),
    lambda: ProxySpec(width=-0.5),
    lambda: ProxySpec(width=float("nan")),
    lambda: ProxySpec(blocks=0),
    lambda: ProxySpec(levels=0),
    lambda: ProxySpec(levels=2.5),
    lambda: scaled_kwargs("segresnet", BASE, ProxySpec(levels=5)),
    lambda: scaled_kwargs("unet", BASE, ProxySpec(levels=1)),
    lambda: scaled_kwargs("dynunet", BASE, ProxySpec(blocks=0.5)),
    lambda: scaled_kwargs("dynunet", BASE, ProxySpec(levels=2)),
    lambda: scaled_kwargs("vnet", BASE, ProxySpec()),
    lambda: scaled_kwargs("segresnet", {**BASE, "channel": 3}, ProxySpec()),
    lambda: measure_cost("segresnet", BASE, "30,32,32"),
    lambda: parse_roi("96,96"),
    lambda: pick_proxy("segresnet", BASE, 16, budget=0),
])
def test_invalid_input_raises_input_error(make):
    with pytest.raises(InputError):
        make()


def test_flop_counter_matches_hand_count_for_a_conv3d():
    conv = torch.nn.Conv3d(2, 4, kernel_size=3, padding=1)
    step = measure_module(conv, (1, 2, 8, 8, 8))
    macs = 4 * 2 * 27 * 8**3  # out channels x in channels x kernel volume x output voxels
    assert step.flops_forward == 2 * macs
    assert step.flops_backward == 2 * macs  # weight gradient only: the input does not require grad
    assert step.params == 4 * 2 * 27 + 4
    assert step.activation_bytes == 2 * 8**3 * 4  # the float32 input, saved for the weight gradient


def test_meta_device_measures_the_same_as_a_real_run():
    spec = ProxySpec(width=0.5, blocks=0.5)
    meta = measure_cost("segresnet", BASE, 16, spec)
    real = measure_cost("segresnet", BASE, 16, spec, device="cpu")
    assert meta == real and meta.flops_forward > 0 and meta.activation_bytes > 0
    bigger = measure_cost("segresnet", BASE, 32, spec)
    assert bigger.flops == 8 * meta.flops  # convolution FLOPs scale with the number of voxels


def test_pick_proxy_takes_the_largest_candidate_within_budget():
    base = {**BASE, "init_filters": 16}
    candidates = [ProxySpec(width=w, blocks=b) for w in (0.5, 0.375, 0.25) for b in (1, 0.5)]
    spec, report = pick_proxy("segresnet", base, 32, budget=1 / 8, candidates=candidates)
    full = measure_cost("segresnet", base, 32)
    assert report.flops <= full.flops / 8 and report.spec == spec == ProxySpec(width=0.375, blocks=0.5)
    within = [r for r in evaluate_candidates("segresnet", base, 32, candidates) if r.flops <= full.flops / 8]
    assert 1 < len(within) < len(candidates) and report.flops == max(r.flops for r in within)
    by_params, _ = pick_proxy("segresnet", base, 32, budget=0.3, metric="params",
                              candidates=[ProxySpec(width=0.5), ProxySpec(width=0.25)])
    assert by_params == ProxySpec(width=0.5)
    with pytest.raises(InputError, match="no candidate"):
        # 8 filters cannot shrink below 4 channels, which leaves more than 1/64 of the FLOPs
        pick_proxy("segresnet", BASE, 32, budget=1 / 64, candidates=[ProxySpec(width=0.125, blocks=0.5, levels=3)])


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "proxy_bundle", "scale", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_scale_command_prints_table_and_pick():
    done = _cli("--network", "unet", "--roi", "32,32,32", "--widths", "1,0.5,0.25", "--blocks", "1",
                "--budget", "0.5")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("#"))
    rows = [line for line in lines[header + 2:] if line.strip() and line.split()[0].isdigit()]
    assert len(rows) == 6  # 3 widths x (full, one level fewer)
    assert rows[0].split()[1:4] == ["1", "1", "full"] and rows[0].split()[5] == "1.000"
    assert sum("<= pick" in row for row in rows) == 1
    assert "pick: ProxySpec(" in done.stdout


def test_scale_command_rejects_unknown_network():
    done = _cli("--network", "resnet50")
    assert done.returncode == 2
    assert NETWORK_NAMES == tuple(NETWORKS)
    assert set(get_args(Network)) == set(NETWORK_NAMES)  # the CLI's choices are the networks there are
    assert done.stderr.strip().splitlines() == [
        "error: --network: invalid value 'resnet50' (expected one of segresnetds, segresnet, unet, dynunet, swinunetr)"]
