"""References for A1111 prompt weighting and clip skip (model/clip/prompt_weighting.h,
weighted_encoding.h), written independently of ldcp's C++ from A1111's published algorithm:
the attention parser (a regular expression, as A1111's), 75-token chunks (comma back-tracking
20), each chunk encoded by transformers' CLIPTextModel, weighted and its mean restored
(EmphasisOriginal); clip skip as hidden_states[-N] through final_layer_norm, and diffusers'
StableDiffusionPipeline.encode_prompt(clip_skip=N - 1).

Writes under DIR/ref/prompt_weighting/:
- model/: tiny-b with a random final_layer_norm (see main), the model both sides use.
- cases.json: {"model": "ref/prompt_weighting/model" (relative to DIR), "cases": [{"prompt", "negative", "clip_skip", "parsed":
  [[text, weight]], "chunks": [[ids]], "weights": [[w]]}]}
- embeddings.safetensors: "case<i>.prompt", "case<i>.negative" ([1, 77 * chunks, hidden], the
  negative padded to the prompt's chunk count and the other way round), "skip<N>.input_ids" and
  "skip<N>.hidden_state" (transformers), "skip<N>.diffusers" (diffusers' prompt_embeds of
  SKIP_PROMPT).
"""

import re

import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTextModel, CLIPTokenizer

from common import mark_done, models_dir, parse_args, ref_dir, save_json, save_tensors

MODEL = "tiny-b"  # 3 text layers: clip skip 1, 2, 3
SKIP_PROMPT = "a photo of an astronaut riding a horse"

