"""The recipes run from their configs alone, exactly as the CLI runs them; the CLI only maps flags to a config;
and nothing in the library imports the CLI. On the tiny model and synthetic reviews."""

import ast
import json
from pathlib import Path

import pytest
import torch
from conftest import final_weights, finetune_argv, finetune_config

from minitransformers.cli import build_parser, main, method_options
from minitransformers.peft.adapters import AdapterConfig
from minitransformers.peft.lora import LoRAConfig
from minitransformers.peft.prompts import PrefixTuningConfig
from minitransformers.peft.qlora import ALL_LINEAR, QLoRAConfig
from minitransformers.recipes import evaluate, finetune

PACKAGE = Path(__file__).resolve().parent.parent / "minitransformers"


def test_finetune_from_a_config_gives_the_weights_and_metrics_of_the_same_cli_run(tiny, tmp_path, capsys):  # noqa: F811
    main(finetune_argv(tiny, tmp_path / "cli", "--max-steps", "6", "--no-bucket", "--method", "lora", "--lora-targets", "query", "value", "up"))
    metrics = finetune.run(finetune_config(tiny, tmp_path / "config", max_steps=6, bucket=False, method="lora", method_options=LoRAConfig(targets=("query", "value", "up"))))
    cli, config = final_weights(tmp_path / "cli"), final_weights(tmp_path / "config")
    assert cli.keys() == config.keys() and all(torch.equal(cli[k], config[k]) for k in cli)
    written = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["method_options"] == written["method_options"] == {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["query", "value", "up"]}
    assert metrics["test_accuracy"] == written["test_accuracy"] and metrics["validation_loss"] == written["validation_loss"]

    capsys.readouterr()
    main(["evaluate", "--model", str(tmp_path / "cli"), "--data", str(tiny / "reviews.csv"), "--device", "cpu", "--json"])
    through_cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    direct = evaluate.run(evaluate.EvaluateConfig(model=str(tmp_path / "cli"), data=str(tiny / "reviews.csv"), device="cpu"))
    assert {k: v for k, v in direct.items() if k != "latency_ms_per_batch"} == {k: v for k, v in through_cli.items() if k != "latency_ms_per_batch"}


@pytest.mark.parametrize("method, flags, expected", [
    ("full", [], None),
    ("lora", [], LoRAConfig()),  # query and value, as Hu et al.
    ("qlora", [], QLoRAConfig(targets=ALL_LINEAR, double_quant=True)),  # every Linear, as Dettmers et al.
    ("qlora", ["--lora-targets", "query", "--no-double-quant", "--lora-r", "4"], QLoRAConfig(r=4, targets=("query",), double_quant=False)),
    ("houlsby", ["--reduction-factor", "8", "--no-adapter-layernorm"], AdapterConfig(reduction_factor=8, train_layernorm=False)),
    ("prefix", ["--no-prefix-projection", "--num-virtual-tokens", "4"], PrefixTuningConfig(num_virtual_tokens=4, reparameterize=False)),
])  # fmt: skip
def test_method_flags_map_to_the_methods_dataclass_and_unset_ones_to_its_defaults(tiny, tmp_path, method, flags, expected):  # noqa: F811
    args = build_parser().parse_args(finetune_argv(tiny, tmp_path, "--method", method, *flags))
    assert method_options(args) == expected


def imported_modules(path: Path) -> set[str]:
    """The absolute names of every module (and imported name) that the file imports, relative imports resolved."""
    package = ["minitransformers", *path.relative_to(PACKAGE).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])]) if node.level else node.module
            names |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    return names


def test_no_module_of_the_library_but_main_imports_the_cli():
    assert "minitransformers.cli" in imported_modules(PACKAGE / "__main__.py")  # the check sees the one import there is
    importers = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__main__.py" and "minitransformers.cli" in imported_modules(p)]
    assert importers == []
