"""Teach's parts without a server: the preference file, the settings and split, the dial registry,
the progress of a training process. Pure Python and files: no model, no torch."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from clm_local.errors import ClmError
from clm_local.teach import job, settings
from clm_local.teach.dials import REPORT_FILE, Dial, DialRegistry, check_name
from clm_local.teach.folders import BaseFolder, default_data_dir
from clm_local.teach.settings import TeachSettings, plan, settings_from_environment, split
from clm_local.teach.store import PairError, PreferenceStore, StorageError, check_pair
from clm_local.teach.teacher import Teacher, TeachError

BASE = "tiny-0123456789ab"


def pair(i: int) -> dict[str, str]:
    return {"prompt": f"question {i}", "chosen": f"short {i}", "rejected": f"long-winded answer {i}"}


@pytest.fixture
def store(tmp_path: Path) -> PreferenceStore:
    return PreferenceStore(tmp_path / "base" / "preferences.jsonl", BASE)


# -- the preference file --------------------------------------------------------------------------


def test_an_append_is_one_training_line_with_time_model_and_base(store: PreferenceStore) -> None:
    scan = store.append(pair(0), model="m.gguf")
    assert scan.usable == 1 and store.path.read_bytes().endswith(b"\n")
    record = json.loads(store.path.read_text())
    assert {k: record[k] for k in ("prompt", "chosen", "rejected")} == pair(0)
    assert record["model"] == "m.gguf" and record["base"] == BASE and record["time"].endswith("+00:00")
    assert store.append(pair(1), model="m.gguf").usable == 2
    pairs, scan = store.read()
    assert [number for number, _ in pairs] == [1, 2] and scan.bad_count == 0


def test_a_torn_last_line_is_reported_skipped_and_kept(store: PreferenceStore) -> None:
    store.append(pair(0), model="m")
    with store.path.open("ab") as out:
        out.write(b'{"prompt": "cut sh')  # a crash in the middle of a line
    pairs, scan = store.read()
    assert len(pairs) == 1 and scan.bad[0][0] == 2 and "cut short" in scan.bad[0][1]
    before = store.path.read_bytes()
    assert store.append(pair(1), model="m").usable == 2  # starts on a fresh line
    after = store.path.read_bytes()
    assert after.startswith(before)  # nothing rewritten: the torn bytes stay
    pairs, scan = store.read()
    assert [number for number, _ in pairs] == [1, 3] and [n for n, _ in scan.bad] == [2]


def test_lines_from_other_writers_are_validated_one_by_one(store: PreferenceStore) -> None:
    store.path.parent.mkdir(parents=True)
    lines = [
        json.dumps(pair(0)),  # `clm-local train`'s format without a base: this folder's
        "not json",
        json.dumps(pair(1) | {"base": "other-base"}),
        json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}),
        json.dumps({"prompt": "p", "chosen": ""} | {"rejected": "r"}),
        "",
        json.dumps({"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}),
    ]
    store.path.write_text("\n".join(lines) + "\n")
    before = store.path.read_bytes()
    pairs, scan = store.read()
    assert [number for number, _ in pairs] == [1, 7]
    assert scan.other_base == 1 and scan.other_bases == {"other-base"}
    assert [number for number, _ in scan.bad] == [2, 4, 5]
    assert store.scan().usable == 2 and store.path.read_bytes() == before
    store.append(pair(2), model="m")
    assert store.scan().usable == 3  # the incremental count agrees with a full read
    assert store.read()[1].usable == 3


def test_a_full_disk_is_a_storage_error_and_truncates_nothing(
    store: PreferenceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append(pair(0), model="m")
    before = store.path.read_bytes()

    def full(descriptor: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageError) as caught:
        store.append(pair(1), model="m")
    assert caught.value.full and "disk is full" in str(caught.value)
    monkeypatch.undo()
    assert store.path.read_bytes() == before


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"chosen": "a", "rejected": "b"}, "prompt"),
        ({"prompt": "p", "chosen": ["a"], "rejected": "b"}, "chosen"),
        ({"prompt": "p", "chosen": "a", "rejected": "\ud800"}, "rejected"),
        ({"prompt": "p" * 32_001, "chosen": "a", "rejected": "b"}, "prompt"),
        ({"prompt": "p", "chosen": "a", "rejected": "a"}, "rejected"),
    ],
)
def test_check_pair_names_the_field(body: dict, param: str) -> None:
    with pytest.raises(PairError) as caught:
        check_pair(body)
    assert caught.value.param == param


def test_check_pair_ignores_unknown_fields() -> None:
    assert check_pair(pair(0) | {"alpha_chosen": 1.5, "extra": [1]}) == pair(0)


def test_line_separators_inside_a_text_stay_inside_its_line(store: PreferenceStore) -> None:
    store.append({"prompt": "a\u2028b\x85c", "chosen": "x\ny", "rejected": "z"}, model="m")
    text = store.path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 1  # str.splitlines would break at U+2028 or NEL left raw
    assert store.read()[0][0][1]["prompt"] == "a\u2028b\x85c"


# -- settings and split ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "held_out", "sft_steps", "dpo_steps"),
    [(16, 4, 3, 36), (25, 5, 5, 60), (40, 8, 8, 64), (100, 20, 20, 60), (200, 40, 40, 80)],
)
def test_the_plan_gives_few_pairs_the_recipes_steps(
    pairs: int, held_out: int, sft_steps: int, dpo_steps: int
) -> None:
    steps = plan(pairs, TeachSettings())
    assert steps.held_out_pairs == held_out and steps.train_pairs == pairs - held_out
    assert (steps.sft_steps, steps.dpo_steps) == (sft_steps, dpo_steps)
    assert plan(pairs, TeachSettings(sft_epochs=0)).sft_steps == 0


def test_the_split_is_by_content_not_by_order() -> None:
    records = [pair(i) for i in range(20)]
    train, held_out = split(records, 4)
    assert len(held_out) == 4 and len(train) == 16
    assert split(list(reversed(records)), 4)[1] == sorted(held_out, key=records.index, reverse=True)
    grown_held_out = split(records + [pair(i) for i in range(20, 25)], 4)[1]
    assert len([r for r in grown_held_out if r in held_out]) >= 2  # mostly stable as pairs are added


def test_settings_from_the_environment_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.SETTINGS_VARIABLE, '{"target_steps": 8, "lr": 1e-4}')
    assert settings_from_environment() == TeachSettings(target_steps=8, lr=1e-4)
    for bad, words in [
        ("{nope", "not valid JSON"),
        ('{"epochs": 3}', "unknown setting"),
        ('{"target_steps": 2.5}', "integer"),
        ('{"needed": 2}', "at least one pair"),
        ('{"lr": "fast"}', "number"),
    ]:
        monkeypatch.setenv(settings.SETTINGS_VARIABLE, bad)
        with pytest.raises(ClmError, match=words):
            settings_from_environment()


def test_the_default_data_folder_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "clm-local"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_dir() == Path.home() / ".local" / "share" / "clm-local"


# -- dials ----------------------------------------------------------------------------------------


def dial(name: str, created: str = "2025-01-01T00:00:00+00:00") -> Dial:
    return Dial(name, f"dials/{name}/m-{name}.gguf", 20, created, {"pairs": 4, "reward_accuracy": 0.75})


def test_the_registry_is_replaced_whole_and_rebuilt_from_reports(tmp_path: Path) -> None:
    folder = BaseFolder(tmp_path / "base")
    registry = DialRegistry(folder)
    assert registry.list() == []
    for name, created in (("a", "2025-01-01T00:00:00+00:00"), ("b", "2025-01-02T00:00:00+00:00")):
        entry = dial(name, created)
        (folder.root / entry.file).parent.mkdir(parents=True)
        (folder.root / entry.file).write_bytes(b"GGUF")
        (folder.dial(name) / REPORT_FILE).write_text(json.dumps(vars(entry)))
        registry.add(entry)
    assert [d.name for d in registry.list()] == ["a", "b"]
    assert json.loads(folder.registry.read_text())["format"] == "clm-local-dials"
    assert not list(folder.root.glob(".dials-*"))  # no temp file left behind
    assert registry.get("b").public(folder)["file"] == str(folder.root / "dials/b/m-b.gguf")
    assert registry.of_file(folder.root / "dials/a/m-a.gguf").name == "a"
    folder.registry.write_text('{"format": "clm-local-dials", "dials": [{"na')  # damaged
    assert [d.name for d in registry.list()] == ["a", "b"]


@pytest.mark.parametrize("name", ["", "../x", "a b", "-x", "x" * 65, 3, None])
def test_a_dial_name_must_be_a_safe_folder_name(name: object) -> None:
    with pytest.raises(ClmError):
        check_name(name)


# -- the teacher's refusals, before any process ---------------------------------------------------


def test_the_teacher_counts_only_this_bases_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tiny_gguf import make_tiny_model

    served = make_tiny_model("llama", n_base_blocks=2, pre_layers=0).write(tmp_path / "plain.gguf", "base")
    teacher = Teacher(tmp_path / "data", served, switch=lambda path: None)
    state = teacher.preferences()
    assert state["count"] == 0 and state["needed"] == 16
    assert state["path"] == str(tmp_path / "data" / state["base"] / "preferences.jsonl")
    assert state["base"].endswith("-" + hashlib.sha256(served.read_bytes()).hexdigest()[:12])
    with pytest.raises(TeachError) as caught:
        teacher.add_pair({"prompt": "p", "chosen": "a"})
    assert caught.value.kind == "invalid" and caught.value.param == "rejected"
    assert teacher.add_pair(pair(0)) == {"count": 1, "needed": 16}
    with pytest.raises(TeachError, match="1 pairs collected, training needs at least 16"):
        teacher.start_training({})
    other = Path(state["path"])
    other.write_text("".join(json.dumps(pair(i) | {"base": "elsewhere-1"}) + "\n" for i in range(20)))
    with pytest.raises(TeachError, match="sampled from a different base"):
        teacher.start_training({})
    with pytest.raises(TeachError) as caught:
        teacher.cancel()
    assert caught.value.kind == "conflict"
    with pytest.raises(TeachError) as caught:
        teacher.activate("nothing")
    assert caught.value.kind == "not_found"
    assert teacher.dials() == {"active": None, "dials": []}


# -- the training process's progress --------------------------------------------------------------


def test_progress_counts_over_both_stages_and_stops_at_a_nan_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.0, 10.0, 12.0, 14.0, 30.0, 34.0])  # start, stage, steps and stage changes
    monkeypatch.setattr(job.time, "monotonic", lambda: next(clock))
    events: list[dict] = []
    progress = job.Progress(lambda **event: events.append(event), sft_steps=2, dpo_steps=4)
    progress.stage("sft")  # t=0
    progress.step("sft", 1, 2, {"loss": 3.0})  # t=10: loading the base took most of it
    progress.step("sft", 2, 2, {"loss": 2.5})  # t=12: 2 s a step; then the stage "dpo" at t=14
    progress.step("dpo", 1, 4, {"loss": 0.69, "reward_accuracy": 0.5})  # t=30
    progress.step("dpo", 2, 4, {"loss": 0.6, "reward_accuracy": 0.75})  # t=34: 4 s a step
    assert [(e["event"], e.get("stage"), e["step"]) for e in events] == [
        ("stage", "sft", 0), ("step", "sft", 1), ("step", "sft", 2), ("stage", "dpo", 2), ("step", "dpo", 3),
        ("step", "dpo", 4),
    ]  # fmt: skip
    assert all(e["steps"] == 6 for e in events)
    etas = [e.get("eta_seconds") for e in events if e["event"] == "step"]
    assert etas == [None, 10.0 + 2 * 2.0 * 4, None, 4.0 * 2]  # SFT's counts DPO: reload + 4 steps at 2x
    assert events[-1]["reward_accuracy"] == 0.75
    with pytest.raises(ClmError, match="DPO loss became nan at step 3 of 4"):
        progress.step("dpo", 3, 4, {"loss": float("nan")})


# -- which base a served file is made from --------------------------------------------------------


def test_a_grafted_file_names_its_base_which_is_found_by_hash(tmp_path: Path) -> None:
    from clm_local.converters.convert import ConvertOptions, convert
    from test_convert_fixtures import tiny_pre_layer, write_checkpoint
    from tiny_gguf import make_tiny_model

    from clm_local.teach.identity import HashCache, identify, locate_base

    model = make_tiny_model("llama", n_base_blocks=2)
    (tmp_path / "models").mkdir()
    base = model.write(tmp_path / "models" / "my-base.gguf", "base")
    clm = tmp_path / "models" / "my-clm.gguf"
    convert(write_checkpoint(tmp_path / "ckpt", tiny_pre_layer(model), base), clm, ConvertOptions())
    hashes = HashCache(tmp_path / "data" / "hashes.json")
    identity = identify(clm, hashes)
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    assert identity.id == f"my-base-{digest[:12]}" and identity.sha256 == digest and not identity.untrainable
    assert identify(base, hashes).id == identity.id  # the plain base is its own base: the same folder
    record = tmp_path / "data" / identity.id / "base.json"
    assert locate_base(identity, clm, record, hashes) == base.resolve()  # beside the served file
    assert json.loads(record.read_text())["path"] == str(base.resolve())
    moved = tmp_path / "elsewhere" / "renamed.gguf"
    moved.parent.mkdir()
    base.rename(moved)
    with pytest.raises(ClmError, match="cannot find the base model my-base.gguf") as caught:
        locate_base(identity, clm, record, hashes)
    assert "beside the served file" in str(caught.value)
    record.write_text(json.dumps({"path": str(moved)}))  # where a user may point it
    assert locate_base(identity, clm, record, hashes) == moved.resolve()
    moved.write_bytes(moved.read_bytes()[:-1] + b"\x01")  # another file by that name: refused
    with pytest.raises(ClmError, match="cannot find"):
        locate_base(identity, clm, record, hashes)


def test_a_clm_file_that_does_not_record_its_base_cannot_be_trained(tmp_path: Path) -> None:
    from tiny_gguf import make_tiny_model

    from clm_local.teach.identity import HashCache, identify

    clm = make_tiny_model("llama", n_base_blocks=2).write(tmp_path / "converted.gguf", "clm")
    identity = identify(clm, HashCache(tmp_path / "hashes.json"))
    assert identity.sha256 is None and "does not record which base GGUF" in identity.untrainable
