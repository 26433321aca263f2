"""Training the CLM pre-layer on tiny random Llama / Qwen2 models (CPU, seconds)."""

from __future__ import annotations

import hashlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clm_local.cli import main, train_cmd
from safetensors.torch import load_file
from tiny_hf import PAIRS, write_jsonl, write_tiny_gguf
from transformers import AutoModelForCausalLM

from clm_local.errors import ClmError
from clm_local.training import TrainOptions, train
from clm_local.training.base_model import load_model, load_tokenizer, resolve_base
from clm_local.training.checkpoint import read_manifest
from clm_local.training.clm_block import (
    bypass_pre_layer,
    cached_logits,
    check_identity,
    insert_pre_layer,
    load_pre_layer_state,
)
from clm_local.training.data import BadRecord, Example, collate, load_dataset, render, truncate
from clm_local.training.objectives import response_logprobs
from clm_local.training.trainer import Trainer

ARCHITECTURES = ("llama", "qwen2")
FAST = dict(lr=1e-2, batch_size=2, progress=False)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_records(path: Path) -> list[dict]:
    return [
        r for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"
    ]


def clm_model(base: Path, checkpoint: Path | None = None):
    """The base with P inserted, P loaded from `checkpoint` when given."""
    model = load_model(resolve_base(base), torch.float32, torch.device("cpu"))
    insert_pre_layer(model)
    if checkpoint is not None:
        load_pre_layer_state(model, load_file(checkpoint / "pre_layer.safetensors"))
    return model


# -- the CLM construction ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_pre_layer_is_identity_at_initialisation(tiny, arch):
    model = load_model(resolve_base(tiny[arch]), torch.float32, torch.device("cpu"))
    n = model.config.num_hidden_layers
    input_ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    base_logits = model(input_ids).logits
    base_cached = cached_logits(model, input_ids)
    base_generated = model.generate(input_ids, max_new_tokens=6, do_sample=False)

    pre_layer = insert_pre_layer(model)

    layers = model.model.layers
    assert model.config.num_hidden_layers == len(layers) == n + 1
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(n + 1))
    if arch == "qwen2":
        assert len(model.config.layer_types) == n + 1
    assert not pre_layer.self_attn.o_proj.weight.any() and not pre_layer.mlp.down_proj.weight.any()
    assert torch.equal(pre_layer.self_attn.q_proj.weight, layers[1].self_attn.q_proj.weight)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("model.layers.0.") for name in trainable)
    assert torch.equal(model(input_ids).logits, base_logits)
    check_identity(model, base_cached, input_ids)
    # Greedy generation goes through the KV cache: each block must use its own cache slot.
    assert torch.equal(model.generate(input_ids, max_new_tokens=6, do_sample=False), base_generated)


def test_identity_check_catches_shared_cache_slots(tiny):
    model = load_model(resolve_base(tiny["llama"]), torch.float32, torch.device("cpu"))
    input_ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    base_cached = cached_logits(model, input_ids)
    insert_pre_layer(model)
    model.model.layers[1].self_attn.layer_idx = 0  # block 0 now reads and writes P's cache slot
    with pytest.raises(ClmError, match="does not reproduce the base"):
        check_identity(model, base_cached, input_ids)


# -- training --------------------------------------------------------------------------------------


def test_only_the_pre_layer_changes(tiny, pairs, tmp_path):
    trainer = Trainer(tiny["qwen2"], pairs, tmp_path / "ckpt", TrainOptions(max_steps=2, **FAST))
    before = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("model.layers.0.") for name in changed)


