"""Parameter-efficient fine-tuning: each method adds or selects a few parameters and freezes the base.

One file per method, each wrapping or patching a built model (the encoder has no method branches):

    lora.py         LoRA, Hu et al. 2021                          add_lora, merge_lora
    qlora.py        QLoRA, Dettmers et al. 2023: LoRA over NF4    add_qlora, merge_qlora, base_memory
    adapters.py     bottleneck adapters, Houlsby 2019 / Pfeiffer 2020   add_adapters
    prompts.py      prompt tuning (Lester 2021), prefix tuning (Li & Liang 2021)   add_prompt_tuning, add_prefix_tuning
    bitfit.py       bias-only fine-tuning, Ben Zaken et al. 2022  add_bitfit
    common.py       freezing, counting and saving what trains
    peft_format.py  the peft library's on-disk LoRA format        save_peft, load_peft
"""

from .adapters import add_adapters
from .bitfit import add_bitfit
from .common import count_parameters, load_trainable_state_dict, mark_only_trainable, parameter_summary, trainable_state_dict
from .lora import LoRALinear, add_lora, load_lora_state_dict, lora_state_dict, merge_lora
from .peft_format import load_peft, save_peft
from .prompts import add_prefix_tuning, add_prompt_tuning, merge_prefix
from .qlora import NF4Linear, add_qlora, base_memory, merge_qlora

__all__ = [
    "add_lora", "add_qlora", "add_adapters", "add_prompt_tuning", "add_prefix_tuning", "add_bitfit",
    "LoRALinear", "merge_lora", "lora_state_dict", "load_lora_state_dict", "merge_prefix", "save_peft", "load_peft",
    "NF4Linear", "merge_qlora", "base_memory",
    "mark_only_trainable", "count_parameters", "parameter_summary", "trainable_state_dict", "load_trainable_state_dict",
]  # fmt: skip
