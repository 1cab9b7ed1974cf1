"""Every loader refuses each class of bad input from issue 18 with an InputError that names the file and the key,
tensor or module, before it allocates anything large. One test per class; tests/test_fuzz_loaders.py throws random
mutations at the same loaders, and tests/test_bad_inputs.py runs the cases through the command line.

Folders are edited without their manifest.json, so that what is tested is the loaders' own checks (a manifest
refuses any edited byte first: tests/test_manifest.py)."""

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from conftest import gguf_bytes, llama_gguf, random_causal_lm

from minitransformers.config import DecoderConfig, EncoderConfig
from minitransformers.errors import InputError
from minitransformers.io.gguf import read_gguf
from minitransformers.io.safetensors import load_file, save_file
from minitransformers.model import CausalLM, Encoder, SequenceClassifier
from minitransformers.peft.methods import apply_method, load_classifier, save_finetuned
from minitransformers.quant.qlinear import quantize_model
from minitransformers.quant.serialize import load_quantized, save_quantized
from minitransformers.train import checkpoint

DECODER = DecoderConfig(vocab_size=40, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96,
                        max_position_embeddings=64, tie_word_embeddings=False)  # fmt: skip
QUERY = "encoder.layers.0.attention.query"


@pytest.fixture(scope="module")
def folders(tiny, tmp_path_factory):
    """A classifier, a LoRA adapter over the tiny base, an NF4 quantized classifier, a decoder, a GGUF file and a
    checkpoint, each as its saver writes it."""
    root, base = tmp_path_factory.mktemp("loaders"), tiny / "model"
    SequenceClassifier.from_encoder(base, 2, "cls").save_pretrained(root / "classifier")
    lora = apply_method(SequenceClassifier.from_encoder(base, 2, "cls"), "lora", {"r": 4})
    save_finetuned(lora, root / "adapter", "lora", {"r": 4}, base)
    quantized = SequenceClassifier.from_encoder(base, 2, "cls")
    quantize_model(quantized, "nf4")
    save_quantized(quantized, root / "quantized", "nf4")
    random_causal_lm(DECODER).save_pretrained(root / "decoder")
    llama_gguf(root / "model.gguf", {k: v for k, v in vars(DECODER).items() if k != "attn_impl"}, lambda name: "Q8_0")
    model = SequenceClassifier.from_encoder(base, 2, "cls")
    state = {"step": 1, "epoch": 0, "position": 0, "best": None, "train_seconds": 0.0}
    (root / "run").mkdir()
    torch.save({"model": model.state_dict(), "optimizer": torch.optim.AdamW(model.parameters()).state_dict(), "scheduler": {}, "scaler": {},
                "state": state, "rng": checkpoint.rng_state(), "config": {}}, root / "run" / "checkpoint.pt")  # fmt: skip
    for manifest in root.glob("*/manifest.json"):
        manifest.unlink()
    return root


def edited(source: Path, tmp_path: Path, name: str, edit) -> Path:
    """A copy of the folder `source` whose file `name` is changed in place by `edit`: of its parsed JSON for a .json
    file, of its tensors for a .safetensors file."""
    folder = tmp_path / source.name
    shutil.copytree(source, folder)
    path = folder / name
    if path.suffix == ".json":
        obj = json.loads(path.read_text())
        edit(obj)
        path.write_text(json.dumps(obj))
    else:
        tensors = load_file(path)
        edit(tensors)
        save_file(tensors, path)
    return folder


