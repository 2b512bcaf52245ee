"""A CLIP BPE vocabulary cut down to the words a model was trained on, for the committed demo
model: CLIP's full vocabulary (49408 tokens) would make the text encoder's embedding table alone
larger than the whole demo model may be.

The cut vocabulary keeps CLIP's 512 byte tokens (every byte, alone and word-final) in CLIP's
order, then the result of every merge that CLIP's BPE applies to the given words, in CLIP's merge
order, then <|startoftext|> and <|endoftext|>. Because it keeps a subset of CLIP's merges in their
relative order, BPE splits the given words exactly as CLIP does; any other word falls back to
shorter pieces (down to bytes), so every prompt still tokenizes.
"""

from __future__ import annotations

import json
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _read_merges(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    merges = []
    for line in lines[1:]:  # the first line is "#version: ..."
        parts = line.split()
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def _bpe_merges_used(word: str, ranks: dict[tuple[str, str], int]) -> list[int]:
    """The ranks of the merges CLIP's BPE applies to one lower-case word."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    used = []
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), None), i) for i, (a, b) in
                 enumerate(zip(symbols, symbols[1:]))]
        candidates = [(r, i) for r, i in pairs if r is not None]
        if not candidates:
            break
        rank = min(r for r, _ in candidates)
        first, second = next((symbols[i], symbols[i + 1]) for r, i in candidates if r == rank)
        used.append(rank)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return used


def write_cut_vocabulary(words: list[str], clip_dir: Path, out_dir: Path) -> int:
    """Writes vocab.json and merges.txt for `words` into out_dir; returns the vocabulary size."""
    full_vocab = json.loads((clip_dir / "vocab.json").read_text(encoding="utf-8"))
    by_id = sorted(full_vocab, key=full_vocab.get)
    merges = _read_merges(clip_dir / "merges.txt")
    ranks = {pair: r for r, pair in enumerate(merges)}
    used = sorted({r for w in words for r in _bpe_merges_used(w.lower(), ranks)})
    tokens = by_id[:512] + ["".join(merges[r]) for r in used] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("cut vocabulary has duplicate tokens")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in (merges[r] for r in used)),
        encoding="utf-8")
    return len(tokens)
