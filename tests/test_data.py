"""Prompt datasets (verl parquet schema) and the resumable sampler, on the character tokenizer."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sppo_megatron.config.schema import DataConfig
from sppo_megatron.data import PromptItem, PromptSampler, load_prompt_dataset
from sppo_megatron.errors import DataError
from sppo_megatron.testing.tiny import char_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()  # one token per character, one per role marker


def row(text, answer="4", source="arith", messages=None, extra=None):
    return {
        "prompt": messages if messages is not None else [{"role": "user", "content": text}],
        "data_source": source,
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": extra if extra is not None else {"index": 0},
    }


def write(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def cfg(**kw):
    return DataConfig(**kw)


# ---------------------------------------------------------------- loading


def test_load_renders_chat_template_and_fields(tmp_path, tokenizer):
    f = write(tmp_path / "train.parquet", [row("1+3=?", "4", extra={"index": 7}), row("2+2=?", "4", "gsm8k")])
    ds = load_prompt_dataset(f, tokenizer, cfg())
    assert len(ds) == 2 and ds.num_filtered == 0
    item = ds[0]
    assert isinstance(item, PromptItem)
    assert item.prompt_text == "<user>1+3=?<assistant>"
    assert len(item.prompt_ids) == 1 + 5 + 1
    assert tokenizer.decode(item.prompt_ids) == item.prompt_text
    assert (item.data_source, item.ground_truth, item.extra_info, item.index) == ("arith", "4", {"index": 7}, 0)
    assert ds[1].data_source == "gsm8k" and ds[1].index == 1


def test_ground_truth_becomes_str_and_extra_info_optional(tmp_path, tokenizer):
    rows = [{"prompt": [{"role": "user", "content": "a"}], "data_source": "x", "reward_model": {"ground_truth": 12}}]
    ds = load_prompt_dataset(write(tmp_path / "a.parquet", rows), tokenizer, cfg())
    assert ds[0].ground_truth == "12" and ds[0].extra_info == {}


def test_without_chat_template_joins_contents(tmp_path, tokenizer):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1=?"}]
    f = write(tmp_path / "a.parquet", [row(None, messages=msgs)])
    ds = load_prompt_dataset(f, tokenizer, cfg(apply_chat_template=False))
    assert ds[0].prompt_text == "be brief\n1+1=?"
    assert len(ds[0].prompt_ids) == len("be brief\n1+1=?")


def test_missing_chat_template_is_an_error(tmp_path, tokenizer):
    f = write(tmp_path / "a.parquet", [row("a")])
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer)
    assert not plain.chat_template
    with pytest.raises(DataError, match="no chat_template.*apply_chat_template=false"):
        load_prompt_dataset(f, plain, cfg())


def test_custom_prompt_key(tmp_path, tokenizer):
    r = row("abc")
    r["messages"] = r.pop("prompt")
    ds = load_prompt_dataset(write(tmp_path / "a.parquet", [r]), tokenizer, cfg(prompt_key="messages"))
    assert ds[0].prompt_text == "<user>abc<assistant>"


def test_several_files_concatenate_in_order(tmp_path, tokenizer):
    a = write(tmp_path / "a.parquet", [row("a"), row("b")])
    b = write(tmp_path / "b.parquet", [row("c")])
    ds = load_prompt_dataset([b, a], tokenizer, cfg())
    assert [it.prompt_text for it in ds.items] == [f"<user>{c}<assistant>" for c in "cab"]
    assert [it.index for it in ds.items] == [0, 1, 2]
    assert ds.files == [b, a]


def test_overlong_prompts_filtered_and_counted(tmp_path, tokenizer):
    a = write(tmp_path / "a.parquet", [row("abcdef"), row("ab"), row("abcdefgh")])
    b = write(tmp_path / "b.parquet", [row("abcdefghij"), row("a")])
    ds = load_prompt_dataset([a, b], tokenizer, cfg(max_prompt_length=5))  # "ab" -> 4 tokens, "a" -> 3
    assert ds.num_filtered == 3
    assert [it.index for it in ds.items] == [1, 4]
    assert [it.prompt_text for it in ds.items] == ["<user>ab<assistant>", "<user>a<assistant>"]


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation(tmp_path, tokenizer, side):
    f = write(tmp_path / "a.parquet", [row("abcdefgh"), row("ab")])
    full = tokenizer("<user>abcdefgh<assistant>", add_special_tokens=False)["input_ids"]
    ds = load_prompt_dataset(f, tokenizer, cfg(max_prompt_length=4, filter_overlong_prompts=False, truncation=side))
    assert len(ds) == 2 and ds.num_filtered == 0
    expected = full[-4:] if side == "left" else full[:4]
    assert ds[0].prompt_ids == expected
    assert ds[0].prompt_text == ("fgh<assistant>" if side == "left" else "<user>abc")
    assert ds[1].prompt_text == "<user>ab<assistant>"


def test_truncation_error_names_file_and_row(tmp_path, tokenizer):
    f = write(tmp_path / "a.parquet", [row("ab"), row("abcdefgh")])
    with pytest.raises(DataError, match=r"a\.parquet row 1: prompt has 10 tokens > data.max_prompt_length=4"):
        load_prompt_dataset(f, tokenizer, cfg(max_prompt_length=4, filter_overlong_prompts=False))


def test_all_filtered_is_an_error(tmp_path, tokenizer):
    a = write(tmp_path / "a.parquet", [row("abcdef"), row("abcdefg")])
    b = write(tmp_path / "b.parquet", [row("abcdefgh")])
    with pytest.raises(DataError) as e:
        load_prompt_dataset([a, b], tokenizer, cfg(max_prompt_length=3))
    msg = str(e.value)
    assert a in msg and b in msg and "3 filtered" in msg and "max_prompt_length=3" in msg


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path, tokenizer):
    missing = str(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match=f"{missing}: prompt file not found"):
        load_prompt_dataset([missing], tokenizer, cfg())


def test_not_parquet(tmp_path, tokenizer):
    bad = tmp_path / "bad.parquet"
    bad.write_text("prompt,answer\nhello,4\n")
    with pytest.raises(DataError, match="bad.parquet: not a readable parquet file"):
        load_prompt_dataset(str(bad), tokenizer, cfg())
    with pytest.raises(DataError, match="not a file"):
        load_prompt_dataset(str(tmp_path), tokenizer, cfg())


@pytest.mark.parametrize("column", ["prompt", "data_source", "reward_model"])
def test_missing_column(tmp_path, tokenizer, column):
    r = row("a")
    del r[column]
    f = write(tmp_path / "a.parquet", [r])
    with pytest.raises(DataError, match=f"a.parquet: missing column.*'{column}'"):
        load_prompt_dataset(f, tokenizer, cfg())


def test_prompt_not_a_message_list(tmp_path, tokenizer):
    f = write(tmp_path / "s.parquet", [{**row("a"), "prompt": "just a string"}])
    with pytest.raises(DataError, match="s.parquet row 0: column 'prompt' must be a list of {role, content}"):
        load_prompt_dataset(f, tokenizer, cfg())


def test_message_without_content(tmp_path, tokenizer):
    f = write(tmp_path / "m.parquet", [row("a"), row(None, messages=[{"role": "user", "content": None}])])
    with pytest.raises(DataError, match="m.parquet row 1: column 'prompt' must be a list"):
        load_prompt_dataset(f, tokenizer, cfg())


@pytest.mark.parametrize("messages", [[], [{"role": "system", "content": ""}, {"role": "user", "content": "  "}]])
def test_empty_prompt(tmp_path, tokenizer, messages):
    f = write(tmp_path / "e.parquet", [row("a"), row("b"), row(None, messages=messages)])
    with pytest.raises(DataError, match="e.parquet row 2: empty prompt"):
        load_prompt_dataset(f, tokenizer, cfg())


def test_ground_truth_missing(tmp_path, tokenizer):
    f = write(tmp_path / "g.parquet", [row("a"), row("b", answer=None)])
    with pytest.raises(DataError, match="g.parquet row 1: reward_model.ground_truth is missing"):
        load_prompt_dataset(f, tokenizer, cfg())


@pytest.mark.parametrize("answer", ["", "  "])
def test_ground_truth_empty(tmp_path, tokenizer, answer):
    f = write(tmp_path / "g.parquet", [row("a"), row("b", answer=answer)])
    with pytest.raises(DataError, match="g.parquet row 1: reward_model.ground_truth is empty"):
        load_prompt_dataset(f, tokenizer, cfg())


def test_data_source_not_a_string(tmp_path, tokenizer):
    f = write(tmp_path / "d.parquet", [row("a"), row("b", source=None)])
    with pytest.raises(DataError, match="d.parquet row 1: data_source must be a string"):
        load_prompt_dataset(f, tokenizer, cfg())


def test_empty_file_list(tokenizer):
    with pytest.raises(DataError, match="no prompt files"):
        load_prompt_dataset([], tokenizer, cfg())


# ---------------------------------------------------------------- sampler


def take(sampler, n):
    return [sampler.next_batch() for _ in range(n)]


def test_sampler_epochs_are_seeded_permutations():
    s = PromptSampler(12, 4, seed=3)
    batches = take(s, 6)
    assert sorted(sum(batches[:3], [])) == list(range(12))
    assert sorted(sum(batches[3:], [])) == list(range(12))
    assert batches[:3] != batches[3:]
    assert s.epoch == 1
    assert take(PromptSampler(12, 4, seed=3), 6) == batches
    assert take(PromptSampler(12, 4, seed=4), 3) != batches[:3]


def test_sampler_drop_last_and_short_last_batch():
    s = PromptSampler(10, 4, seed=0, shuffle=False)
    assert take(s, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]
    s = PromptSampler(10, 4, seed=0, shuffle=False, drop_last=False)
    assert take(s, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [0, 1, 2, 3]]


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("stop_after", [0, 1, 2, 3, 4, 5, 7])
def test_sampler_restore_continues_exactly(drop_last, stop_after):
    reference = PromptSampler(10, 4, seed=11, drop_last=drop_last)
    expected = take(reference, stop_after + 8)[stop_after:]
    interrupted = PromptSampler(10, 4, seed=11, drop_last=drop_last)
    take(interrupted, stop_after)
    state = json.loads(json.dumps(interrupted.state_dict()))
    restored = PromptSampler(10, 4, seed=11, drop_last=drop_last)
    restored.load_state_dict(state)
    assert take(restored, 8) == expected


def test_sampler_restore_at_epoch_boundary():
    s = PromptSampler(8, 4, seed=5)
    take(s, 2)  # epoch 0 exactly consumed
    state = s.state_dict()
    assert (state["epoch"], state["position"]) == (0, 8)
    restored = PromptSampler(8, 4, seed=5)
    restored.load_state_dict(state)
    nxt = restored.next_batch()
    assert nxt == s.next_batch() and restored.epoch == 1


def test_sampler_restore_with_new_batch_size():
    s = PromptSampler(12, 4, seed=1)
    order = take(s, 3)
    resumed = PromptSampler(12, 2, seed=1)
    resumed.load_state_dict({**PromptSampler(12, 4, seed=1).state_dict(), "position": 4})
    assert take(resumed, 4) == [order[1][:2], order[1][2:], order[2][:2], order[2][2:]]


def test_sampler_errors():
    with pytest.raises(DataError, match="larger than the dataset"):
        PromptSampler(3, 4, seed=0)
    with pytest.raises(DataError, match="empty"):
        PromptSampler(0, 1, seed=0)
    s = PromptSampler(10, 2, seed=0)
    with pytest.raises(DataError, match="num_items"):
        s.load_state_dict(PromptSampler(11, 2, seed=0).state_dict())
    with pytest.raises(DataError, match="seed"):
        s.load_state_dict(PromptSampler(10, 2, seed=1).state_dict())
