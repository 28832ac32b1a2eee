"""The suites' SentencePiece tokenizer: trained from the training text, stored with the data.

Ids follow seqio: 0 = pad (also the "beginning" input of every packed segment), 1 = EOS, 2 = unk.
Digits are split into single pieces; normalisation is the identity, so ``decode(encode(t)) == t``
for the suites' texts (single spaces, no newlines). Training runs on one thread from a fixed
corpus order, so the model file is identical on every machine.

API::

  tok = load_tokenizer(data_dir, "tiny")
  tok.encode("Question: ... Answer:") -> list[int];  tok.decode(ids) -> str
  tokenizer_vocab_size(data_dir, "tiny") -> int   # the model's vocab_size must be >= this
"""

from __future__ import annotations

import io
from typing import Iterable, Sequence

import sentencepiece as spm

from moejax.data import layout

# SentencePiece logs an INFO line on every model load ("precompiled_charsmap is empty": the
# models here use identity normalization on purpose); keep warnings and errors.
spm.set_min_log_level(1)

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


def train_model(texts: Iterable[str], vocab_size: int, symbols: Sequence[str] = ()) -> bytes:
  """Trains a BPE SentencePiece model on ``texts``; returns the serialized model.

  ``symbols`` are pieces that always stay one token (SentencePiece's user-defined symbols).
  """
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=buffer, vocab_size=vocab_size,
      model_type="bpe", character_coverage=1.0, split_digits=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      hard_vocab_limit=False, num_threads=1, input_sentence_size=0,
      shuffle_input_sentence=False, max_sentence_length=1 << 16, minloglevel=2,
      user_defined_symbols=list(symbols))
  return buffer.getvalue()


class Tokenizer:
  """A thin wrapper of a SentencePiece processor with the suites' conventions."""

  def __init__(self, model: bytes):
    self._sp = spm.SentencePieceProcessor(model_proto=model)
    if (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id()) != (PAD_ID, EOS_ID, UNK_ID):
      raise ValueError("The SentencePiece model does not use pad=0, eos=1, unk=2")

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` (no EOS appended)."""
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ``ids``; stops at the first EOS and ignores pads."""
    ids = [int(i) for i in ids]
    if EOS_ID in ids:
      ids = ids[:ids.index(EOS_ID)]
    return self._sp.decode([i for i in ids if i != PAD_ID])

  def pieces(self, text: str) -> list[str]:
    return self._sp.encode(text, out_type=str)


def load_tokenizer(data_dir: str, preset: str) -> Tokenizer:
  """The tokenizer built for ``preset`` under ``data_dir``."""
  layout.load_manifest(data_dir, preset)  # clear error if the data is not built
  with open(layout.tokenizer_path(data_dir, preset), "rb") as f:
    return Tokenizer(f.read())


def tokenizer_vocab_size(data_dir: str, preset: str) -> int:
  """Number of token ids the tokenizer of ``preset`` can produce (read from the manifest)."""
  return int(layout.load_manifest(data_dir, preset)["tokenizer"]["vocab_size"])
