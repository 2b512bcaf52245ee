"""CLIP references from transformers: token ids of CLIPTokenizer for a prompt corpus on several
tokenizer folder layouts, and CLIPTextModel's last_hidden_state for several text encoders.

Writes under DIR/ref/clip/:
- tokenizers/<layout>/: extra tokenizer folders with the full CLIP vocabulary (data/clip):
  sd15 (vocab.json + merges.txt + SD1.5's tokenizer_config.json / special_tokens_map.json),
  hf5 (what transformers 5's save_pretrained writes from sd15), legacy-json (tokenizer.json with
  "a b" string merges and a tokenizer_config.json with added_tokens_decoder).
- text_encoders/<name>/: extra text encoders: other hidden_acts, and the SD1.5 checkpoint key
  layout ("text_model." prefix, position_ids buffer) that older transformers wrote.
- tokenizer.json: {"prompts": [...], "tokenizers": {name: {"dir", "model_max_length", "bos_id",
  "eos_id", "pad_id", "encode": [[...]], "tokenize": [[...]]}}}; dirs relative to DIR.
- text_encoder.json: {"dirs": {name: dir relative to DIR}, "prompts": the 4 prompts of
  input_ids, "tokenizer": the layout that encoded them}; text_encoder.safetensors: "input_ids" (4
  prompts, 77 tokens) and "short_input_ids" (random ids, [2, 9]), with "<name>.last_hidden_state"
  and "<name>.short_last_hidden_state" for each text encoder.
"""

import json
import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from common import CLIP_VOCAB_DIR, TINY_MODELS, mark_done, models_dir, parse_args, ref_dir, save_json, save_tensors

LONG_PROMPT = (
    "a highly detailed matte painting of a sprawling futuristic city at dusk, towering glass "
    "spires, flying cars weaving between neon billboards, crowds of people in colorful raincoats, "
    "reflections on wet pavement, volumetric fog, god rays through the clouds, cinematic lighting, "
    "ultra wide angle lens, 35mm film grain, trending on artstation, by greg rutkowski and alphonse "
    "mucha, octane render, unreal engine 5, 8k resolution, award winning photograph, masterpiece"
)

PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT, HIGHLY DETAILED",
    "portrait of an astronaut riding a horse on mars, trending on artstation, 8k, octane render",
    "Hello, world! How's it going? (quite well) [really] {yes} <no>",
    "\"double quotes\" and 'single quotes' and `backticks` and \u201ccurly\u201d \u2018ones\u2019",
    "it's, you're, we've, I'm, they'll, he'd, don't, rock'n'roll",
    "IT'S YOU'RE WE'VE I'M THEY'LL HE'D DON'T",
    "it\u2019s a unicode apostrophe; 's at the start and a trailing quote'",
    "1024x768 resolution, 3.14159, 2024-01-01, 1,000,000 and 007",
    "emoji \U0001F431\U0001F680\U0001F525 and \U0001F468\u200D\U0001F469\u200D\U0001F467 family, "
    "\U0001F44D\U0001F3FD thumbs, \U0001F1EF\U0001F1F5 flag",
    "caf\u00e9 na\u00efve Zo\u00eb r\u00e9sum\u00e9 fa\u00e7ade",
    "cafe\u0301 vs caf\u00e9, a\u0308 vs \u00e4, A\u030a vs \u00c5",
    "\u6771\u4eac\u306e\u591c\u666f\u3001\u7f8e\u3057\u3044 \u4e2d\u6587\u63d0\u793a\u8bcd\uff1a\u4e00\u53ea\u732b",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u041a\u0440\u0430\u0441\u0438\u0432\u044b\u0439 "
    "\u043f\u0435\u0439\u0437\u0430\u0436",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 and \u05e9\u05dc\u05d5\u05dd",
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u092a\u093e\u0920, \u0e44\u0e17\u0e22, \ud55c\uad6d\uc5b4",
    "multiple   spaces\tand\ttabs\nand\nnewlines\r\nend",
    "   leading and trailing whitespace   ",
    "",
    " \t\n ",
    "<|startoftext|>a prompt with special tokens<|endoftext|>",
    "text <|endoftext|> in the middle, cat<|endoftext|>dog",
    "<|STARTOFTEXT|> and <|EndOfText|> in other cases",
    "<|endoftext|><|endoftext|><|startoftext|>",
    "< | endoftext | > <|endoftext <endoftext|> </w>",
    "\ufb01ne \ufb03 ligatures, \u2126mega \u212bngstr\u00f6m \u2160\u2161\u2162",
    "\u0130stanbul \u03a3\u038a\u03a3\u03a5\u03a6\u039f\u03a3 stra\u00dfe \u01c5 \u01c8 \u01cb",
    "non-breaking\u00a0space, em\u2003space, ideographic\u3000space, zero\u200bwidth, "
    "nel\u0085here, vt\x0bff\x0cfs\x1cus\x1f",
    "control chars \x00\x07\x1b[0m and del\x7f",
    "math \u2211\u222b\u221a\u221e \u2248 \u2260 \u00b1 \u00d7 \u00f7 \u00bd \u00b2 \u00b3 \u2460 \u216b",
    "digits \u0660\u0661\u0662\u0663 \u0967\u0968\u0969 \uff11\uff12\uff13 \uff21\uff22\uff23",
    "mixed.punctuation...!!!???---___***",
    "url https://example.com/path?q=1&x=y#frag email a.b@c.de",
    "#hashtag @mention $100 50% C++ C# node.js",
    "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522 \U0001d7d9\U0001d7da\U0001d7db",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "cat " * 75,
    "cat " * 76,
    "cat " * 300,
    LONG_PROMPT,
    LONG_PROMPT.upper() + " " + LONG_PROMPT,
]

