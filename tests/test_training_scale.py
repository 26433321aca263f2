"""Training at larger sizes (issue 13): memory savers that change nothing, learning-rate schedules,
the reference cache, devices, data-parallel training with torchrun, and a bf16 base.

Tiny random models on the CPU; the CUDA and MPS tests skip with the reason where the device is absent.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from clm_local.converters.convert import ConvertOptions, convert
from safetensors.torch import load_file
from test_training import FAST, clm_model, train_records
from tiny_hf import write_tiny_gguf
from transformers import get_scheduler

import clm_local
from clm_local.errors import ClmError
from clm_local.runtime import library
from clm_local.training import TrainOptions, train
from clm_local.training.checkpoint import load_reference, read_manifest
from clm_local.training.clm_block import bypass_pre_layer
from clm_local.training.data import Example, truncate
from clm_local.training.trainer import Trainer

ARCHITECTURES = ("llama", "qwen2")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- memory: gradient checkpointing and chunked log-probs ------------------------------------------


def loss_and_grads(trainer: Trainer) -> tuple[float, dict[str, torch.Tensor], dict[str, int]]:
    """One DPO forward and backward over all four pairs from a P with every tensor nonzero; also how
    often a frozen block's first projection and the LM head ran (forward and any backward recompute)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in trainer.pre_layer.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    calls = {"block": 0, "lm_head": 0}
    hooks = [
        trainer.model.model.layers[1].self_attn.q_proj.register_forward_hook(
            lambda *_: calls.update(block=calls["block"] + 1)
        ),
        trainer.model.lm_head.register_forward_hook(lambda *_: calls.update(lm_head=calls["lm_head"] + 1)),
    ]
    trainer.reference = trainer._load_or_compute_reference()
    calls.update(block=0, lm_head=0)
    loss, _, _ = trainer._forward("train", [0, 1, 2, 3])
    loss.backward()
    for hook in hooks:
        hook.remove()
    grads = {name: p.grad.clone() for name, p in trainer.pre_layer.named_parameters()}
    return loss.item(), grads, calls


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_checkpointing_and_chunked_logprobs_equal_the_plain_path(tiny, pairs, tmp_path, arch):
    plain = TrainOptions(gradient_checkpointing=False, logprob_chunk_tokens=0, **FAST)
    saving = TrainOptions(gradient_checkpointing=True, logprob_chunk_tokens=5, **FAST)
    plain_loss, plain_grads, plain_calls = loss_and_grads(Trainer(tiny[arch], pairs, tmp_path / "a", plain))
    loss, grads, calls = loss_and_grads(Trainer(tiny[arch], pairs, tmp_path / "b", saving))

    assert loss == pytest.approx(plain_loss, abs=1e-5)
    assert all(grad.abs().max() > 0 for grad in plain_grads.values())  # every tensor of P is tested
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=1e-5)
    # ... and the savers did run: the frozen block was recomputed in the backward pass, and the LM
    # head ran in chunks of 5 answer tokens, each twice (forward, then recomputed in the backward).
    assert (plain_calls["block"], calls["block"]) == (1, 2)
    assert plain_calls["lm_head"] == 1 and calls["lm_head"] >= 4 and calls["lm_head"] % 2 == 0


def test_memory_defaults_follow_the_base_size(tiny, pairs, tmp_path):
    trainer = Trainer(tiny["llama"], pairs, tmp_path / "ckpt", TrainOptions(max_steps=1, **FAST))
    assert not trainer.checkpointing  # a tiny base: below memory.CHECKPOINTING_MIN_PARAMETERS
    assert trainer.chunk_tokens == 256 * 2**20 // (4 * trainer.model.config.vocab_size)
    manifest = trainer.run().manifest
    assert manifest["hyperparameters"]["gradient_checkpointing"] is False
    assert manifest["hyperparameters"]["logprob_chunk_tokens"] == trainer.chunk_tokens


