"""Parameter-efficient fine-tuning: each method adds or selects a few parameters and freezes the base.

One file per method, each wrapping or patching a built model (the encoder has no method branches), each with
the same lifecycle (common.py): add, switch off and on again, remove (the base back, bit for bit), merge where
the paper defines one:

    lora.py         LoRA, Hu et al. 2021                          add_lora, remove_lora, merge_lora
    qlora.py        QLoRA, Dettmers et al. 2023: LoRA over NF4    add_qlora, remove_qlora, merge_qlora, base_memory
    adapters.py     bottleneck adapters, Houlsby 2019 / Pfeiffer 2020   add_adapters, remove_adapters
    prompts.py      prompt tuning (Lester 2021), prefix tuning (Li & Liang 2021)
                    add_prompt_tuning, remove_prompt_tuning, add_prefix_tuning, remove_prefix_tuning, merge_prefix
    bitfit.py       bias-only fine-tuning, Ben Zaken et al. 2022  add_bitfit, remove_bitfit
    common.py       what the task model declares, freezing, counting, set_enabled / disabled, trainable state
    methods.py      the methods by name (`finetune --method`), adapter folders: save_finetuned, load_classifier
    peft_format.py  the peft library's on-disk LoRA format        save_peft, load_peft
"""

from .adapters import add_adapters, remove_adapters
from .bitfit import add_bitfit, remove_bitfit
from .common import count_parameters, disabled, load_trainable_state_dict, mark_only_trainable, parameter_summary, set_enabled, trainable_state_dict
from .lora import LoRALinear, add_lora, merge_lora, remove_lora
from .methods import remove_method
from .peft_format import load_peft, save_peft
from .prompts import add_prefix_tuning, add_prompt_tuning, merge_prefix, remove_prefix_tuning, remove_prompt_tuning
from .qlora import NF4Linear, add_qlora, base_memory, merge_qlora, remove_qlora

__all__ = [
    "add_lora", "add_qlora", "add_adapters", "add_prompt_tuning", "add_prefix_tuning", "add_bitfit",
    "remove_lora", "remove_qlora", "remove_adapters", "remove_prompt_tuning", "remove_prefix_tuning", "remove_bitfit", "remove_method",
    "set_enabled", "disabled", "LoRALinear", "merge_lora", "merge_prefix", "merge_qlora", "save_peft", "load_peft",
    "NF4Linear", "base_memory", "mark_only_trainable", "count_parameters", "parameter_summary", "trainable_state_dict", "load_trainable_state_dict",
]  # fmt: skip