def test_reference_path_is_the_base_model(tiny, pairs, tmp_path):
    train(tiny["llama"], pairs, tmp_path / "ckpt", TrainOptions(max_steps=3, **FAST))
    model = clm_model(tiny["llama"], tmp_path / "ckpt")
    base = AutoModelForCausalLM.from_pretrained(tiny["llama"], dtype=torch.float32).eval()
    dataset = load_dataset(pairs, load_tokenizer(resolve_base(tiny["llama"])), "dpo", 128)
    batch = collate(dataset.examples, 0, torch.device("cpu"))
    with torch.no_grad():
        expected, _ = response_logprobs(base, batch)
        with bypass_pre_layer(model):
            reference, _ = response_logprobs(model, batch)
        policy, _ = response_logprobs(model, batch)
    torch.testing.assert_close(reference, expected)
    assert not torch.allclose(policy, expected)  # the trained P does change the aligned path


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dpo_learns_a_separable_preference(tiny, pairs, tmp_path, arch):
    result = train(tiny[arch], pairs, tmp_path / "ckpt", TrainOptions(max_steps=25, eval_data=pairs, **FAST))
    records = train_records(tmp_path / "ckpt")
    assert records[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # P == identity: policy == reference
    assert records[0]["reward_accuracy"] == 0.0
    assert records[-1]["loss"] < 0.45
    assert all(r["reward_accuracy"] == 1.0 for r in records[-5:])
    assert result.metrics["eval"]["reward_accuracy"] == 1.0
    assert result.metrics["eval"]["reward_margin"] > 0.5


def test_bf16_compute_keeps_float32_master_weights(tiny, pairs, tmp_path):
    options = TrainOptions(max_steps=10, dtype="bf16", export_hf=tmp_path / "hf", **FAST)
    result = train(tiny["qwen2"], pairs, tmp_path / "ckpt", options)
    assert result.manifest["compute_dtype"] == "bf16"
    assert all(
        t.dtype == torch.float32 for t in load_file(tmp_path / "ckpt" / "pre_layer.safetensors").values()
    )
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    records = train_records(tmp_path / "ckpt")
    assert records[-1]["loss"] < records[0]["loss"] - 0.1


def test_sft_raises_the_likelihood_of_completions(tiny, tmp_path):
    data = write_jsonl(
        tmp_path / "sft.jsonl",
        [{"prompt": p, "completion": c} for p, c, _ in PAIRS[:2]]
        + [
            {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]}
            for p, c, _ in PAIRS[2:]
        ],
    )
    result = train(
        tiny["llama"],
        data,
        tmp_path / "ckpt",
        TrainOptions(objective="sft", max_steps=15, eval_data=data, **FAST),
    )
    records = train_records(tmp_path / "ckpt")
    assert records[-1]["loss"] < records[0]["loss"] - 0.3  # nats per response token
    assert result.metrics["eval"]["loss"] < records[0]["loss"]
    assert set(result.metrics["train"]) == {"loss", "grad_norm"}


def test_dpo_can_start_from_an_sft_checkpoint(tiny, pairs, tmp_path):
    sft_data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": p, "completion": c} for p, c, _ in PAIRS])
    train(tiny["llama"], sft_data, tmp_path / "sft", TrainOptions(objective="sft", max_steps=3, **FAST))
    options = TrainOptions(max_steps=1, init_from=tmp_path / "sft", **FAST)
    train(tiny["llama"], pairs, tmp_path / "dpo", options)
    first = train_records(tmp_path / "dpo")[0]
    assert first["chosen_reward"] != 0.0  # P started trained, so the policy already differs from the base
    assert read_manifest(tmp_path / "dpo")["hyperparameters"]["init_from"] == str(
        (tmp_path / "sft").resolve()
    )
    with pytest.raises(ClmError, match="different base"):
        train(tiny["qwen2"], pairs, tmp_path / "other", options)