# -- time: learning-rate schedule, truncation ------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["linear", "cosine", "constant_with_warmup"])
def test_lr_schedule_is_transformers_with_warmup(tiny, pairs, tmp_path, scheduler):
    options = TrainOptions(max_steps=6, lr_scheduler=scheduler, warmup_ratio=0.3, **FAST)
    train(tiny["llama"], pairs, tmp_path / "ckpt", options)
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=FAST["lr"])
    expected = get_scheduler(scheduler, optimizer, num_warmup_steps=2, num_training_steps=6)  # ceil(1.8)
    lrs = [record["lr"] for record in train_records(tmp_path / "ckpt")]
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(FAST["lr"])
    assert lrs == pytest.approx([expected.lr_lambdas[0](step) * FAST["lr"] for step in range(6)])
    assert read_manifest(tmp_path / "ckpt")["hyperparameters"]["lr_scheduler"] == scheduler


def test_constant_schedule_refuses_warmup(tiny, pairs, tmp_path):
    with pytest.raises(ClmError, match="constant has no warmup"):
        train(tiny["llama"], pairs, tmp_path / "ckpt", TrainOptions(warmup_ratio=0.1, **FAST))


def test_resume_keeps_the_schedule_and_reuses_the_reference_cache(tiny, pairs, tmp_path, monkeypatch, caplog):
    options = dict(max_steps=4, save_every=2, lr_scheduler="cosine", warmup_ratio=0.25, **FAST)
    train(tiny["qwen2"], pairs, tmp_path / "straight", TrainOptions(**options))

    original_step = Trainer._train_step

    def interrupted_step(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(Trainer, "_train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train(tiny["qwen2"], pairs, tmp_path / "resumed", TrainOptions(**options))
    monkeypatch.setattr(Trainer, "_train_step", original_step)

    def computes_nothing(self, dataset, indices):
        raise AssertionError("the reference log-probs were computed again")

    monkeypatch.setattr(Trainer, "_reference_logps", computes_nothing)
    caplog.set_level("INFO", logger="clm_local")
    train(tiny["qwen2"], pairs, tmp_path / "resumed", TrainOptions(resume=True, **options))
    assert "reference log-probs read from" in caplog.text
    straight = load_file(tmp_path / "straight" / "pre_layer.safetensors")
    resumed = load_file(tmp_path / "resumed" / "pre_layer.safetensors")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6)
    records = [train_records(tmp_path / run) for run in ("straight", "resumed")]
    assert [r["lr"] for r in records[1]] == pytest.approx([r["lr"] for r in records[0]])

    # The cache is keyed: another max length (or data, base, dtype) does not reuse it.
    key = Trainer(
        tiny["qwen2"], pairs, tmp_path / "resumed", TrainOptions(resume=True, **options)
    )._reference_key()
    assert load_reference(tmp_path / "resumed", key) is not None
    assert load_reference(tmp_path / "resumed", key | {"max_length": 512}) is None


def test_truncation_follows_trl_keep_end():
    example = Example(list(range(10)), ([100, 101, 102], [200]))
    assert truncate(example, 20, 10) == (example, False)
    # Too long: the prompt keeps its last max_prompt_length tokens; that fits, answers stay whole.
    assert truncate(example, 8, 4) == (Example([6, 7, 8, 9], ([100, 101, 102], [200])), True)
    # Still too long: each answer keeps its first max_length - max_prompt_length tokens.
    assert truncate(example, 6, 4) == (Example([6, 7, 8, 9], ([100, 101], [200])), True)
    # TRL caps the answers at max_length - max_prompt_length even when the prompt is shorter.
    assert truncate(Example([1, 2], (list(range(10)),)), 8, 4) == (Example([1, 2], ([0, 1, 2, 3],)), True)


# -- devices ---------------------------------------------------------------------------------------


def _device_skip(name: str) -> str | None:
    if name == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA GPU on this machine"
    if name == "mps" and not torch.backends.mps.is_available():
        return "torch sees no Apple MPS device on this machine"
    return None


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_trains_on_each_device_with_its_default_dtype(tiny, pairs, tmp_path, device):
    reason = _device_skip(device)
    if reason:
        pytest.skip(reason)
    result = train(tiny["llama"], pairs, tmp_path / "ckpt", TrainOptions(max_steps=3, device=device, **FAST))
    expected = (
        "fp32"
        if device == "cpu"
        else ("bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else None)
    )
    assert result.manifest["hyperparameters"]["device"] == device
    if expected:
        assert result.manifest["compute_dtype"] == expected
    assert result.manifest["compute_dtype"] != "fp32" or device == "cpu"  # accelerators: half precision
    assert math.isfinite(result.metrics["train"]["loss"])


# -- several processes -----------------------------------------------------------------------------


def test_two_processes_equal_one_with_the_global_batch(tiny, pairs, tmp_path):
    """torchrun, 2 processes (gloo on CPU), batch 2 each == 1 process, batch 4: same P after 3 steps."""
    common = ["--max-steps", "3", "--lr", "0.001", "--seed", "5", "--device", "cpu"]
    train(
        tiny["llama"],
        pairs,
        tmp_path / "single",
        TrainOptions(max_steps=3, lr=1e-3, seed=5, device="cpu", batch_size=4, progress=False),
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "clm_local.training", tiny["llama"], pairs, "-o", tmp_path / "ddp", "--batch-size", "2"]
    done = subprocess.run(
        [str(part) for part in command + common],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 3 steps") == 1  # only rank 0 reports

    single = load_file(tmp_path / "single" / "pre_layer.safetensors")
    ddp = load_file(tmp_path / "ddp" / "pre_layer.safetensors")
    assert any(not torch.equal(single[name], clm_tensor) for name, clm_tensor in _initial_p(tiny).items())
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=0, atol=1e-5)
    losses = [[r["loss"] for r in train_records(tmp_path / run)] for run in ("single", "ddp")]
    assert len(losses[1]) == 3 and losses[1] == pytest.approx(losses[0], abs=1e-5)
    # Only rank 0 wrote: one line per step, no stray temporary files.
    assert sorted(os.listdir(tmp_path / "ddp")) == sorted(os.listdir(tmp_path / "single"))
    assert read_manifest(tmp_path / "ddp")["hyperparameters"]["processes"] == 2


def _initial_p(tiny) -> dict[str, torch.Tensor]:
    model = clm_model(tiny["llama"])
    return {f"model.layers.0.{name}": t for name, t in model.model.layers[0].state_dict().items()}


# -- a bf16 base with a float32 P, converted and run -----------------------------------------------


def test_bf16_base_trains_a_float32_p_that_converts_and_runs(tiny, pairs, tmp_path):
    gguf_base = write_tiny_gguf(tiny["llama"], tmp_path / "base.gguf")
    options = TrainOptions(max_steps=12, dtype="bf16", device="cpu", **FAST)
    trainer = Trainer(gguf_base, pairs, tmp_path / "ckpt", options)  # the identity check ran in bf16
    assert trainer.model.model.layers[1].mlp.down_proj.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.pre_layer.parameters())
    assert trainer.optimizer.param_groups[0]["params"][0].dtype == torch.float32
    result = trainer.run()
    assert result.manifest["compute_dtype"] == "bf16"
    records = train_records(tmp_path / "ckpt")
    assert records[-1]["loss"] < records[0]["loss"] - 0.1

    convert(tmp_path / "ckpt", tmp_path / "clm.gguf", ConvertOptions())
    try:
        library.llama()
    except ClmError as error:
        pytest.skip(f"needs the patched runtime: {error}")
    tokens = [5, 17, 42, 99, 100, 7, 3]
    reference = clm_model(tiny["llama"], tmp_path / "ckpt")  # float32 base + the trained P
    with torch.no_grad():
        aligned = reference(torch.tensor([tokens])).logits[0].numpy()
        with bypass_pre_layer(reference):
            plain = reference(torch.tensor([tokens])).logits[0].numpy()
    assert abs(aligned - plain).max() > 0.05  # the trained P matters, so a dropped P could not pass
    with clm_local.load(tmp_path / "clm.gguf", n_ctx=64, n_threads=1) as model:
        for alpha, expected in ((1.0, aligned), (0.0, plain)):
            got = model.logits(tokens, alpha=alpha, mode="logits")
            assert abs(got - expected).max() < 2e-3 * max(1.0, abs(expected).max()), alpha
