"""A sharded --fsdp checkpoint as one plain state dict, and as an HF folder that loads without torch.distributed.

`model_state(out)` reads the model part of the checkpoint that `out/checkpoint.json` names
(sharded_checkpoint.py) in one process: DCP's metadata (`FileSystemReader.read_metadata`) gives every tensor's
full shape and dtype, an empty tensor of that shape is made for each `model.*` entry, and `dcp.load(no_dist=True)`
fills it from whichever shards hold its pieces; the optimizer state is not read. The same as
`torch.distributed.checkpoint.format_utils.dcp_to_torch_save`, without the optimizer and the temporary file.

`consolidate(out, dest)` puts those weights into the model the run saved as its best (`out` holds one, as HF folder or
adapter folder, whenever it has a checkpoint) and saves it into `dest` the same way, with the run's tokenizer: the
latest step's model, loadable as `out` is.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from ..errors import InputError
from ..io import manifest
from ..model import SequenceClassifier
from ..model.causal_lm import CausalLM
from ..peft.methods import CONFIG_FILE, load_classifier, read_adapter_config, save_finetuned
from . import sharded_checkpoint

RUN_FILES = {"metrics.json", "metrics.jsonl", manifest.MANIFEST, sharded_checkpoint.POINTER, "checkpoint.pt"}  # the run's, not the model's


def model_state(out: str | Path) -> dict[str, torch.Tensor]:
    """The full model weights (name -> tensor, on CPU) of the sharded checkpoint in the run folder `out`."""
    out = Path(out)
    folder = sharded_checkpoint.published(out)
    if folder is None:
        raise InputError(f"{out}: no {sharded_checkpoint.POINTER}: not the folder of a --fsdp run that reached its first checkpoint")
    metadata = FileSystemReader(folder).read_metadata()
    model = {key.removeprefix("model."): torch.empty(m.size, dtype=m.properties.dtype)
             for key, m in metadata.state_dict_metadata.items() if key.startswith("model.") and isinstance(m, TensorStorageMetadata)}  # fmt: skip
    with warnings.catch_warnings():  # DCP warns that no process group means one process: that is the intent
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": model}, checkpoint_id=folder, no_dist=True)
    return model


def saved_model(out: Path):
    """The model that `out` holds as its best, and how to save one like it: -> (model, save(model, folder))."""
    if (out / CONFIG_FILE).is_file():  # finetune --method NAME: base + method + the trained tensors
        config = read_adapter_config(out / CONFIG_FILE)
        return load_classifier(out), lambda model, folder: save_finetuned(model, folder, config["method"], config["options"], config["base_model"])
    architectures = json.loads((out / "config.json").read_text()).get("architectures", []) if (out / "config.json").is_file() else []
    if "BertForSequenceClassification" in architectures:
        return SequenceClassifier.from_pretrained(out), lambda model, folder: model.save_pretrained(folder)
    if "LlamaForCausalLM" in architectures:  # sft and dpo save LoRA merged in, so only a full fine-tune's names fit
        return CausalLM.from_pretrained(out), lambda model, folder: model.save_pretrained(folder)
    raise InputError(f"{out}: holds no model that consolidate knows (config.json architectures {architectures}, no {CONFIG_FILE}); "
                     "it converts finetune, sft and dpo run folders")  # fmt: skip


def consolidate(out: str | Path, dest: str | Path) -> Path:
    """The latest step of the --fsdp run in `out` as a folder `dest` of the kind `out` holds (an HF folder, or an
    adapter folder over the same base), with the run's tokenizer files. -> dest."""
    out, dest = Path(out), Path(dest)
    weights = model_state(out)
    model, save = saved_model(out)
    missing, unexpected = sorted(set(model.state_dict()) - set(weights)), sorted(set(weights) - set(model.state_dict()))
    if missing or unexpected:
        raise InputError(f"{out}: the sharded checkpoint's tensors do not fit the model the run saved (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                         "sft and dpo with LoRA save the merged model, which the unmerged checkpoint cannot fill: consolidate full fine-tunes of those")  # fmt: skip
    model.load_state_dict(weights)
    with manifest.publish(dest, derived_from={"consolidated_from": str(out.resolve()), "step": json.loads((out / sharded_checkpoint.POINTER).read_text())["step"]}) as stage:
        for path in out.iterdir():
            if path.is_file() and path.name not in RUN_FILES:
                shutil.copy2(path, stage / path.name)  # the tokenizer; the model's own files are written over next
        save(model, stage)
    return dest