def test_reference_log_probs_cover_only_the_pairs_the_run_reads(tiny, pairs, tmp_path):
    """--max-steps 1 computes the reference of that step's pairs only (NaN for the others in the
    cache); a longer run on the same CKPT computes the pairs it lacks, with the values of a run
    that computed them all at once."""
    from clm_local.training.checkpoint import REFERENCE_FILE

    train(tiny["llama"], pairs, tmp_path / "ckpt", TrainOptions(max_steps=1, **FAST))
    short = load_file(tmp_path / "ckpt" / REFERENCE_FILE)["train"]
    assert len(short) == 4 and int((~torch.isnan(short).any(dim=1)).sum()) == 2  # one step of 2 pairs
    train(tiny["llama"], pairs, tmp_path / "ckpt", TrainOptions(resume=True, epochs=2, **FAST))
    longer = load_file(tmp_path / "ckpt" / REFERENCE_FILE)["train"]
    assert not torch.isnan(longer).any()
    computed = ~torch.isnan(short).any(dim=1)
    assert torch.equal(longer[computed], short[computed])  # kept, not computed again
    train(tiny["llama"], pairs, tmp_path / "full", TrainOptions(max_steps=2, **FAST))
    torch.testing.assert_close(longer, load_file(tmp_path / "full" / REFERENCE_FILE)["train"])