def peak_growth_mib(load) -> tuple[float, str]:
    """How far the resident memory rises above where it was while `load()` runs and fails (Linux), and its message."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak, to the current size
    kib = lambda field: int(next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field)).split()[1])  # noqa: E731
    before = kib("VmRSS:")
    with pytest.raises(InputError) as err:
        load()
    return (kib("VmHWM:") - before) / 2**10, str(err.value)


def set_key(key, value):
    return lambda obj: obj.__setitem__(key, value)


# --- 1. safetensors: the header -------------------------------------------------------------------------------------


def test_a_repeated_tensor_name_in_a_header_is_refused(tmp_path):
    entry = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    header = f'{{"w":{entry},"w":{entry}}}'.encode()
    (tmp_path / "twice.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + torch.randn(1).numpy().tobytes())
    with pytest.raises(InputError, match=r"twice.safetensors: header .*the key 'w' is repeated"):
        load_file(tmp_path / "twice.safetensors")


def test_a_header_of_millions_of_tiny_values_is_refused_before_parsing(tmp_path):
    """99 MB of empty lists in __metadata__ took 21 s and 3 GB to parse before being refused; now the cost is reading the
    header's bytes once. No escape hides the commas counted. (A million tiny tensors: tests/test_fuzz_loaders.py.)"""
    header = b'{"__metadata__":{"a":[' + b"[]," * 33_000_000 + b'[]]}}'
    (tmp_path / "lists.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    growth, message = peak_growth_mib(lambda: load_file(tmp_path / "lists.safetensors"))
    assert "lists.safetensors: header holds about 33,000,002 JSON values, more than the 2,000,000" in message
    assert growth < 2 * len(header) / 2**20, growth


# --- 2. weights: floating point and finite ---------------------------------------------------------------------------


def poison(t: torch.Tensor) -> None:
    """Three entries of t made NaN, inf and -inf."""
    t.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])


@pytest.mark.parametrize(
    "kind, file, tensor, edit, problem",
    [
        ("classifier", "model.safetensors", "bert.encoder.layer.0.attention.self.query.weight", poison, "holds 3 NaN or inf value"),
        ("classifier", "model.safetensors", "classifier.bias", lambda t: t.__setitem__(0, float("nan")), "holds 1 NaN or inf value"),
        ("decoder", "model.safetensors", "model.norm.weight", poison, "holds 3 NaN or inf value"),
        ("adapter", "adapter.safetensors", f"{QUERY}.lora_A", poison, "holds 3 NaN or inf value"),
        ("quantized", "quantized.safetensors", f"{QUERY}.absmax", poison, "holds 3 NaN or inf value"),
        ("quantized", "quantized.safetensors", "encoder.embeddings.word.weight", poison, "holds 3 NaN or inf value"),
    ],
)
def test_nan_or_inf_in_a_weight_is_refused_naming_the_tensor_and_count(folders, tmp_path, kind, file, tensor, edit, problem):
    folder = edited(folders / kind, tmp_path, file, lambda state: edit(state[tensor]))
    load = {"classifier": SequenceClassifier.from_pretrained, "decoder": CausalLM.from_pretrained, "adapter": load_classifier, "quantized": load_quantized}[kind]
    name = tensor.removeprefix("bert.")
    with pytest.raises(InputError, match=rf"{folder}.*'{name}' {problem}"):
        load(folder)


@pytest.mark.parametrize("retype", [lambda t: t.long(), lambda t: t.view(torch.int32)], ids=["I64", "F32 relabelled I32"])
def test_an_integer_tensor_where_a_float_weight_belongs_is_refused_naming_it_and_its_dtype(folders, tmp_path, retype):
    key = "bert.embeddings.LayerNorm.weight"
    folder = edited(folders / "classifier", tmp_path, "model.safetensors", lambda state: state.__setitem__(key, retype(state[key])))
    with pytest.raises(InputError, match=r"'embeddings.LayerNorm.weight' is torch.int(64|32), but a weight must be floating point"):
        SequenceClassifier.from_pretrained(folder)


@pytest.mark.parametrize("quantized", [False, True])
def test_an_inf_scale_in_a_gguf_block_is_refused_naming_the_weight(folders, tmp_path, quantized):
    """A Q8_0 block's f16 scale d set to inf makes its 32 weights inf, kept as blocks or dequantized."""
    path = tmp_path / "model.gguf"
    raw = bytearray((folders / "model.gguf").read_bytes())
    at = read_gguf(folders / "model.gguf").tensors["blk.0.ffn_up.weight"].offset
    raw[at : at + 2] = torch.tensor([float("inf")], dtype=torch.float16).view(torch.uint8).numpy().tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"model.gguf: tensor 'decoder.layers.0.ffn.up.weight' holds 32 NaN or inf value"):
        CausalLM.from_pretrained(path, quantized=quantized)


