"""Turning text into integer ids and back: the tokenizers of chapters 1, 3 and 4.

:class:`CharTokenizer` gives one id per character (chapter 3). :class:`BPETokenizer` is
GPT-2's byte-level BPE written out to read (chapter 1); :class:`FastBPETokenizer` is the
same through the Rust library ``tokenizers``, for ``transformers`` (chapter 4). Both BPEs
work on UTF-8 bytes, so they round-trip any text, seen in training or not. ``encode`` takes one
text (a ``str``); ``decode`` takes one sequence of ids: a list, a tuple, a 1-D NumPy array or a
1-D tensor (a row of what a model generated, say).
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import regex
import tokenizers as hf

from ..interface import check_int

# GPT-2's pre-tokenisation: BPE never merges across these chunks, so a word and the
# space before it can become one token, but a word and the punctuation after it cannot.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class Tokenizer:
    """What every tokenizer offers. Subclasses add ``_state()`` and ``_from_state()`` for saving."""

    kind = ""  # the name written into saved files

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids`` (a list, tuple, 1-D array or 1-D tensor of ids)."""
        raise NotImplementedError

    def token_bytes(self, id: int) -> bytes:
        """The bytes (UTF-8) that token ``id`` stands for."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """How many distinct ids there are: every id lies in ``range(vocab_size)``."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A short digest of everything that decides the ids: two tokenizers with the same one encode alike."""
        state = json.dumps({"kind": self.kind, **self._state()}, sort_keys=True)
        return hashlib.sha256(state.encode("utf-8")).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        """Write the tokenizer to a small JSON file."""
        Path(path).write_text(json.dumps({"kind": self.kind, **self._state()}), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer written by ``save``; ``Tokenizer.load`` reads any of the kinds."""
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        kind = state.pop("kind", None)
        if kind not in _KINDS or (cls is not Tokenizer and kind != cls.kind):
            raise ValueError(f"{path} holds a tokenizer of kind {kind!r}, not one that {cls.__name__} reads")
        return _KINDS[kind]._from_state(state)

    def _ids(self, ids) -> list[int]:
        """``ids`` as a list of ints in ``range(vocab_size)``, or a clear error."""
        ids = _as_ids(ids)
        if ids and not (0 <= min(ids) and max(ids) < self.vocab_size):
            raise ValueError(f"ids must lie in range({self.vocab_size}); got {min(ids)} to {max(ids)}")
        return ids

    def _id(self, id) -> int:
        check_int("id", id, 0)
        if id >= self.vocab_size:
            raise ValueError(f"id must lie in range({self.vocab_size}), the vocabulary; got {id}")
        return int(id)


def _as_ids(ids) -> list[int]:
    """A list, tuple or range of integer ids, or a 1-D NumPy array or tensor of them, as a list of ints."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"decode takes token ids, not a {type(ids).__name__}: encode(text) gives the ids of a text.")
    if hasattr(ids, "ndim") and hasattr(ids, "tolist"):  # a NumPy array or a tensor
        if ids.ndim != 1:
            raise ValueError(f"decode takes one sequence of ids (1-D), not an array of shape {tuple(ids.shape)}: "
                             "decode each row, e.g. [tokenizer.decode(row) for row in ids].")
        ids = ids.tolist()
    elif not isinstance(ids, (list, tuple, range)):
        hint = f": give one id as a list, [{ids!r}]" if isinstance(ids, int) else ""
        raise TypeError(f"decode takes a list, tuple, 1-D array or 1-D tensor of token ids, not "
                        f"{type(ids).__name__}{hint}.")
    return [i if type(i) is int else _as_id(i) for i in ids]


def _as_id(i) -> int:
    if not isinstance(i, bool):
        try:
            return operator.index(i)  # a NumPy integer, a one-element integer tensor
        except TypeError:
            pass
    raise TypeError(f"token ids must be integers, not {i!r} ({type(i).__name__}).")


def _check_text(text, name: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, not {type(text).__name__}: encode one text at a time.")


def _check_training(text: str, vocab_size: int) -> None:
    _check_text(text, "text")
    check_int("vocab_size", vocab_size)
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256, the number of bytes; got {vocab_size}")
    if not text:
        raise ValueError("the training text is empty: there are no pairs to merge")


# --- Characters ---------------------------------------------------------------
class UnknownCharacterError(ValueError):
    """``CharTokenizer.encode`` met characters that are not in its vocabulary."""

    def __init__(self, characters: list[str], shown: int = 10) -> None:
        self.characters = characters  # deduplicated and sorted
        listed = ", ".join(repr(c) for c in characters[:shown])
        if len(characters) > shown:
            listed += f" and {len(characters) - shown} more, {len(characters)} in all"
        super().__init__(
            f"not in the vocabulary: {listed}. Train the "
            "tokenizer on text that contains them, or remove them from the text."
        )


class CharTokenizer(Tokenizer):
    """One id per character: the id of a character is its place in the sorted vocabulary."""

    kind = "char"

    def __init__(self, chars: list[str]) -> None:
        if not isinstance(chars, (list, tuple, str)) or not all(isinstance(c, str) for c in chars):
            raise TypeError(f"the vocabulary must be a list of distinct single characters, not {chars!r:.80}")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("the vocabulary must be a list of distinct single characters")
        self.chars = list(chars)
        self._id_of = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        """The tokenizer whose vocabulary is the characters of ``text``, sorted."""
        _check_text(text, "text")
        if not text:
            raise ValueError("the training text is empty: there are no characters to learn")
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        """The id of each character; unknown characters raise :class:`UnknownCharacterError`."""
        _check_text(text, "the text to encode")
        try:
            return [self._id_of[c] for c in text]
        except KeyError:
            raise UnknownCharacterError(sorted(set(text) - self._id_of.keys())) from None

    def decode(self, ids: list[int]) -> str:
        """The characters of ``ids``, joined."""
        return "".join(self.chars[i] for i in self._ids(ids))

    def token_bytes(self, id: int) -> bytes:
        """The UTF-8 bytes of the character ``id``."""
        return self.chars[self._id(id)].encode("utf-8")

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def _state(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars)}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> CharTokenizer:
        return cls(list(state["chars"]))


# --- Byte-level BPE, written out ----------------------------------------------
def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """``ids`` with every occurrence of ``pair`` (read left to right) replaced by ``new_id``."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer(Tokenizer):
    """Byte-level BPE: ids 0 to 255 are the bytes, id ``256 + k`` is the ``k``-th merge."""

    kind = "bpe"

    def __init__(self, merges: list[tuple[int, int]], pattern: str = GPT2_PATTERN) -> None:
        _check_text(pattern, "pattern")
        if not isinstance(merges, (list, tuple)) or any(not isinstance(m, (list, tuple)) or len(m) != 2
                                                          for m in merges):
            raise TypeError(f"merges must be a list of pairs of ids (a, b), not {merges!r:.80}")
        for i in [i for merge in merges for i in merge]:
            check_int("a merged id", i, 0)
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.pattern = pattern
        self._regex = regex.compile(pattern)
        self._vocab = [bytes([b]) for b in range(256)]  # id -> its bytes
        for a, b in self.merges:
            if not (a < len(self._vocab) and b < len(self._vocab)):
                raise ValueError(f"merge {(a, b)} uses an id that no earlier merge made")
            self._vocab.append(self._vocab[a] + self._vocab[b])
        self._rank = {pair: 256 + k for k, pair in enumerate(self.merges)}  # pair -> new id
        self._cache: dict[str, list[int]] = {}  # chunk -> its ids

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = GPT2_PATTERN) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges from ``text``.

        Each merge is the most frequent adjacent pair of ids within the pre-tokenised
        chunks; among equally frequent pairs the smallest, ``(a, b) < (c, d)``, wins.
        Training stops early, with fewer merges, once no pair occurs twice.
        """
        _check_training(text, vocab_size)
        _check_text(pattern, "pattern")
        # Each distinct chunk is worked on once and counted as often as it occurs.
        chunk_counts = Counter(regex.findall(pattern, text))
        words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
        freqs = list(chunk_counts.values())
        counts: Counter[tuple[int, int]] = Counter()  # pair -> occurrences in the text
        where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words
        for w, word in enumerate(words):
            for pair in zip(word, word[1:]):
                counts[pair] += freqs[w]
                where[pair].add(w)
        merges: list[tuple[int, int]] = []
        while len(merges) < vocab_size - 256 and counts:
            best = max(counts.values())
            if best < 2:
                break
            pair = min(p for p, c in counts.items() if c == best)
            new_id = 256 + len(merges)
            merges.append(pair)
            # Only the words that contain the pair change: recount just those.
            for w in where.pop(pair):
                for p in zip(words[w], words[w][1:]):
                    counts[p] -= freqs[w]
                    if counts[p] == 0:
                        del counts[p]
                words[w] = _merge(words[w], pair, new_id)
                for p in zip(words[w], words[w][1:]):
                    counts[p] += freqs[w]
                    where[p].add(w)
        return cls(merges, pattern)

    def _encode_chunk(self, data: bytes) -> list[int]:
        ids = list(data)
        while len(ids) >= 2:
            # Apply the merge learned first among the pairs present, as training did.
            pair = min(zip(ids, ids[1:]), key=lambda p: self._rank.get(p, float("inf")))
            if pair not in self._rank:
                break
            ids = _merge(ids, pair, self._rank[pair])
        return ids

    def encode(self, text: str) -> list[int]:
        """Split ``text`` with the pattern, then merge the UTF-8 bytes of each chunk."""
        _check_text(text, "the text to encode")
        ids: list[int] = []
        for chunk in self._regex.findall(text):
            if chunk not in self._cache:
                self._cache[chunk] = self._encode_chunk(chunk.encode("utf-8"))
            ids.extend(self._cache[chunk])
        return ids

    def decode(self, ids: list[int]) -> str:
        """Join the ids' bytes and read them as UTF-8; invalid UTF-8 becomes U+FFFD.

        Only ids that ``encode`` did not produce (a model's samples, say) can hit that.
        """
        return b"".join(self._vocab[i] for i in self._ids(ids)).decode("utf-8", errors="replace")

    def token_bytes(self, id: int) -> bytes:
        """The bytes that token ``id`` stands for."""
        return self._vocab[self._id(id)]

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def _state(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "merges": self.merges}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> BPETokenizer:
        return cls(state["merges"], state["pattern"])


# --- Byte-level BPE through the Rust library ----------------------------------
def _byte_of_char() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte, the way ``tokenizers`` writes tokens, reversed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


_BYTE_OF_CHAR = _byte_of_char()


def bytes_of_token(tokenizer, id: int) -> bytes | None:
    """The bytes token ``id`` stands for: for the book's tokenizers, and for a ``transformers`` tokenizer with
    GPT-2's byte-level decoder, read through its byte alphabet; ``None`` for others (chapter 6 counts bytes with it).
    """
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.token_bytes(id)
    if isinstance(getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None), hf.decoders.ByteLevel):
        token = tokenizer.convert_ids_to_tokens(id)
        if isinstance(token, str) and all(c in _BYTE_OF_CHAR for c in token):
            return bytes(_BYTE_OF_CHAR[c] for c in token)
    return None