def test_resume_after_an_interruption_reproduces_an_uninterrupted_run(tiny, pairs, tmp_path, monkeypatch):
    options = dict(max_steps=6, save_every=2, grad_accum=2, seed=3, **FAST)
    train(tiny["llama"], pairs, tmp_path / "straight", TrainOptions(**options))

    original_step = Trainer._train_step

    def interrupted_step(self):
        if self.step == 4:  # during step 5: the checkpoint of step 4 must survive
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(Trainer, "_train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train(tiny["llama"], pairs, tmp_path / "resumed", TrainOptions(**options))
    assert read_manifest(tmp_path / "resumed")["progress"]["step"] == 4
    monkeypatch.setattr(Trainer, "_train_step", original_step)

    train(tiny["llama"], pairs, tmp_path / "resumed", TrainOptions(resume=True, **options))
    straight = load_file(tmp_path / "straight" / "pre_layer.safetensors")
    resumed = load_file(tmp_path / "resumed" / "pre_layer.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6)
    losses = [[r["loss"] for r in train_records(tmp_path / run)] for run in ("straight", "resumed")]
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    with pytest.raises(ClmError, match="--batch-size was 2"):
        train(
            tiny["llama"],
            pairs,
            tmp_path / "resumed",
            TrainOptions(resume=True, **(options | {"batch_size": 1})),
        )


# -- the checkpoint --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_checkpoint_holds_p_under_block_0_names_and_a_manifest(tiny, pairs, tmp_path, arch):
    train(tiny[arch], pairs, tmp_path / "ckpt", TrainOptions(max_steps=1, **FAST))
    tensors = load_file(tmp_path / "ckpt" / "pre_layer.safetensors")
    base = load_file(tiny[arch] / "model.safetensors")
    block0 = {name: t for name, t in base.items() if name.startswith("model.layers.0.")}
    assert tensors.keys() == block0.keys()
    assert all(tensors[n].shape == block0[n].shape and tensors[n].dtype == torch.float32 for n in tensors)

    manifest = read_manifest(tmp_path / "ckpt")
    assert manifest["architecture"] == arch
    assert manifest["base_block_count"] == 2
    assert manifest["pre_layer_count"] == 1
    assert manifest["objective"] == "dpo"
    assert manifest["base"]["kind"] == "hf"
    sha = hashlib.sha256((tiny[arch] / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["base"]["files"] == [
        {
            "name": "model.safetensors",
            "size": (tiny[arch] / "model.safetensors").stat().st_size,
            "sha256": sha,
        }
    ]
    assert manifest["hyperparameters"]["beta"] == 0.1
    assert manifest["progress"] == {"step": 1, "total_steps": 1, "epoch": 0.5, "finished": True}
    assert manifest["data"]["examples"] == 4
    assert set(manifest["metrics"]["train"]) >= {"loss", "reward_accuracy", "reward_margin"}


def test_export_hf_writes_the_expanded_model(tiny, pairs, tmp_path):
    train(
        tiny["qwen2"], pairs, tmp_path / "ckpt", TrainOptions(max_steps=3, export_hf=tmp_path / "hf", **FAST)
    )
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert exported.config.num_hidden_layers == 3 and len(exported.config.layer_types) == 3
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    input_ids = torch.tensor([[5, 17, 42, 99, 7]])
    expected = clm_model(tiny["qwen2"], tmp_path / "ckpt")(input_ids).logits
    torch.testing.assert_close(exported(input_ids).logits, expected)


def test_trains_on_a_gguf_base(tiny, pairs, tmp_path):
    gguf = write_tiny_gguf(tiny["llama"], tmp_path / "tiny-llama.gguf")
    hf_model = AutoModelForCausalLM.from_pretrained(tiny["llama"], dtype=torch.float32)
    gguf_model = load_model(resolve_base(gguf), torch.float32, torch.device("cpu"))
    input_ids = torch.tensor([[5, 17, 42, 99, 7]])
    torch.testing.assert_close(gguf_model(input_ids).logits, hf_model(input_ids).logits)
    assert load_tokenizer(resolve_base(gguf)).chat_template

    train(gguf, pairs, tmp_path / "ckpt", TrainOptions(max_steps=1, **FAST))
    manifest = read_manifest(tmp_path / "ckpt")
    assert manifest["base"]["kind"] == "gguf" and manifest["base"]["path"] == str(gguf.resolve())
    assert manifest["base"]["files"][0]["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    # P is stored in Hugging Face layout (q/k rows not in llama.cpp's order). The first step leaves
    # q/k untouched: their gradient passes through the zeroed o_proj, so it is exactly zero.
    tensors = load_file(tmp_path / "ckpt" / "pre_layer.safetensors")
    for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
        assert torch.equal(tensors[f"model.layers.0.{name}"], hf_model.state_dict()[f"model.layers.0.{name}"])


# -- data ------------------------------------------------------------------------------------------


def test_render_counts_only_the_response(tiny):
    tokenizer = load_tokenizer(resolve_base(tiny["llama"]))
    prompt_ids, response_ids = render(tokenizer, "Hello world", "Yes, I am glad to help you.")
    assert tokenizer.decode(prompt_ids) == "<|im_start|>user\nHello world<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(response_ids) == "Yes, I am glad to help you.<|im_end|>\n"
    messages = [{"role": "user", "content": "Hello world"}]
    assert render(tokenizer, messages, [{"role": "assistant", "content": "Yes"}])[0] == prompt_ids
    batch = collate([Example(prompt_ids, (response_ids,))], tokenizer.pad_token_id, torch.device("cpu"))
    assert batch.input_ids[0][batch.loss_mask[0]].tolist() == response_ids
    # UltraFeedback style: the response repeats the prompt as its first message.
    conversation = [*messages, {"role": "assistant", "content": "Yes, I am glad to help you."}]
    assert render(tokenizer, "Hello world", conversation) == (prompt_ids, response_ids)


def test_render_without_a_chat_template_uses_raw_text_and_eos(tiny):
    tokenizer = load_tokenizer(resolve_base(tiny["llama"]))
    tokenizer.chat_template = None
    prompt_ids, response_ids = render(tokenizer, "Hello world", "Yes")
    assert tokenizer.decode(prompt_ids + response_ids) == "Hello worldYes<|im_end|>"
    with pytest.raises(BadRecord, match="need a tokenizer with a chat template"):
        render(tokenizer, [{"role": "user", "content": "Hello"}], "Yes")


def test_truncation_keeps_the_end_of_the_prompt(tiny, tmp_path, caplog):
    example = Example(list(range(10)), ([100, 101, 102], [200]))
    assert truncate(example, 20, 10) == (example, False)
    assert truncate(example, 8, 4) == (Example(list(range(6, 10)), ([100, 101, 102], [200])), True)
    assert truncate(example, 5, 4) == (Example([6, 7, 8, 9], ([100], [200])), True)  # prompt, then answers

    long = write_jsonl(
        tmp_path / "long.jsonl", [{"prompt": "word " * 60, "chosen": "Yes", "rejected": "No"}] * 2
    )
    tokenizer = load_tokenizer(resolve_base(tiny["llama"]))
    dataset = load_dataset(long, tokenizer, "dpo", max_length=32)
    assert dataset.truncated == 2
    assert all(len(e.prompt) + max(map(len, e.responses)) <= 32 for e in dataset.examples)
    assert "2 of 2 examples were longer than --max-length 32" in caplog.text


# -- the command line ------------------------------------------------------------------------------


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run `clm-local ARGS` in-process through main.run(); return (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["clm-local", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        main.run()
    return exited.value.code, capsys.readouterr().err


def test_cli_trains_and_writes_a_checkpoint(tiny, pairs, tmp_path, monkeypatch, capsys):
    code, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        tiny["llama"],
        pairs,
        "-o",
        tmp_path / "ckpt",
        "--max-steps",
        "2",
        "--lr",
        "0.01",
    )
    assert code == 0, err
    assert "identity check passed" in err  # the log lines
    # stderr is no terminal here: progress comes as lines, with no tqdm bar and its carriage returns
    assert "step 2/2: loss" in err and "\r" not in err and "dpo training" not in err
    assert len(train_records(tmp_path / "ckpt")) == 2


def test_cli_defaults_match_train_options():
    defaults = TrainOptions()
    for name, parameter in inspect.signature(train_cmd.train).parameters.items():
        if hasattr(defaults, name) and parameter.default is not inspect.Parameter.empty:
            assert parameter.default == getattr(defaults, name), name


BAD_PAIR_LINES = {
    "malformed": (
        ['{"prompt": "a", "chosen": "b", "rejected": "c"}', '{"prompt": "a", '],
        ":2: not valid JSON",
    ),
    "missing field": (['{"prompt": "a", "chosen": "b"}'], ":1: missing field 'rejected'"),
    "empty": ([], "holds no usable examples"),
    "wrong type": (['{"prompt": "a", "chosen": 3, "rejected": "c"}'], "field 'chosen' must be a string"),
    "sft data": (
        ['{"prompt": "a", "completion": "b"}'],
        ":1: missing fields 'chosen', 'rejected': this is SFT data (prompt + completion, or messages) "
        "(train on such data with --objective sft)",
    ),
    "sft messages": (
        ['{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'],
        "(train on such data with --objective sft)",
    ),
}


@pytest.mark.parametrize("case", BAD_PAIR_LINES)
def test_cli_refuses_bad_data_with_one_line(tiny, tmp_path, monkeypatch, capsys, case):
    lines, message = BAD_PAIR_LINES[case]
    data = write_jsonl(tmp_path / "bad.jsonl", lines)
    code, err = run_cli(monkeypatch, capsys, "train", tiny["llama"], data, "-o", tmp_path / "ckpt")
    assert code == 1
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    if case.startswith("sft"):  # the hint is the objective that fits, not skipping every line
        assert "--skip-bad-lines" not in err


def test_cli_points_dpo_data_under_sft_to_the_dpo_objective(tiny, pairs, tmp_path, monkeypatch, capsys):
    args = ("train", tiny["llama"], pairs, "-o", tmp_path / "ckpt", "--objective", "sft")
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 1
    assert "this is DPO data (prompt, chosen, rejected) (train on such data with --objective dpo)" in err


CLI_WITHOUT_TORCH = """
import atexit, sys
atexit.register(lambda: print("torch imported:", "torch" in sys.modules, file=sys.stderr))
from clm_local.cli.main import run
sys.argv[0] = "clm-local"
run()
"""


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("objective", "error: --objective must be one of dpo, sft"),
        ("no base", "does not exist"),
        ("no data", "does not exist"),
        ("sft data", "--objective sft"),
    ],
)
def test_cli_refuses_bad_options_and_inputs_before_importing_torch(tiny, pairs, tmp_path, case, message):
    """The checks answer in a fraction of a second: torch (seconds to import) is never loaded."""
    sft = write_jsonl(tmp_path / "sft.jsonl", ['{"prompt": "a", "completion": "b"}'])
    base, data, extra = tiny["llama"], pairs, []
    if case == "objective":
        extra = ["--objective", "ppo"]
    elif case == "no base":
        base = tmp_path / "nope.gguf"
    elif case == "no data":
        data = tmp_path / "nope.jsonl"
    else:
        data = sft
    result = subprocess.run(
        [sys.executable, "-c", CLI_WITHOUT_TORCH, "train", base, data, "-o", tmp_path / "ckpt", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert lines[1:] == ["torch imported: False"]
    assert not (tmp_path / "ckpt").exists()


def test_default_names_the_default_models_base(tmp_path, monkeypatch):
    """`clm-local train default ...`: the default model's base GGUF, unless a file or folder here
    has that name."""
    from clm_local import default_model

    monkeypatch.chdir(tmp_path)
    source = resolve_base("default")
    assert (source.kind, source.path) == ("gguf", default_model.base_model_path().resolve())
    (tmp_path / "default").mkdir()
    with pytest.raises(ClmError, match="is not a Hugging Face model folder"):
        resolve_base("default")


def test_cli_skip_bad_lines_goes_on(tiny, tmp_path, monkeypatch, capsys):
    good = [json.dumps(dict(prompt=p, chosen=c, rejected=r)) for p, c, r in PAIRS]
    data = write_jsonl(tmp_path / "data.jsonl", [good[0], "not json", good[1], '{"prompt": "x"}'])
    args = ("train", tiny["llama"], data, "-o", tmp_path / "ckpt", "--max-steps", "1", "--skip-bad-lines")
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "skipping" in err and "data.jsonl:2" in err and "data.jsonl:4" in err
    assert read_manifest(tmp_path / "ckpt")["data"] | {"path": None, "sha256": None} == {
        "path": None,
        "sha256": None,
        "examples": 2,
        "truncated": 0,
        "skipped_lines": 2,
    }


def test_cli_refuses_bad_bases_and_outputs(tiny, pairs, tmp_path, monkeypatch, capsys):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text('{"model_type": "gpt2"}')
    (gpt2 / "model.safetensors").write_bytes(b"")
    text_file = write_jsonl(tmp_path / "notes.txt", ["hello"])
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    cases = [
        (gpt2, tmp_path / "a", "architecture 'gpt2' is not supported (supported: llama, qwen2, qwen3"),
        (text_file, tmp_path / "b", "is neither a model folder nor a GGUF file"),
        (tmp_path / "missing", tmp_path / "c", "does not exist"),
        (tiny["llama"], occupied, "exists and is not a clm-local checkpoint: use --force"),
    ]
    for base, output, message in cases:
        code, err = run_cli(monkeypatch, capsys, "train", base, pairs, "-o", output)
        assert code == 1 and err.startswith("error: ") and message in err, err
    code, err = run_cli(
        monkeypatch, capsys, "train", tiny["llama"], pairs, "-o", occupied, "--max-steps", "1", "--force"
    )
    assert code == 0, err
    assert (occupied / "keep.txt").read_text() == "mine" and (occupied / "clm_manifest.json").is_file()
    code, err = run_cli(monkeypatch, capsys, "train", tiny["llama"], pairs, "-o", occupied)
    assert code == 1 and "already holds a training run: use --resume" in err


def test_installed_command_exits_1_with_one_line(tmp_path):
    executable = Path(sys.executable).with_name("clm-local")
    result = subprocess.run(
        [executable, "train", tmp_path / "nothing", tmp_path / "nothing.jsonl", "-o", tmp_path / "ckpt"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: base model {tmp_path / 'nothing'} does not exist"]