# --- 3. config.json: every field's type and range, and sizes against the weights before building -------------------


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("num_attention_heads", "2", r"num_heads is '2' \(str\); expected an int"),
        ("hidden_size", 32.0, r"hidden_size is 32.0 \(float\); expected an int"),
        ("num_hidden_layers", True, r"num_layers is True \(bool\); expected an int"),
        ("vocab_size", 0, r"vocab_size is 0; it must be ≥ 1"),
        ("intermediate_size", -64, r"intermediate_size is -64; it must be ≥ 1"),
        ("type_vocab_size", [2], r"type_vocab_size is \[2\] \(list\); expected an int"),
        ("hidden_dropout_prob", 1.5, r"hidden_dropout is 1.5; it must be ≥ 0 and < 1"),
        ("layer_norm_eps", 0, r"layer_norm_eps is 0; it must be > 0"),
        ("pad_token_id", 10**5, r"pad_token_id 100000 is outside the vocabulary"),
        ("hidden_act", 3, r"hidden_act is 3 \(int\); expected a str"),
        ("num_attention_heads", 3, r"hidden_size 32 is not divisible by num_heads 3"),
        ("id2label", ["a", "b"], r"id2label \['a', 'b'\] should map the ids"),
        ("id2label", {"0": 1, "1": 2}, r"id2label's names must be strings"),
        ("pooling", "bogus", r"pooling 'bogus' is not one of"),
        ("classifier_dropout", "x", r"classifier_dropout 'x' should be a number in \[0, 1\)"),
        ("classifier_dropout", 2.0, r"classifier_dropout 2.0 should be a number in \[0, 1\)"),
    ],
)
def test_a_config_value_of_the_wrong_type_or_range_is_refused_naming_config_json_and_the_key(folders, tmp_path, key, value, problem):
    folder = edited(folders / "classifier", tmp_path, "config.json", set_key(key, value))
    with pytest.raises(InputError, match=rf"{folder / 'config.json'}: {problem}"):
        SequenceClassifier.from_pretrained(folder)


@pytest.mark.parametrize("text, problem", [("[1, 2]", "is a JSON list, expected an object"), ("{", "cannot read an HF config.json"),
                                           (b'{"\xff": 1}', "cannot read an HF config.json")])  # fmt: skip
def test_a_config_json_that_is_not_an_object_is_refused_naming_it(folders, tmp_path, text, problem):
    folder = tmp_path / "classifier"
    shutil.copytree(folders / "classifier", folder)
    (folder / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError, match=rf"{folder / 'config.json'}: {problem}"):
        SequenceClassifier.from_pretrained(folder)
    with pytest.raises(InputError, match=rf"{folder / 'config.json'}"):
        EncoderConfig.from_json(folder / "config.json")


@pytest.mark.parametrize("kind, name, load", [("classifier", "config.json", SequenceClassifier.from_pretrained), ("adapter", "adapter.json", load_classifier),
                                              ("quantized", "quantization.json", load_quantized)])  # fmt: skip
def test_a_json_file_with_a_repeated_key_or_millions_of_values_is_refused_naming_it(folders, tmp_path, kind, name, load):
    """A repeated key would be read as its last value; 48 MB of [] would take gigabytes to parse."""
    folder = tmp_path / kind
    shutil.copytree(folders / kind, folder)
    text = (folder / name).read_text()
    (folder / name).write_text(text.replace("{", '{"labels": 1, "labels": 2, ', 1))
    with pytest.raises(InputError, match=rf"{folder / name}: cannot read .*the key 'labels' is repeated"):
        load(folder)
    (folder / name).write_bytes(b'{"x": [' + b"[]," * 16_000_000 + b"[]]}")
    growth, message = peak_growth_mib(lambda: load(folder))
    assert f"{folder / name}: holds about 16,000,001 JSON values, more than the 1,000,000" in message and growth < 2 * 48, growth


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("num_key_value_heads", 3, r"num_heads 4 is not a multiple of num_kv_heads 3"),
        ("rope_theta", "x", r"rope_parameters / rope_theta .*: expected a number rope_theta"),
        ("rms_norm_eps", -1, r"rms_norm_eps is -1; it must be > 0"),
        ("tie_word_embeddings", "yes", r"tie_word_embeddings is 'yes' \(str\); expected a bool"),
        ("max_position_embeddings", 0, r"max_position_embeddings is 0; it must be ≥ 1"),
    ],
)
def test_a_decoder_config_value_of_the_wrong_type_or_range_is_refused_naming_the_key(folders, tmp_path, key, value, problem):
    folder = edited(folders / "decoder", tmp_path, "config.json", set_key(key, value))
    with pytest.raises(InputError, match=rf"{folder / 'config.json'}: {problem}"):
        CausalLM.from_pretrained(folder)