class FastBPETokenizer(Tokenizer):
    """Byte-level BPE trained and run by ``tokenizers`` (Rust), with GPT-2's pre-tokenisation.

    ``save`` writes the library's own JSON (``Tokenizer.to_str()``) inside ours.
    Its ids are not ours: the 256 bytes come first, ordered by their printable character.
    """

    kind = "fast-bpe"

    def __init__(self, tokenizer: hf.Tokenizer) -> None:
        if not isinstance(tokenizer, hf.Tokenizer):
            raise TypeError(f"tokenizer must be a tokenizers.Tokenizer, not {type(tokenizer).__name__}: "
                            "use FastBPETokenizer.train or FastBPETokenizer.load.")
        self.backend = tokenizer  # the library's tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int) -> FastBPETokenizer:
        """Learn merges until there are ``vocab_size`` tokens or no pair occurs twice."""
        _check_training(text, vocab_size)
        tokenizer = hf.Tokenizer(hf.models.BPE())
        tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = hf.decoders.ByteLevel()
        trainer = hf.trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=2, special_tokens=[], show_progress=False,
            initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes
        )
        # One string, not lines: splitting at newlines would change the chunks.
        tokenizer.train_from_iterator([text], trainer=trainer)
        return cls(tokenizer)

    def encode(self, text: str) -> list[int]:
        _check_text(text, "the text to encode")
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``; invalid UTF-8 (never from ``encode``) becomes U+FFFD."""
        return self.backend.decode(self._ids(ids), skip_special_tokens=False)

    def token_bytes(self, id: int) -> bytes:
        """The bytes that token ``id`` stands for."""
        return bytes(_BYTE_OF_CHAR[c] for c in self.backend.id_to_token(self._id(id)))

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The learned merges in order, as pairs of this tokenizer's ids."""
        merges = json.loads(self.backend.to_str())["model"]["merges"]
        pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
        return [(self.backend.token_to_id(a), self.backend.token_to_id(b)) for a, b in pairs]

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def to_transformers(self, **kwargs: Any) -> Any:
        """A ``transformers.PreTrainedTokenizerFast`` with this vocabulary (a copy)."""
        from transformers import PreTrainedTokenizerFast

        kwargs.setdefault("clean_up_tokenization_spaces", False)  # keep decoding exact
        return PreTrainedTokenizerFast(tokenizer_object=self.backend, **kwargs)

    def _state(self) -> dict[str, Any]:
        return {"tokenizers": json.loads(self.backend.to_str())}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> FastBPETokenizer:
        return cls(hf.Tokenizer.from_str(json.dumps(state["tokenizers"])))


_KINDS: dict[str, type[Tokenizer]] = {t.kind: t for t in (CharTokenizer, BPETokenizer, FastBPETokenizer)}