TOKEN_RE = re.compile(r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
BREAK_RE = re.compile(r"\s*\bBREAK\b\s*")


def parse(text):
    out, rounds, squares = [], [], []

    def mul(start, m):
        for item in out[start:]:
            item[1] *= m

    for m in TOKEN_RE.finditer(text):
        tok, weight = m.group(0), m.group(1)
        number = None
        if weight is not None:
            try:
                number = float(weight)
            except ValueError:
                number = None
        if tok.startswith("\\"):
            out.append([tok[1:], 1.0])
        elif tok == "(":
            rounds.append(len(out))
        elif tok == "[":
            squares.append(len(out))
        elif number is not None and rounds:
            mul(rounds.pop(), number)
        elif tok == ")" and rounds:
            mul(rounds.pop(), 1.1)
        elif tok == "]" and squares:
            mul(squares.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(BREAK_RE.split(tok)):
                if i > 0:
                    out.append(["BREAK", -1])
                out.append([part, 1.0])
    for p in rounds:
        mul(p, 1.1)
    for p in squares:
        mul(p, 1 / 1.1)
    if not out:
        out = [["", 1.0]]
    i = 0
    while i + 1 < len(out):
        if out[i][1] == out[i + 1][1]:
            out[i][0] += out[i + 1][0]
            out.pop(i + 1)
        else:
            i += 1
    return out


def chunk(tokenizer, parsed, length=75, backtrack=20):
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = tokenizer.get_vocab().get(",</w>")
    chunks, cur_t, cur_w, last_comma = [], [], [], -1

    def close():
        nonlocal cur_t, cur_w, last_comma
        pad = length - len(cur_t)
        chunks.append(([bos] + cur_t + [eos] * pad + [eos], [1.0] + cur_w + [1.0] * pad + [1.0]))
        cur_t, cur_w, last_comma = [], [], -1

    for text, weight in parsed:
        if text == "BREAK" and weight == -1:
            close()
            continue
        for token in tokenizer(text, add_special_tokens=False).input_ids:
            if token == comma:
                last_comma = len(cur_t)
            elif backtrack and len(cur_t) == length and last_comma != -1 and len(cur_t) - last_comma <= backtrack:
                keep = last_comma + 1
                moved_t, moved_w = cur_t[keep:], cur_w[keep:]
                cur_t, cur_w = cur_t[:keep], cur_w[:keep]
                close()
                cur_t, cur_w = moved_t, moved_w
            if len(cur_t) == length:
                close()
            cur_t.append(token)
            cur_w.append(weight)
    if cur_t or not chunks:
        close()
    return chunks


def hidden(model, ids, clip_skip):
    out = model(input_ids=ids, output_hidden_states=True)
    if clip_skip <= 1:
        return out.last_hidden_state
    return model.final_layer_norm(out.hidden_states[-clip_skip])


def encode(model, chunks, clip_skip):
    parts = []
    for ids, weights in chunks:
        z = hidden(model, torch.tensor([ids]), clip_skip)
        w = torch.asarray(weights).to(torch.float32).reshape(1, -1, 1)
        mean = z.mean()
        z = z * w
        z = z * (mean / z.mean())
        parts.append(z)
    return torch.cat(parts, dim=1)


LONG = ", ".join(f"word{i} (detail{i}:1.2)" for i in range(40))
CASES = [
    ("a (red:1.5) cat on a [blue] ((sofa))", "blurry, (ugly)", 0),
    ("plain words only", "", 0),
    ("\\(escaped\\) (nested (deep [mixed])) unbalanced (open", "[low", 2),
    ("first part BREAK second part", "", 1),
    (LONG, "bad (hands:1.4)", 0),
    (LONG + " BREAK tail", "x", 3),
]


def main():
    args = parse_args(__doc__)
    out = ref_dir(args.parity_dir, "prompt_weighting")
    pipe = StableDiffusionPipeline.from_pretrained(models_dir(args.parity_dir) / MODEL,
                                                   safety_checker=None,
                                                   requires_safety_checker=False)
    # A fresh final_layer_norm (weight 1, bias 0) gives embeddings whose mean is ~0, which makes
    # EmphasisOriginal's mean ratio meaningless (SD1.5's trained one does not): a copy of the
    # model with a random final_layer_norm, which ldcp's test loads too.
    gen = torch.Generator().manual_seed(99)
    norm = pipe.text_encoder.final_layer_norm
    with torch.no_grad():
        norm.weight.copy_(1 + 0.2 * torch.randn(norm.weight.shape, generator=gen))
        norm.bias.copy_(0.5 + 0.2 * torch.randn(norm.bias.shape, generator=gen))
    folder = out / "model"
    pipe.save_pretrained(folder, safe_serialization=True)
    tokenizer, model = pipe.tokenizer, pipe.text_encoder.eval()
    tensors, cases = {}, []
    with torch.no_grad():
        for i, (prompt, negative, skip) in enumerate(CASES):
            pos, neg = chunk(tokenizer, parse(prompt)), chunk(tokenizer, parse(negative))
            empty = chunk(tokenizer, parse(""))[0]
            while len(pos) < len(neg):
                pos.append(empty)
            while len(neg) < len(pos):
                neg.append(empty)
            tensors[f"case{i}.prompt"] = encode(model, pos, skip)
            tensors[f"case{i}.negative"] = encode(model, neg, skip)
            cases.append({"prompt": prompt, "negative": negative, "clip_skip": skip,
                          "parsed": parse(prompt), "chunks": [c[0] for c in pos],
                          "weights": [c[1] for c in pos]})
        ids = tokenizer(SKIP_PROMPT, padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
        # The pinned diffusers' clip_skip path reads text_encoder.text_model.final_layer_norm,
        # transformers 4's layout; transformers 5's CLIPTextModel has final_layer_norm itself. An
        # unregistered alias lets diffusers' own code run.
        object.__setattr__(pipe.text_encoder, "text_model", pipe.text_encoder)
        for skip in (1, 2, 3):
            tensors[f"skip{skip}.input_ids"] = ids.clone()
            tensors[f"skip{skip}.hidden_state"] = hidden(model, ids, skip)
            embeds, _ = pipe.encode_prompt(SKIP_PROMPT, "cpu", 1, False,
                                           clip_skip=None if skip == 1 else skip - 1)
            tensors[f"skip{skip}.diffusers"] = embeds
    save_json(out / "cases.json", {"model": "ref/prompt_weighting/model", "cases": cases})
    save_tensors(out / "embeddings.safetensors", tensors)
    mark_done(out)


if __name__ == "__main__":
    main()