@pytest.mark.parametrize(
    "kind, key, value, load",
    [
        ("classifier", "num_hidden_layers", 10000, SequenceClassifier.from_pretrained),
        ("classifier", "vocab_size", 2**23, SequenceClassifier.from_pretrained),
        ("decoder", "num_hidden_layers", 2**22, CausalLM.from_pretrained),
        ("decoder", "vocab_size", 2**23, CausalLM.from_pretrained),
        ("quantized", "num_hidden_layers", 10000, load_quantized),
    ],
)
def test_sizes_in_config_json_are_checked_against_the_weights_before_the_model_is_built(folders, tmp_path, kind, key, value, load):
    """Each would take gigabytes as a model (10,000 layers; a vocabulary of 8 M rows), or minutes and gigabytes as a map
    of names (4 M decoder layers): refused in a few MiB."""
    folder = edited(folders / kind, tmp_path, "config.json", set_key(key, value))
    growth, message = peak_growth_mib(lambda: load(folder))
    assert str(folder) in message and growth < 64, (growth, message)


def test_a_num_labels_above_the_saved_head_is_refused_before_its_names_are_made(folders, tmp_path):
    """10⁸ labels without id2label: 10⁸ names "LABEL_i" were made (gigabytes) before the head was compared."""
    folder = edited(folders / "classifier", tmp_path, "config.json", lambda c: (c.pop("id2label"), c.pop("label2id"), c.update(num_labels=10**8)))
    growth, message = peak_growth_mib(lambda: SequenceClassifier.from_pretrained(folder))
    assert f"{folder / 'config.json'}: num_labels is 100000000, but the saved head has 2 rows" in message and growth < 64, growth


def test_an_encoder_config_with_fewer_layers_than_the_weights_is_refused(tiny, tmp_path):
    folder = edited(tiny / "model", tmp_path, "config.json", set_key("num_hidden_layers", 1))
    with pytest.raises(InputError, match=r"config.json: num_hidden_layers is 1, but the weights hold 2 layers"):
        Encoder.from_pretrained(folder)


# --- 4. quantized folders: quantization.json's schema, layouts against the tensors -----------------------------------


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda q: q.pop("modules"), r"quantization.json: expected an object with a method \(string\), options and modules"),
        (lambda q: q["modules"][QUERY].pop("layout"), rf"quantization.json: module {QUERY}: expected {{\"class\": ..., \"layout\""),
        (lambda q: q["modules"][QUERY].__setitem__("class", "Foo"), rf"quantization.json: module {QUERY} has class 'Foo'; known: \['SparseLinear', 'W8A8Linear', 'WeightOnlyLinear'\]"),
        (lambda q: q["modules"].__setitem__("encoder.layers.5.ffn.up", q["modules"][QUERY]), r"quantization.json: module encoder.layers.5.ffn.up: layout shape \[32, 32\] claims 1,024 weights, but quantized.safetensors holds 0 bytes"),
        (lambda q: q["modules"].__setitem__("encoder.embeddings.norm", {**q["modules"][QUERY], "layout": {**q["modules"][QUERY]["layout"], "shape": [8, 8]}}),
         r"quantization.json: module encoder.embeddings.norm is not a Linear layer of this model"),
        (lambda q: q["modules"][QUERY]["layout"].__setitem__("shape", [10**6, 10**6]), rf"quantization.json: module {QUERY}: layout shape .* claims 1,000,000,000,000 weights, but quantized.safetensors holds 768 bytes"),
        (lambda q: q["modules"][QUERY]["layout"].__setitem__("block_size", 10**9), rf"quantization.json: module {QUERY}: layout block_size is 1000000000; a count in a layout is a positive int"),
        (lambda q: q["modules"][QUERY]["layout"].__setitem__("block_size", 32), rf"quantized.safetensors: module {QUERY}: cannot rebuild it"),
        (lambda q: q["modules"][QUERY]["layout"].__setitem__("shape", [16, 64]), rf"quantized.safetensors: module {QUERY}: cannot rebuild it"),
    ],
)  # fmt: skip
def test_a_quantization_json_that_does_not_fit_the_model_or_its_tensors_is_refused_naming_the_module(folders, tmp_path, edit, problem):
    folder = edited(folders / "quantized", tmp_path, "quantization.json", edit)
    with pytest.raises(InputError, match=rf"{folder}/{problem}"):
        load_quantized(folder)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda s: s.__setitem__(f"{QUERY}.codebook", s[f"{QUERY}.codebook"][:8].clone()), rf"module {QUERY}: cannot rebuild it .*IndexError"),
        (lambda s: s.__setitem__(f"{QUERY}.codes", s[f"{QUERY}.codes"].float()), rf"module {QUERY}: cannot rebuild it .*uint8"),
        (lambda s: s.pop(f"{QUERY}.absmax"), rf"module {QUERY}: WeightOnlyLinear with layout .* stores \['absmax', 'codebook', 'codes'\]"),
        (lambda s: s.__setitem__("classifier.weight", s["classifier.weight"].half()), r"the weights outside quantized layers mix dtypes \(.*classifier.weight is torch.float16\)"),
        (lambda s: s.__setitem__("bogus", torch.randn(2)), r"does not match config.json and quantization.json: .*Unexpected key\(s\) in state_dict: \"bogus\""),
    ],
)
def test_quantized_tensors_that_a_layer_cannot_compute_with_are_refused_at_load(folders, tmp_path, edit, problem):
    """Each of these loaded before and failed at the first prediction, or mixed dtypes there."""
    folder = edited(folders / "quantized", tmp_path, "quantized.safetensors", edit)
    with pytest.raises(InputError, match=rf"{folder}/quantized.safetensors:? {problem}") as err:
        load_quantized(folder)
    assert "\n" not in str(err.value)


