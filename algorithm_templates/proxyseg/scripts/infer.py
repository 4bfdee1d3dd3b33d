"""Inference for proxyseg: ``InferClass(config_file, **override).infer(image_file)`` -> softmax probabilities.

``BundleAlgo.get_inferer`` imports this file as a loose module and passes every file in ``configs/`` plus the
ensemble's prediction parameters; ``AlgoEnsemble`` averages the returned channel-first probability MetaTensors.
The network and preprocessing are rebuilt from what training stored in ``model.pt``, so a proxy-trained model
is served with the exact architecture and preprocessing it was trained with.

CLI: ``python infer.py run --config_file=<configs> [--data_list_key=testing] [--output_dir=...]`` writes label maps.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Sequence


def load_pipeline():
    """Import the sibling ``pipeline.py`` by path, under a name unique to this folder."""
    here = os.path.dirname(os.path.abspath(__file__))
    name = "proxyseg_pipeline_" + str(abs(hash(here)))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(here, "pipeline.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class InferClass:
    """Sliding-window inference with the best checkpoint of one trained fold."""

    def __init__(self, config_file: str | Sequence[str] | None = None, rank: int = 0, **override: Any) -> None:
        import torch

        pl = load_pipeline()
        # The ensemble passes its own parameters (e.g. image_save_func) alongside config overrides: keep only keys
        # the config knows.
        parser = pl.load_config(config_file, {})
        known = {k: v for k, v in override.items() if str(k).replace("::", "#").split("#")[0] in parser.get()}
        for key, value in known.items():
            parser[str(key).replace("::", "#")] = pl._coerce(value)
        keys = ("ckpt_path", "infer", "sw_batch_size", "sw_overlap", "amp")
        self.cfg = {k: parser.get_parsed_content(k) for k in keys}
        ckpt_name = str(self.cfg["infer"]["ckpt_name"])
        if not os.path.isfile(ckpt_name):
            raise FileNotFoundError(f"{ckpt_name}: no trained model (run train.py first)")
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        else:
            self.device = torch.device("cpu")
        ckpt = torch.load(ckpt_name, map_location="cpu", weights_only=True)
        net = ckpt["network"]
        self.record = net
        self.model = pl.build_network(net["name"], net["kwargs"])
        self.model.load_state_dict(ckpt["state_dict"])
        self.model.to(self.device).eval()
        self.use_amp = bool(self.cfg["amp"]) and self.device.type == "cuda"

        from monai.transforms import Compose

        self.pre = Compose(pl.deterministic_transforms(net["preprocessing"], keys=["image"]))

    def infer(self, image_file: str | Sequence[str] | dict) -> Any:
        """Channel-first softmax probabilities in the input image's space (a MetaTensor on the CPU)."""
        import torch
        from monai.data import MetaTensor
        from monai.inferers import sliding_window_inference
        from monai.transforms import Invertd

        from proxy_bundle.validation import check_case

        item = dict(image_file) if isinstance(image_file, dict) else {"image": image_file}
        image_in = item["image"]
        check_case(image_in, channels=int(self.record["preprocessing"].get("input_channels", 1)),
                   case=os.fspath(image_in if isinstance(image_in, (str, os.PathLike)) else image_in[0]),
                   require_positive=False)
        data = self.pre({"image": image_in})
        image = data["image"]
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=self.use_amp):
            logits = sliding_window_inference(
                image[None].to(self.device),
                roi_size=self.record["roi_size"],
                sw_batch_size=int(self.record.get("sw_batch_size", self.cfg["sw_batch_size"])),
                predictor=self.model,
                overlap=float(self.record.get("sw_overlap", self.cfg["sw_overlap"])),
                mode="gaussian",
            )
        prob = torch.softmax(logits.float(), dim=1)[0].cpu()
        data["pred"] = MetaTensor(prob, meta=image.meta, applied_operations=image.applied_operations)
        # Undo orientation/resampling so the probabilities line up with the original image voxels.
        data = Invertd(keys="pred", transform=self.pre, orig_keys="image", nearest_interp=False)(data)
        return data["pred"]

    def batch_infer(self, image_files: Sequence[Any]) -> list:
        """:meth:`infer` for several images."""
        return [self.infer(f) for f in image_files]


def run(
    config_file: str | Sequence[str],
    data_list_key: str = "testing",
    output_dir: str | None = None,
    **override: Any,
) -> None:
    """Segment every image of ``data_list_key`` in the datalist and save label maps (NIfTI) to ``output_dir``."""
    import json

    import torch
    from monai.transforms import SaveImage

    pl = load_pipeline()
    parser = pl.load_config(config_file, override)
    infer = InferClass(config_file, **override)
    base_dir = str(parser.get_parsed_content("data_file_base_dir"))
    datalist = parser.get_parsed_content("data_list_file_path")
    if not datalist or not os.path.isfile(str(datalist)):
        raise pl.ConfigError(f"{datalist}: datalist not found (data_list_file_path)")
    with open(str(datalist)) as fh:
        items = json.load(fh).get(data_list_key, [])
    if not items:
        raise pl.ConfigError(f"{datalist}: no '{data_list_key}' entries to segment")
    images = []
    for item in items:
        image = item["image"] if isinstance(item, dict) else item
        images.append(os.path.join(base_dir, image) if isinstance(image, str)
                      else [os.path.join(base_dir, i) for i in image])
    from proxy_bundle.validation import gate_cases

    # Every image is checked before the first prediction is written.
    gate_cases([{"image": im} for im in images], channels=int(infer.record["preprocessing"].get("input_channels", 1)),
               where=str(datalist), require_positive=False)
    out = output_dir or os.path.join(str(parser.get_parsed_content("bundle_root")), f"prediction_{data_list_key}")
    saver = SaveImage(
        output_dir=out, output_postfix="seg", separate_folder=False, print_log=False, output_dtype="uint8"
    )
    for image in images:
        prob = infer.infer(image)
        saver(torch.argmax(prob, dim=0, keepdim=True).to(torch.uint8))
    print(f"proxyseg: {len(items)} prediction(s) written to {out}")


def _main() -> None:
    import fire

    from proxy_bundle.errors import ProxyBundleError

    try:
        fire.Fire({"run": run})
    except (load_pipeline().ConfigError, ProxyBundleError, FileNotFoundError) as err:
        # Bad settings or inputs: one line naming the key or file, no traceback.
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    _main()