# SD1.5's tokenizer/tokenizer_config.json and special_tokens_map.json (written by transformers 4).
def _added(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
            "rstrip": False, "single_word": False}


SD15_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": _added("<|startoftext|>"),
    "do_lower_case": True,
    "eos_token": _added("<|endoftext|>"),
    "errors": "replace",
    "model_max_length": 77,
    "name_or_path": "openai/clip-vit-large-patch14",
    "pad_token": "<|endoftext|>",
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": _added("<|endoftext|>"),
}
SD15_SPECIAL_TOKENS_MAP = {
    "bos_token": _added("<|startoftext|>"),
    "eos_token": _added("<|endoftext|>"),
    "pad_token": "<|endoftext|>",
    "unk_token": _added("<|endoftext|>"),
}


def write_json(path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")


def make_tokenizer_folders(out):
    """The extra layouts, all with the full CLIP vocabulary."""
    root = out / "tokenizers"
    shutil.rmtree(root, ignore_errors=True)
    sd15 = root / "sd15"
    sd15.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(CLIP_VOCAB_DIR / name, sd15 / name)
    write_json(sd15 / "tokenizer_config.json", SD15_TOKENIZER_CONFIG)
    write_json(sd15 / "special_tokens_map.json", SD15_SPECIAL_TOKENS_MAP)

    hf5 = root / "hf5"
    CLIPTokenizer.from_pretrained(sd15).save_pretrained(hf5)
    assert not (hf5 / "vocab.json").exists() and (hf5 / "tokenizer.json").exists()

    # Older tokenizers wrote merges as "a b" strings; transformers 4 wrote added_tokens_decoder
    # into tokenizer_config.json (here with flags unlike hf5's, so that they matter).
    legacy = root / "legacy-json"
    legacy.mkdir()
    tokenizer_json = json.loads((hf5 / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer_json["model"]["merges"] = [" ".join(m) for m in tokenizer_json["model"]["merges"]]
    write_json(legacy / "tokenizer.json", tokenizer_json)
    config = json.loads((hf5 / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {
        "49406": {"content": "<|startoftext|>", "lstrip": False, "normalized": False,
                  "rstrip": False, "single_word": False, "special": True},
        "49407": {"content": "<|endoftext|>", "lstrip": False, "normalized": True,
                  "rstrip": False, "single_word": False, "special": True},
    }
    write_json(legacy / "tokenizer_config.json", config)
    return {"sd15": sd15, "hf5": hf5, "legacy-json": legacy}


def tokenizer_refs(parity_dir, folders):
    refs = {}
    for name, folder in folders.items():
        tok = CLIPTokenizer.from_pretrained(folder)
        encode = tok(PROMPTS, padding="max_length", max_length=tok.model_max_length,
                     truncation=True).input_ids
        tokenize = tok(PROMPTS, add_special_tokens=False).input_ids
        refs[name] = {
            "dir": str(folder.relative_to(parity_dir)),
            "model_max_length": tok.model_max_length,
            "bos_id": tok.bos_token_id,
            "eos_id": tok.eos_token_id,
            "pad_id": tok.pad_token_id,
            "vocab_size": len(tok),
            "encode": encode,
            "tokenize": tokenize,
        }
        print(f"{name}: {len(tok)} tokens, {folder}")
        if len(tok) < 1000:
            print(f"warning: {folder} has only {len(tok)} tokens, so nearly every id is unk: was it "
                  "written by CLIPTokenizer(vocab_file=..., merges_file=...), whose transformers 5 "
                  "signature is (vocab=..., merges=...)?")
    return refs


def make_text_encoders(out):
    """Extra text encoders: activations the tiny models do not use, and SD1.5's key layout."""
    root = out / "text_encoders"
    shutil.rmtree(root, ignore_errors=True)
    made = {}
    base = dict(vocab_size=49408, max_position_embeddings=77, hidden_size=40, intermediate_size=72,
                num_hidden_layers=2, num_attention_heads=5, layer_norm_eps=1e-5)
    for seed, act in enumerate(("gelu_new", "gelu_pytorch_tanh", "relu", "gelu_fast", "silu")):
        torch.manual_seed(100 + seed)
        model = CLIPTextModel(CLIPTextConfig(hidden_act=act, **base)).eval()
        model.save_pretrained(root / f"act-{act}", safe_serialization=True)
        made[f"act-{act}"] = root / f"act-{act}"

    # What transformers 4 saved (and SD1.5 ships): keys under "text_model." and the
    # position_ids buffer. transformers 5 still loads it; so must we.
    torch.manual_seed(200)
    model = CLIPTextModel(CLIPTextConfig(hidden_act="quick_gelu", **base)).eval()
    folder = root / "sd15-layout"
    folder.mkdir(parents=True)
    model.config.save_pretrained(folder)
    state = {f"text_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    made["sd15-layout"] = folder
    return made


def check_loaded(model, folder) -> None:
    """The reference must run the checkpoint's weights, whatever the key layout."""
    (weight_file,) = folder.glob("model*.safetensors")
    stored = {k.removeprefix("text_model."): v for k, v in load_file(weight_file).items()}
    stored.pop("embeddings.position_ids", None)
    params = model.state_dict()
    assert stored.keys() == params.keys(), f"{folder}: {sorted(stored.keys() ^ params.keys())}"
    for name, value in stored.items():
        assert torch.equal(value.float(), params[name]), f"{folder}: {name} was not loaded"


def text_encoder_refs(parity_dir, encoders, input_ids):
    generator = torch.Generator().manual_seed(7)
    short_ids = torch.randint(0, 49408, (2, 9), generator=generator)
    tensors = {"input_ids": input_ids, "short_input_ids": short_ids}
    dirs = {}
    for name, folder in encoders.items():
        kwargs = {"variant": "fp16", "dtype": torch.float32} if name.endswith("fp16") else {}
        model = CLIPTextModel.from_pretrained(folder, **kwargs).eval()
        assert next(model.parameters()).dtype == torch.float32
        check_loaded(model, folder)
        with torch.no_grad():
            full = model(input_ids=input_ids).last_hidden_state
            short = model(input_ids=short_ids).last_hidden_state
        tensors[f"{name}.last_hidden_state"] = full
        tensors[f"{name}.short_last_hidden_state"] = short
        dirs[name] = str(folder.relative_to(parity_dir))
        print(f"{name}: {model.config.hidden_act}, hidden {model.config.hidden_size}")
    return tensors, dirs


def main() -> None:
    args = parse_args(__doc__)
    parity_dir = args.parity_dir.resolve()
    out = ref_dir(parity_dir, "clip")
    (out / "DONE").unlink(missing_ok=True)
    models = models_dir(parity_dir)

    folders = {name: models / name / "tokenizer" for name in TINY_MODELS}
    folders.update(make_tokenizer_folders(out))
    save_json(out / "tokenizer.json", {"prompts": PROMPTS, "tokenizers": tokenizer_refs(parity_dir, folders)})

    full_vocab = CLIPTokenizer.from_pretrained(folders["hf5"])
    encoder_prompts = PROMPTS[:3] + [LONG_PROMPT]
    input_ids = full_vocab(encoder_prompts, padding="max_length", max_length=77, truncation=True,
                           return_tensors="pt").input_ids
    encoders = {name: models / name / "text_encoder" for name in (*TINY_MODELS, "tiny-a-fp16")}
    encoders.update(make_text_encoders(out))
    tensors, dirs = text_encoder_refs(parity_dir, encoders, input_ids)
    save_tensors(out / "text_encoder.safetensors", tensors)
    save_json(out / "text_encoder.json", {"dirs": dirs, "prompts": encoder_prompts,
                                          "tokenizer": "hf5"})
    mark_done(out)


if __name__ == "__main__":
    main()