# --- 5. adapter folders: adapter.json's schema, the saved tensors against the method's ------------------------------


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda a: a["options"].__setitem__("bogus", 1), r"options \['bogus'\] are not lora's; it takes \['alpha', 'dropout', 'r', 'targets'\]"),
        (lambda a: a.pop("base_model"), r"expected an object with method, options, base_model, labels"),
        (lambda a: a.__setitem__("labels", [0, 1]), r"labels \[0, 1\] should be a non-empty list of names"),
        (lambda a: a.__setitem__("pooling", "max"), r"pooling 'max' / classifier_dropout 0.0: expected pooler, cls or mean"),
        (lambda a: a.__setitem__("method", "full"), r"method 'full' is not an adapter method"),
        (lambda a: a["options"].__setitem__("r", "4"), r"options \{'r': '4'\} do not build lora \(TypeError"),
    ],
)
def test_an_adapter_json_out_of_schema_is_refused_naming_it(folders, tmp_path, edit, problem):
    folder = edited(folders / "adapter", tmp_path, "adapter.json", edit)
    with pytest.raises(InputError, match=rf"{folder}/adapter.json: {problem}"):
        load_classifier(folder)


def test_an_adapter_rank_the_saved_tensors_do_not_have_is_refused_before_allocating(folders, tmp_path):
    """r = 10⁸ would allocate a few GB of A and B: the dry run on the meta device compares shapes first."""
    folder = edited(folders / "adapter", tmp_path, "adapter.json", lambda a: a["options"].__setitem__("r", 10**8))
    growth, message = peak_growth_mib(lambda: load_classifier(folder))
    assert f"{folder}/adapter.safetensors: mis-shaped keys" in message and f"{QUERY}.lora_A: checkpoint (4, 32), model (100000000, 32)" in message
    assert growth < 64, growth


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda s: s.pop(f"{QUERY}.lora_A"), rf"missing keys \['{QUERY}.lora_A'\], unexpected keys \[\]"),
        (lambda s: s.__setitem__("encoder.bogus", torch.randn(2)), r"missing keys \[\], unexpected keys \['encoder.bogus'\]"),
        (lambda s: s.__setitem__(f"{QUERY}.lora_B", torch.randn(3, 3)), rf"mis-shaped keys \['{QUERY}.lora_B: checkpoint \(3, 3\), model \(32, 4\)'\]"),
        (lambda s: s.__setitem__("classifier.weight", torch.randn(3, 32)), r"mis-shaped keys \['classifier.weight: checkpoint \(3, 32\), model \(2, 32\)'\]"),
    ],
)
def test_adapter_tensors_that_do_not_fit_the_method_are_refused_naming_them(folders, tmp_path, edit, problem):
    folder = edited(folders / "adapter", tmp_path, "adapter.safetensors", edit)
    with pytest.raises(InputError, match=rf"{folder}/adapter.safetensors: (checkpoint does not match lora over .*; )?{problem}"):
        load_classifier(folder)


