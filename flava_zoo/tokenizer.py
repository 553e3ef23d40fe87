"""BERT-style WordPiece text tokenizer built on the Rust ``tokenizers`` package.

:class:`FlavaTokenizer` reproduces the uncased BERT tokenizer that FLAVA's text tower uses
(``BertTokenizerFast`` gives the same ids), returns padded ``torch`` tensors ready for a batch,
and can train a small vocabulary from an iterable of strings for synthetic or toy datasets.
A tokenizer directory holds ``vocab.txt`` (one token a line, the line number is the id) and an
optional ``tokenizer_config.json`` with ``lowercase`` and ``max_length``.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
"""BERT special tokens; :meth:`FlavaTokenizer.train` gives them ids 0-4 in this order."""

PREFIX = "##"
"""Marks a word piece that continues a word."""

VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
PADDING_STRATEGIES = ("longest", "max_length")


def _read_vocab_file(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} does not exist")
    vocab: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            token = line.rstrip("\r\n")
            if token in vocab:
                raise ValueError(
                    f"vocabulary file {path} line {index + 1}: duplicate token {token!r} "
                    f"(first on line {vocab[token] + 1})"
                )
            vocab[token] = index
    if not vocab:
        raise ValueError(f"vocabulary file {path} is empty")
    return vocab


def _check_max_length(max_length: Any, source: str) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
        raise ValueError(f"{source} must be an integer >= 3 ([CLS] text [SEP]), got {max_length!r}")
    return max_length


def _as_batch(texts: str | Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Iterable):
        raise TypeError(f"{name} must be a string or a sequence of strings, got {type(texts)}")
    batch = list(texts)
    for index, text in enumerate(batch):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{index}] is a {type(text).__name__}, expected str")
    return batch


def _count_words(backend: Tokenizer, texts: Iterable[str]) -> Counter[str]:
    text_counts: Counter[str] = Counter()
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is a {type(text).__name__}, expected str")
        text_counts[text] += 1
    word_counts: Counter[str] = Counter()
    for text, count in text_counts.items():
        normalized = backend.normalizer.normalize_str(text)
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized):
            word_counts[word] += count
    return word_counts


def _learn_wordpiece_vocab(
    word_counts: Mapping[str, int], vocab_size: int, min_frequency: int
) -> list[str]:
    """BPE-style WordPiece training with ``##`` continuation pieces, as tokenizers' trainer does.

    Ties between equally frequent pairs break on the pair's text, so the result is the same
    in every run (the Rust trainer breaks ties by hash-map order and is not reproducible).
    """
    tokens = list(SPECIAL_TOKENS)
    known = set(tokens)
    alphabet = sorted({char for word in word_counts for char in word})
    continuation = sorted({PREFIX + char for word in word_counts for char in word[1:]})
    for token in alphabet + continuation:
        if token not in known:
            tokens.append(token)
            known.add(token)

    words = [[word[0]] + [PREFIX + char for char in word[1:]] for word in word_counts]
    counts = list(word_counts.values())
    pair_counts: Counter[tuple[str, str]] = Counter()
    pair_words: dict[tuple[str, str], set[int]] = {}
    for index, (symbols, count) in enumerate(zip(words, counts)):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += count
            pair_words.setdefault(pair, set()).add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    while len(tokens) < vocab_size and heap:
        negative_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative_count:
            continue
        if -negative_count < max(min_frequency, 1):
            break
        first, second = pair
        merged = first + second.removeprefix(PREFIX)
        if merged not in known:
            tokens.append(merged)
            known.add(merged)
        changed: set[tuple[str, str]] = set()
        for index in sorted(pair_words.pop(pair)):
            symbols, count = words[index], counts[index]
            for old in zip(symbols, symbols[1:]):
                pair_counts[old] -= count
                changed.add(old)
            rebuilt: list[str] = []
            position = 0
            while position < len(symbols):
                if symbols[position : position + 2] == [first, second]:
                    rebuilt.append(merged)
                    position += 2
                else:
                    rebuilt.append(symbols[position])
                    position += 1
            words[index] = rebuilt
            for new in zip(rebuilt, rebuilt[1:]):
                pair_counts[new] += count
                pair_words.setdefault(new, set()).add(index)
                changed.add(new)
        for changed_pair in changed:
            count = pair_counts[changed_pair]
            if count > 0:
                heapq.heappush(heap, (-count, changed_pair))
            else:
                del pair_counts[changed_pair]
                pair_words.pop(changed_pair, None)
    return tokens


def _build_backend(vocab: Mapping[str, int], lowercase: bool) -> Tokenizer:
    backend = Tokenizer(WordPiece(dict(vocab), unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix=PREFIX)
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]
    )
    return backend


class FlavaTokenizer:
    """BERT WordPiece tokenizer returning padded ``input_ids``, ``attention_mask``, type ids.

    Single texts become ``[CLS] A [SEP]`` (token type 0); pairs become
    ``[CLS] A [SEP] B [SEP]`` with type 1 on ``B [SEP]``. Text is cleaned, Chinese characters
    are split, and when ``lowercase`` is true accents are stripped, as in the original BERT.
    Special tokens written literally in the text (``"[MASK]"``) are kept as special tokens.

    Args:
        vocab: token -> id mapping; ids must be exactly ``0 .. len(vocab) - 1`` and the five
            BERT special tokens must be present.
        lowercase: lowercase and strip accents (uncased BERT).
        max_length: default length limit (special tokens included) for truncation and
            ``padding="max_length"``.
    """

    def __init__(
        self, vocab: Mapping[str, int], lowercase: bool = True, max_length: int = 77
    ) -> None:
        for token in SPECIAL_TOKENS:
            if token not in vocab:
                raise ValueError(f"vocabulary is missing the special token {token}")
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise ValueError(f"vocabulary ids must be exactly 0..{len(vocab) - 1}, one per token")
        self._vocab = dict(vocab)
        self._lowercase = bool(lowercase)
        self._max_length = _check_max_length(max_length, "max_length")
        self._backend = _build_backend(self._vocab, self._lowercase)
        self._backend.post_processor = processors.TemplateProcessing(
            single=f"{CLS_TOKEN}:0 $A:0 {SEP_TOKEN}:0",
            pair=f"{CLS_TOKEN}:0 $A:0 {SEP_TOKEN}:0 $B:1 {SEP_TOKEN}:1",
            special_tokens=[(CLS_TOKEN, self.cls_token_id), (SEP_TOKEN, self.sep_token_id)],
        )

    @classmethod
    def from_vocab_file(
        cls, path: str | os.PathLike, lowercase: bool = True, max_length: int = 77
    ) -> FlavaTokenizer:
        """Load a BERT ``vocab.txt`` (one token a line, the line number is its id)."""
        path = Path(path)
        vocab = _read_vocab_file(path)
        for token in SPECIAL_TOKENS:
            if token not in vocab:
                raise ValueError(f"vocabulary file {path} is missing the special token {token}")
        return cls(vocab, lowercase=lowercase, max_length=max_length)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> FlavaTokenizer:
        """Load a directory written by :meth:`save` (``vocab.txt`` + ``tokenizer_config.json``).

        The config file is optional; a Hugging Face BERT directory also loads, its
        ``do_lower_case`` key is honoured when ``lowercase`` is absent.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
        kwargs: dict[str, Any] = {}
        config_path = directory / CONFIG_FILE
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"tokenizer config {config_path} is not valid JSON: {error}"
                ) from error
            if not isinstance(config, dict):
                raise ValueError(f"tokenizer config {config_path} must hold a JSON object")
            lowercase = config.get("lowercase", config.get("do_lower_case", True))
            if not isinstance(lowercase, bool):
                raise ValueError(
                    f"tokenizer config {config_path}: field 'lowercase' must be true or false, "
                    f"got {lowercase!r}"
                )
            kwargs["lowercase"] = lowercase
            if "max_length" in config:
                kwargs["max_length"] = _check_max_length(
                    config["max_length"], f"tokenizer config {config_path}: field 'max_length'"
                )
        return cls.from_vocab_file(directory / VOCAB_FILE, **kwargs)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 1024,
        lowercase: bool = True,
        min_frequency: int = 1,
        max_length: int = 77,
    ) -> FlavaTokenizer:
        """Train a WordPiece vocabulary on ``texts`` (e.g. captions of a synthetic dataset).

        Texts are normalised and split into words exactly as at encoding time, then word
        pieces are merged by frequency like tokenizers' ``WordPieceTrainer``, but with ties
        broken by text so the same texts always give the same vocabulary (the Rust trainer
        breaks ties by hash-map order). Special tokens get ids 0-4 (``[PAD]``, ``[UNK]``,
        ``[CLS]``, ``[SEP]``, ``[MASK]``). Pairs seen fewer than ``min_frequency`` times are
        not merged. The vocabulary holds every character seen, so it can end up smaller than
        ``vocab_size`` on a small corpus (no merges left) or larger on one with many symbols.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
        if vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(
                f"vocab_size {vocab_size} leaves no room next to the {len(SPECIAL_TOKENS)} "
                "special tokens"
            )
        if isinstance(texts, str):
            raise TypeError("texts must be an iterable of strings, not a single string")
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int):
            raise TypeError(f"min_frequency must be an int, got {min_frequency!r}")
        backend = _build_backend({token: i for i, token in enumerate(SPECIAL_TOKENS)}, lowercase)
        word_counts = _count_words(backend, texts)
        if not word_counts:
            raise ValueError("cannot train a tokenizer on texts without any words")
        tokens = _learn_wordpiece_vocab(word_counts, vocab_size, min_frequency)
        vocab = {token: index for index, token in enumerate(tokens)}
        return cls(vocab, lowercase=lowercase, max_length=max_length)

    def to_dict(self) -> dict[str, Any]:
        """The tokenizer as plain data (tokens in id order and settings), e.g. to store in a
        checkpoint; :meth:`from_dict` inverts it."""
        tokens = sorted(self._vocab, key=self._vocab.__getitem__)
        return {"vocab": tokens, "lowercase": self._lowercase, "max_length": self._max_length}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlavaTokenizer:
        """A tokenizer from :meth:`to_dict`'s output."""
        tokens = data.get("vocab")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError("tokenizer data: field 'vocab' must be a list of token strings")
        return cls(
            {t: i for i, t in enumerate(tokens)},
            lowercase=bool(data.get("lowercase", True)),
            max_length=int(data.get("max_length", 77)),
        )

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``vocab.txt`` and ``tokenizer_config.json`` to ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tokens = sorted(self._vocab, key=self._vocab.__getitem__)
        (directory / VOCAB_FILE).write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
        config = {"lowercase": self._lowercase, "max_length": self._max_length}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return directory

    def __call__(
        self,
        texts: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        max_length: int | None = None,
        padding: str = "longest",
        truncation: bool = True,
        return_token_type_ids: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Tokenize a batch (a single string is a batch of one) into right-padded long tensors.

        Returns ``input_ids``, ``attention_mask`` (1 on real tokens) and, unless disabled,
        ``token_type_ids``, each of shape ``(batch, length)``. ``length`` is the longest
        sequence (``padding="longest"``) or ``max_length`` (``padding="max_length"``).
        Truncation trims the longer of a pair first, like ``BertTokenizerFast``.
        """
        if padding not in PADDING_STRATEGIES:
            raise ValueError(f"padding must be one of {PADDING_STRATEGIES}, got {padding!r}")
        batch = _as_batch(texts, "texts")
        pairs = None if text_pair is None else _as_batch(text_pair, "text_pair")
        if pairs is not None and len(pairs) != len(batch):
            raise ValueError(
                f"text_pair has {len(pairs)} entries but texts has {len(batch)}; "
                "they must match one to one"
            )
        limit = self._max_length if max_length is None else max_length
        limit = _check_max_length(limit, "max_length")
        is_pair = pairs is not None
        num_special = self._backend.post_processor.num_special_tokens_to_add(is_pair)
        if truncation and limit <= num_special:
            raise ValueError(
                f"max_length {limit} leaves no room for text next to {num_special} special tokens"
            )
        if truncation:
            self._backend.enable_truncation(limit, strategy="longest_first")
        else:
            self._backend.no_truncation()
        inputs: list[Any] = batch if pairs is None else list(zip(batch, pairs))
        encodings = self._backend.encode_batch(inputs) if inputs else []

        lengths = [len(encoding.ids) for encoding in encodings]
        if padding == "max_length":
            for index, length in enumerate(lengths):
                if length > limit:
                    raise ValueError(
                        f"texts[{index}] has {length} tokens, more than max_length {limit}; "
                        "enable truncation or use padding='longest'"
                    )
            width = limit
        else:
            width = max(lengths, default=0)
        input_ids = torch.full((len(encodings), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encodings), width), dtype=torch.long)
        token_type_ids = torch.zeros((len(encodings), width), dtype=torch.long)
        for row, (encoding, length) in enumerate(zip(encodings, lengths)):
            input_ids[row, :length] = torch.tensor(encoding.ids, dtype=torch.long)
            attention_mask[row, :length] = 1
            token_type_ids[row, :length] = torch.tensor(encoding.type_ids, dtype=torch.long)
        output = {"input_ids": input_ids, "attention_mask": attention_mask}
        if return_token_type_ids:
            output["token_type_ids"] = token_type_ids
        return output

    def token_offsets(self, texts: str | Sequence[str], max_length: int | None = None) -> list[list[tuple[int, int]]]:
        """Per text, the character span ``(start, end)`` of each token of :meth:`__call__`'s
        output (same truncation), ``(0, 0)`` for special tokens: which tokens spell a word
        span (the probes map named objects to tokens with it)."""
        batch = _as_batch(texts, "texts")
        limit = _check_max_length(self._max_length if max_length is None else max_length, "max_length")
        self._backend.enable_truncation(limit, strategy="longest_first")
        encodings = self._backend.encode_batch(batch) if batch else []
        return [
            [(0, 0) if special else (int(a), int(b)) for (a, b), special in zip(e.offsets, e.special_tokens_mask)]
            for e in encodings
        ]

    def _id_list(self, ids: Sequence[int] | torch.Tensor, name: str) -> list[int]:
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"{name} must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        values = [int(i) for i in ids]
        for position, value in enumerate(values):
            if not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"{name}[{position}] = {value} is outside the vocabulary (size {self.vocab_size})"
                )
        return values

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Turn ids back into text, joining ``##`` word pieces; drops special tokens by default."""
        return self._backend.decode(self._id_list(ids, "ids"), skip_special_tokens)

    def batch_decode(
        self, sequences: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = True
    ) -> list[str]:
        """Decode each row of a ``(batch, length)`` tensor or a list of id lists."""
        if isinstance(sequences, torch.Tensor) and sequences.dim() != 2:
            raise ValueError(f"sequences must be 2-D, got shape {tuple(sequences.shape)}")
        rows = [self._id_list(seq, f"sequences[{i}]") for i, seq in enumerate(sequences)]
        return self._backend.decode_batch(rows, skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of tokens, i.e. the size the text embedding table needs."""
        return len(self._vocab)

    @property
    def lowercase(self) -> bool:
        """Whether text is lowercased and accent-stripped (uncased BERT)."""
        return self._lowercase

    @property
    def max_length(self) -> int:
        """Default length limit, special tokens included."""
        return self._max_length

    @property
    def pad_token_id(self) -> int:
        """Id of ``[PAD]``, used to right-pad batches."""
        return self._vocab[PAD_TOKEN]

    @property
    def unk_token_id(self) -> int:
        """Id of ``[UNK]``, given to words that cannot be split into known pieces."""
        return self._vocab[UNK_TOKEN]

    @property
    def cls_token_id(self) -> int:
        """Id of ``[CLS]``, the first token of every sequence."""
        return self._vocab[CLS_TOKEN]

    @property
    def sep_token_id(self) -> int:
        """Id of ``[SEP]``, which ends each segment."""
        return self._vocab[SEP_TOKEN]

    @property
    def mask_token_id(self) -> int:
        """Id of ``[MASK]``, used by masked language modelling."""
        return self._vocab[MASK_TOKEN]

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of all five special tokens (never masked, never drawn as random replacements)."""
        return frozenset(self._vocab[token] for token in SPECIAL_TOKENS)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, lowercase={self._lowercase}, "
            f"max_length={self._max_length})"
        )