# --- 6. checkpoints ---------------------------------------------------------------------------------------------------


class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def torn(path: Path) -> bytes:
    return path.read_bytes()[: path.stat().st_size // 2]


def plain_list(path: Path) -> bytes:
    torch.save([1, 2], path)
    return path.read_bytes()


def missing(part: str):
    return lambda path: torch.save({k: v for k, v in torch.load(path, weights_only=True).items() if k != part}, path) or path.read_bytes()


def numpy_keys_as_a_list(path: Path) -> bytes:
    ckpt = torch.load(path, weights_only=True)
    ckpt["rng"]["numpy"]["keys"] = ckpt["rng"]["numpy"]["keys"].tolist()
    torch.save(ckpt, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda path: b"", r"not a readable checkpoint \(EOFError"),
        (torn, r"not a readable checkpoint \(.*\); is it torn or damaged\?"),
        (lambda path: pickle.dumps(Payload()), r"not a minitransformers checkpoint \(unsafe or foreign pickle refused; nothing in it was run\)"),
        (plain_list, r"holds a list, not a checkpoint's dict"),
        (missing("optimizer"), r"not a whole minitransformers checkpoint: optimizer \(missing\)"),
        (numpy_keys_as_a_list, r"not a whole minitransformers checkpoint: rng.numpy.keys \(list\)"),
    ],
)  # fmt: skip
def test_a_damaged_foreign_or_incomplete_checkpoint_is_refused_in_one_line(folders, tmp_path, damage, problem, capsys, recwarn):
    path = tmp_path / "checkpoint.pt"
    shutil.copy(folders / "run" / "checkpoint.pt", path)
    path.write_bytes(damage(path))
    with pytest.raises(InputError, match=rf"{path}: {problem}") as err:
        checkpoint.load(path)
    assert "\n" not in str(err.value) and "this ran" not in capsys.readouterr().out and not recwarn.list


# --- 7. GGUF: metadata values and strings ------------------------------------------------------------------------------


def test_a_gguf_hyperparameter_of_the_wrong_type_is_refused_naming_it(folders, tmp_path):
    f = read_gguf(folders / "model.gguf")
    tensors = {name: (t.type, list(reversed(t.shape)), f.raw(name).numpy().tobytes()) for name, t in f.tensors.items()}
    value_type = {int: 4, float: 6, str: 8}  # u32, f32, string
    metadata = {key: (value_type[type(value)], value) for key, value in f.metadata.items() if type(value) in value_type}
    metadata["llama.block_count"] = (8, "2")
    (tmp_path / "typed.gguf").write_bytes(gguf_bytes(metadata, tensors))
    with pytest.raises(InputError, match=r"typed.gguf: hyperparameters \{'num_layers': '2'\} must be positive numbers"):
        CausalLM.from_pretrained(tmp_path / "typed.gguf")


@pytest.mark.parametrize(
    "metadata, problem",
    [
        ([("general.architecture", (8, "llama")), ("general.architecture", (8, "llama"))], r"metadata key 'general.architecture': appears twice"),
        ({"general.name": b"\x08\x00\x00\x00" + struct.pack("<Q", 2) + b"\xff\xfe"}, r"metadata key 'general.name': string is not valid UTF-8"),
        ({"general.name": b"\x08\x00\x00\x00" + struct.pack("<Q", 2**40)}, r"metadata key 'general.name': string of 1099511627776 bytes needs"),
        ({"general.tags": b"\x09\x00\x00\x00\x08\x00\x00\x00" + struct.pack("<Q", 2**50)}, r"metadata key 'general.tags': array of 1125899906842624 STRING needs at least"),
    ],
)
def test_gguf_metadata_that_cannot_be_right_is_refused_naming_the_key(tmp_path, metadata, problem):
    (tmp_path / "bad.gguf").write_bytes(gguf_bytes(metadata, {}))
    with pytest.raises(InputError, match=rf"bad.gguf: {problem}"):
        CausalLM.from_pretrained(tmp_path / "bad.gguf")
