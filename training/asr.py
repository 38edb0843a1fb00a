"""`train asr`: fine-tune Whisper for Korean and the campus's names, then hand the kiosk a
CTranslate2 model it loads like its own. One recipe, top to bottom:

    corpus folders (bench asr's format) + optional campus-name clips in the kiosk's voices
      -> train / validation split by sentence (seeded; no sentence on both sides)
      -> batches with seeded speed and noise augmentation (training clips only)
      -> LoRA or full fine-tune of WhisperForConditionalGeneration; loss on the transcript
         tokens and <|endoftext|> only, after a fixed <|startoftranscript|><|ko|><|transcribe|>
         <|notimestamps|> prefix that is never a label
      -> validation loss and CER (campus_guide.scoring, the one scorer) every eval_steps; the best
         checkpoint by CER (ties: lower loss) is kept; early stop after `patience` evaluations
      -> merged (LoRA folded into the weights) -> CTranslate2 (int8) -> loaded by faster-whisper
         and scored again on the same clips: the conversion must not cost more than ct2_tolerance

    OUT/log.jsonl   step, loss, lr, elapsed_s, cpu_s (+ eval_loss, cer, wer when evaluated)
    OUT/best/       adapter (lora) or complete model (full), with campus_train.json
    OUT/merged/     Hugging Face folder: weights, tokenizer, preprocessor_config.json
    OUT/ct2/        CTranslate2 folder for device.asr (asr.model: a path to it)
    OUT/report.json CER / WER before, after, after conversion; per-clip transcripts; counts
    OUT/loss.png, OUT/done.json

Decoding here (HF and faster-whisper alike) is greedy, temperature 0, no timestamps, the language
token given, Whisper's suppress lists applied, cut at max_new_tokens: the two CERs differ by the
conversion (and faster-whisper's own log-mel features) only.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from campus_guide.config import Config
from campus_guide.corpus import load_corpus, write_transcripts
from campus_guide.errors import UserError
from campus_guide.prompt import language_of
from campus_guide.scoring import char_score, corpus_rate, normalize_chars, word_score
from training import runs
from training.asr_config import AsrConfig, asr_config_hash

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SOT, TRANSCRIBE, NO_TIMESTAMPS, EOT = "<|startoftranscript|>", "<|transcribe|>", "<|notimestamps|>", "<|endoftext|>"
PREFIX_LEN = 4          # SOT, language, task, no-timestamps: the decoder's fixed start
REPORT = "report.json"

# Campus-name questions as a visitor says them; {n} is a building's or place's name.
SYNTH_TEMPLATES = {
    "ko": ("{n} 어디에 있나요?", "{n}에 어떻게 가요?", "{n} 어디예요?", "{n}"),
    "en": ("Where is {n}?", "How do I get to {n}?", "{n}, please.", "{n}"),
}


@dataclass
class Utterance:
    path: Path
    text: str
    lang: str           # the language token it is trained and decoded with
    source: str         # corpus folder name, or "synth"


@dataclass
class AsrResult:
    out_dir: Path
    best_dir: Path
    merged_dir: Path
    ct2_dir: Path
    best_step: int
    steps: int
    stopped_early: bool
    first_eval_loss: float
    best_eval_loss: float
    report: dict        # what report.json holds


# ---------------------------------------------------------------------------------------- data

def synthesize_campus(kb_path: str | Path, out: str | Path, clips: int, languages: list[str], seed: int,
                      kiosk: Config) -> Path:
    """A corpus folder of `clips` campus-name utterances spoken by the kiosk's Synthesizer,
    at 16 kHz. Reused when the knowledge base, count, languages, seed and voices are unchanged."""
    from campus_guide.knowledge import load_kb
    from device.audio import resample, write_wav
    from device.tts import Synthesizer

    kb = load_kb(kb_path)
    out = Path(out)
    key = {"kb_sha256": kb.sha256, "clips": clips, "languages": list(languages), "seed": seed,
           "voices": dict(kiosk.tts.voices), "length_scale": kiosk.tts.length_scale}
    card = out / "synth.json"
    if card.is_file() and json.loads(card.read_text()) == key and (out / "transcripts.tsv").is_file():
        return out
    sentences = sorted({t.format(n=name) for e in kb.entries() for lang in languages
                        for name in ((e.name.ko,) if lang == "ko" else (e.name.en,))
                        for t in SYNTH_TEMPLATES[lang]})
    random.Random(seed).shuffle(sentences)
    tts = Synthesizer(kiosk)
    rows = []
    for i, text in enumerate(sentences[:clips]):
        lang = language_of(text)
        audio = np.concatenate(list(tts.synthesize(text, lang)) or [np.zeros(0, np.float32)])
        name = f"synth-{i:04d}-{lang}.wav"
        write_wav(out / name, resample(audio, tts.sample_rate, SAMPLE_RATE), SAMPLE_RATE)
        rows.append((name, text))
    write_transcripts(out, rows)
    card.write_text(json.dumps(key, ensure_ascii=False, indent=2))
    return out


def gather(cfg: AsrConfig, kiosk: Config) -> list[Utterance]:
    """Every clip of the corpus folders and the synthetic set, with its language token."""
    folders = [(Path(c), Path(c).name) for c in cfg.corpus]
    if cfg.synth.clips:
        synth = synthesize_campus(cfg.synth.kb or kiosk.kb, cfg.synth.out, cfg.synth.clips,
                                  cfg.synth.languages, cfg.seed, kiosk)
        folders.append((synth, "synth"))
    utts = []
    for folder, source in folders:
        for clip in load_corpus(folder):
            lang = language_of(clip.text) if cfg.language == "auto" else cfg.language
            utts.append(Utterance(clip.path, clip.text, lang, source))
    return utts


def split_by_sentence(utts: list[Utterance], val_fraction: float, seed: int):
    """(train, validation): whole sentences go to one side (compared as the CER scorer sees
    them), val_fraction of the distinct sentences to validation, at least one, seeded."""
    keys = sorted({normalize_chars(u.text) for u in utts})
    if len(keys) < 2:
        raise UserError(f"the corpus has {len(keys)} distinct sentence(s); a train/validation split "
                        "by sentence needs at least 2")
    random.Random(seed).shuffle(keys)
    val_keys = set(keys[:max(1, round(val_fraction * len(keys)))])
    train = [u for u in utts if normalize_chars(u.text) not in val_keys]
    val = [u for u in utts if normalize_chars(u.text) in val_keys]
    return train, val


def augment(audio: np.ndarray, rng: np.random.Generator, a) -> np.ndarray:
    """Speed (resampled: tempo and pitch together, like a tape) and white noise at a random SNR."""
    if a.speed_prob and rng.random() < a.speed_prob:
        factor = rng.uniform(a.speed_min, a.speed_max)
        n = max(1, int(round(len(audio) / factor)))
        audio = np.interp(np.linspace(0, len(audio) - 1, n), np.arange(len(audio)), audio).astype(np.float32)
    if a.noise_prob and rng.random() < a.noise_prob:
        rms = float(np.sqrt(np.mean(audio ** 2))) or 1e-4
        snr = rng.uniform(a.noise_snr_min, a.noise_snr_max)
        audio = audio + rng.standard_normal(len(audio)).astype(np.float32) * rms / 10 ** (snr / 20)
    return np.clip(audio, -1, 1).astype(np.float32)


# ------------------------------------------------------------------------------ model and loss

def load_whisper(base: str | Path, dtype=None):
    """(model, tokenizer, feature extractor) from a local Hugging Face Whisper folder."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    b = Path(base)
    if (b / "model.bin").is_file() and not any(b.glob("*.safetensors")) and not any(b.glob("pytorch_model*.bin")):
        raise UserError(f"{b} is a CTranslate2 conversion (model.bin), which cannot be fine-tuned; "
                        "give the Hugging Face Whisper folder it was converted from as 'base'")
    missing = [f for f in ("config.json", "preprocessor_config.json") if not (b / f).is_file()]
    if not b.is_dir() or missing:
        raise UserError(f"base {b}: not a local Hugging Face Whisper folder (missing "
                        f"{', '.join(missing) or 'the folder'}); save one with model.save_pretrained "
                        "and processor.save_pretrained — no model hub is used")
    if not (b / "tokenizer.json").is_file():
        raise UserError(f"base {b}: tokenizer.json missing (faster-whisper needs it after conversion)")
    model = WhisperForConditionalGeneration.from_pretrained(b, dtype=dtype, local_files_only=True)
    tok = WhisperTokenizerFast.from_pretrained(b, local_files_only=True)
    fe = WhisperFeatureExtractor.from_pretrained(b, local_files_only=True)
    if fe.feature_size != model.config.num_mel_bins:
        raise UserError(f"base {b}: preprocessor_config.json has {fe.feature_size} mel bins but the "
                        f"model expects {model.config.num_mel_bins}")
    return model, tok, fe


class Labeller:
    """Token ids of one clip: the fixed prefix, " " + transcript (Whisper writes a leading space),
    <|endoftext|>. `decoder_input` drops the last id, `labels` the first and masks the prefix."""

    def __init__(self, tok):
        self.tok = tok
        ids = [self._id(t) for t in (SOT, TRANSCRIBE, NO_TIMESTAMPS, EOT)]
        if None in ids:
            raise UserError("the tokenizer is not Whisper's: it lacks <|startoftranscript|> / "
                            "<|transcribe|> / <|notimestamps|> / <|endoftext|>")
        self.sot, self.transcribe, self.notimestamps, self.eot = ids

    def _id(self, token: str) -> int | None:
        i = self.tok.convert_tokens_to_ids(token)    # an unknown token comes back as <unk>'s id
        return i if i is not None and self.tok.convert_ids_to_tokens(i) == token else None

    def lang_id(self, lang: str) -> int:
        i = self._id(f"<|{lang}|>")
        if i is None:
            raise UserError(f"the tokenizer has no language token <|{lang}|> (an English-only Whisper?)")
        return i

    def prefix(self, lang: str) -> list[int]:
        return [self.sot, self.lang_id(lang), self.transcribe, self.notimestamps]

    def ids(self, text: str, lang: str) -> list[int]:
        return self.prefix(lang) + self.tok.encode(" " + text.strip(), add_special_tokens=False) + [self.eot]

    def text(self, ids) -> str:
        return self.tok.decode([i for i in ids if i < self.eot]).strip()


def collate(items: list[tuple[np.ndarray, list[int]]], fe, eot: int) -> dict:
    """(audio, ids) pairs -> input_features, decoder_input_ids (right-padded with <|endoftext|>),
    decoder_attention_mask, labels (-100 on the prefix's predictions and on padding)."""
    import torch

    feats = fe([a for a, _ in items], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    n = max(len(ids) for _, ids in items) - 1
    dec = torch.full((len(items), n), eot, dtype=torch.long)
    lab = torch.full((len(items), n), -100, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, (_, ids) in enumerate(items):
        k = len(ids) - 1
        dec[i, :k] = torch.tensor(ids[:-1])
        lab[i, :k] = torch.tensor(ids[1:])
        lab[i, :PREFIX_LEN - 1] = -100       # <|ko|> <|transcribe|> <|notimestamps|> are given, not learned
        mask[i, :k] = 1
    return {"input_features": feats, "decoder_input_ids": dec, "decoder_attention_mask": mask, "labels": lab}


def transcript_loss(model, batch: dict):
    """Mean cross-entropy over the label tokens (transcript + <|endoftext|>)."""
    import torch.nn.functional as F

    logits = model(input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"],
                   decoder_attention_mask=batch["decoder_attention_mask"]).logits
    return F.cross_entropy(logits.float().transpose(1, 2), batch["labels"], ignore_index=-100)


def suppress_lists(model) -> tuple[list[int], list[int]]:
    """Whisper's suppress_tokens and begin_suppress_tokens, as faster-whisper applies them."""
    g = getattr(model, "generation_config", None)
    sup = getattr(g, "suppress_tokens", None) or model.config.suppress_tokens or []
    begin = getattr(g, "begin_suppress_tokens", None) or model.config.begin_suppress_tokens or []
    return list(sup), list(begin)


def greedy_transcribe(model, fe, lab: Labeller, audio: list[np.ndarray], langs: list[str],
                      max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy decoding with the language token given, no timestamps, Whisper's suppress lists."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    sup, begin = suppress_lists(model)
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(audio), batch_size):
            feats = fe(audio[s:s + batch_size], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            feats = feats.to(dev, next(model.parameters()).dtype)
            enc = BaseModelOutput(last_hidden_state=model.get_encoder()(feats).last_hidden_state)
            ids = torch.tensor([lab.prefix(x) for x in langs[s:s + batch_size]], device=dev)
            done = torch.zeros(len(ids), dtype=torch.bool, device=dev)
            past, inp, new = None, ids, []
            for t in range(max_new_tokens):
                o = model(encoder_outputs=enc, decoder_input_ids=inp, past_key_values=past, use_cache=True)
                logits = o.logits[:, -1].float()
                logits[:, sup] = -math.inf
                if t == 0:
                    logits[:, begin] = -math.inf
                nxt = logits.argmax(-1).masked_fill(done, lab.eot)
                new.append(nxt)
                done |= nxt == lab.eot
                if done.all():
                    break
                past, inp = o.past_key_values, nxt[:, None]
            toks = torch.stack(new, 1).tolist() if new else [[] for _ in ids]
            out += [lab.text(row[:row.index(lab.eot)] if lab.eot in row else row) for row in toks]
    return out


def score(hyps: list[str], refs: list[str]) -> dict:
    """Corpus CER and WER over all clips (total edits / total reference length)."""
    return {"cer": corpus_rate([char_score(h, r) for h, r in zip(hyps, refs)]),
            "wer": corpus_rate([word_score(h, r) for h, r in zip(hyps, refs)])}


def add_lora(model, cfg: AsrConfig):
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.lora.target_modules if m not in names]
    if missing:
        raise UserError(f"lora.target_modules {missing} are not modules of this model "
                        "(Whisper has q_proj k_proj v_proj out_proj fc1 fc2)")
    return get_peft_model(model, LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha,
                                            lora_dropout=cfg.lora.dropout,
                                            target_modules=cfg.lora.target_modules, bias="none"))


def merge_lora(base: str | Path, adapter: str | Path, out: str | Path) -> Path:
    """The adapter folded into a float32 copy of the base, saved with tokenizer and feature
    extractor: a standalone Hugging Face Whisper folder."""
    import torch
    from peft import PeftModel

    model, tok, fe = load_whisper(base, torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return save_whisper(merged, tok, fe, out)


def save_whisper(model, tok, fe, out: str | Path) -> Path:
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    fe.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- CTranslate2

def to_ctranslate2(merged: str | Path, out: str | Path, quantization: str = "int8") -> Path:
    """CTranslate2's own Transformers converter; tokenizer.json and preprocessor_config.json are
    copied along (faster-whisper reads both from the model folder and would otherwise ask the hub)."""
    from ctranslate2.converters import TransformersConverter

    merged = Path(merged)
    files = [f for f in ("tokenizer.json", "preprocessor_config.json") if (merged / f).is_file()]
    TransformersConverter(str(merged), copy_files=files).convert(str(out), quantization=quantization, force=True)
    return Path(out)


def faster_whisper_transcribe(ct2: str | Path, audio: list[np.ndarray], langs: list[str],
                              max_new_tokens: int, threads: int = 0, compute_type: str = "int8") -> list[str]:
    """The converted model as the kiosk loads it (faster-whisper, CPU, int8), decoding the way
    `greedy_transcribe` does. faster-whisper's own `max_new_tokens` stops short of the count asked
    for (about half of it, measured with CTranslate2 4.8 / faster-whisper 1.2), so it gets room
    and the tokens are cut at `max_new_tokens` here, exactly as the Hugging Face side cuts them."""
    from faster_whisper import WhisperModel

    m = WhisperModel(str(ct2), device="cpu", compute_type=compute_type, cpu_threads=threads)
    room = min(444, 2 * max_new_tokens + 8)    # (4 + room) / 2 >= max_new_tokens up to 200
    out = []
    quiet = logging.getLogger("faster_whisper")      # one INFO line per clip otherwise
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        for a, lang in zip(audio, langs):
            segs, _ = m.transcribe(a, language=lang, beam_size=1, temperature=0.0, without_timestamps=True,
                                   condition_on_previous_text=False, vad_filter=False,
                                   no_speech_threshold=None, max_new_tokens=room)
            tokens = [t for s in segs for t in s.tokens][:max_new_tokens]
            out.append(m.hf_tokenizer.decode(tokens).strip())
    finally:
        quiet.setLevel(level)
    return out


# -------------------------------------------------------------------------------- the recipe

def train_asr(cfg: AsrConfig, kiosk: Config | None = None, progress: bool = True) -> AsrResult:
    import torch
    from tqdm import tqdm

    from device.audio import read_wav
    from training.models import torch_dtype
    from training.plots import plot_log
    from training.runs import TRAIN_RECORD

    kiosk = kiosk or Config()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch_dtype(cfg.dtype, dev.type)

    # data: every clip read once (16 kHz mono float32: ~230 MB per hour of audio)
    train_u, val_u = split_by_sentence(gather(cfg, kiosk), cfg.val_fraction, cfg.seed)
    model, tok, fe = load_whisper(cfg.base, dtype)
    lab = Labeller(tok)

    def encode(utts):
        kept, dropped = [], 0
        for u in utts:
            ids = lab.ids(u.text, u.lang)
            if len(ids) - PREFIX_LEN > cfg.max_label_tokens:
                dropped += 1
                continue
            kept.append((u, read_wav(u.path, SAMPLE_RATE), ids))
        return kept, dropped

    train, train_dropped = encode(train_u)
    val, val_dropped = encode(val_u)
    if not train or not val:
        raise UserError(f"{len(train)} training and {len(val)} validation clips left after dropping "
                        f"transcripts longer than max_label_tokens={cfg.max_label_tokens}")
    refs, val_audio, val_langs = [u.text for u, _, _ in val], [a for _, a, _ in val], [u.lang for u, _, _ in val]
    model.to(dev)

    def evaluate(m) -> dict:
        m.eval()
        losses, weights = [], []
        with torch.no_grad():
            for s in range(0, len(val), cfg.batch_size):
                b = collate([(a, ids) for _, a, ids in val[s:s + cfg.batch_size]], fe, lab.eot)
                b = {k: v.to(dev) for k, v in b.items()}
                b["input_features"] = b["input_features"].to(dtype)
                n = int((b["labels"] != -100).sum())
                losses.append(transcript_loss(m, b).item() * n)
                weights.append(n)
        hyps = greedy_transcribe(m, fe, lab, val_audio, val_langs, cfg.max_new_tokens, cfg.batch_size)
        m.train()
        return {"eval_loss": sum(losses) / sum(weights), **score(hyps, refs), "hyps": hyps}

    before = evaluate(model)
    if cfg.method == "lora":
        model = add_lora(model, cfg)
    else:
        model.requires_grad_(True)
    model.train()

    per_epoch = max(1, len(train) // (cfg.batch_size * cfg.grad_accum))
    total = cfg.max_steps or math.ceil(cfg.epochs * per_epoch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    warm = max(1, cfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / total))
    rng = np.random.default_rng(cfg.seed)          # augmentation
    order_rng = random.Random(cfg.seed)            # batch order

    def stream():
        while True:
            idx = list(range(len(train)))
            order_rng.shuffle(idx)
            for s in range(0, len(idx) - cfg.batch_size + 1 if len(idx) >= cfg.batch_size else 1, cfg.batch_size):
                yield [train[i] for i in idx[s:s + cfg.batch_size]]

    batches = stream()
    out = Path(cfg.out)
    log_file = runs.start(out)
    record = {"recipe": "asr", "method": cfg.method, "base": cfg.base, "config_hash": asr_config_hash(cfg),
              "seed": cfg.seed, "language": cfg.language, "train_clips": len(train), "val_clips": len(val)}

    def write(row: dict) -> None:
        with log_file.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def save_best(step: int, ev: dict) -> Path:
        d = out / "best"
        model.save_pretrained(d)
        if cfg.method == "full":
            tok.save_pretrained(d)
            fe.save_pretrained(d)
        (d / TRAIN_RECORD).write_text(json.dumps({**record, "step": step, "eval_loss": ev["eval_loss"],
                                                  "cer": ev["cer"], "wer": ev["wer"]}, indent=2))
        return d

    t0, c0 = time.time(), time.process_time()
    first = best = before
    best_step, bad, stopped, step = 0, 0, False, 0
    write({"step": 0, "eval_loss": first["eval_loss"], "cer": first["cer"], "wer": first["wer"],
           "elapsed_s": 0.0, "cpu_s": 0.0})
    best_dir = save_best(0, first)
    bar = tqdm(range(1, total + 1), desc=f"asr {cfg.method}", disable=not progress)
    for step in bar:
        for _ in range(cfg.grad_accum):
            items = next(batches)
            b = collate([(augment(a, rng, cfg.augment), ids) for _, a, ids in items], fe, lab.eot)
            b = {k: v.to(dev) for k, v in b.items()}
            b["input_features"] = b["input_features"].to(dtype)
            loss = transcript_loss(model, b) / cfg.grad_accum
            loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        row = {"step": step, "loss": loss.item() * cfg.grad_accum, "lr": sched.get_last_lr()[0],
               "elapsed_s": round(time.time() - t0, 2), "cpu_s": round(time.process_time() - c0, 2)}
        bar.set_postfix(loss=f"{row['loss']:.3f}", cer=f"{best['cer']:.3f}")
        if step % cfg.eval_steps == 0 or step == total:
            ev = evaluate(model)
            row.update({k: ev[k] for k in ("eval_loss", "cer", "wer")})
            better = ev["cer"] < best["cer"] - cfg.min_delta or (
                ev["cer"] <= best["cer"] and ev["eval_loss"] < best["eval_loss"])
            if better:
                best, best_step, bad = ev, step, 0
                best_dir = save_best(step, ev)
            else:
                bad += 1
        write(row)
        if bad >= cfg.patience:
            stopped = True
            log.info("early stop at step %d: validation CER has not improved for %d evaluations "
                     "(best %.4f at step %d)", step, bad, best["cer"], best_step)
            break
    bar.close()
    seconds = time.time() - t0
    plot = plot_log(log_file, out / "loss.png")

    # the best checkpoint, standalone; then as the kiosk will run it
    model = opt = None                      # free the training copy before the merge loads another
    if cfg.method == "lora":
        merged_dir = merge_lora(cfg.base, best_dir, out / "merged")
    else:
        merged_dir = best_dir
    merged, _, _ = load_whisper(merged_dir, torch.float32)
    after = evaluate(merged.to(dev))
    del merged
    ct2_dir = to_ctranslate2(merged_dir, out / "ct2", cfg.quantization)
    ct2_hyps = faster_whisper_transcribe(ct2_dir, val_audio, val_langs, cfg.max_new_tokens, cfg.threads)
    converted = score(ct2_hyps, refs)
    delta = converted["cer"] - after["cer"]

    def figures(ev):
        return {k: ev[k] for k in ("cer", "wer")} | ({"eval_loss": ev["eval_loss"]} if "eval_loss" in ev else {})

    report = {
        "config_hash": record["config_hash"], "method": cfg.method, "base": cfg.base, "seed": cfg.seed,
        "language": cfg.language, "quantization": cfg.quantization,
        "clips": {"train": len(train), "val": len(val), "dropped_too_long": train_dropped + val_dropped,
                  "train_sentences": len({normalize_chars(u.text) for u, _, _ in train}),
                  "val_sentences": len({normalize_chars(u.text) for u, _, _ in val}),
                  "by_source": {s: sum(u.source == s for u, _, _ in train + val)
                                for s in sorted({u.source for u, _, _ in train + val})}},
        "steps": step, "best_step": best_step, "stopped_early": stopped, "seconds": round(seconds, 1),
        "before": figures(before), "after": figures(after), "ct2": converted,
        "ct2_cer_delta": delta, "ct2_tolerance": cfg.ct2_tolerance,
        "ct2_within_tolerance": abs(delta) <= cfg.ct2_tolerance,
        "rows": [{"path": str(u.path), "lang": u.lang, "ref": r, "before": hb, "after": ha, "ct2": hc}
                 for (u, _, _), r, hb, ha, hc in zip(val, refs, before["hyps"], after["hyps"], ct2_hyps)],
        "loss_plot": str(plot), "ct2_dir": str(ct2_dir),
    }
    (out / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    runs.mark_done(out, {"config_hash": record["config_hash"], "steps": step, "stopped_early": stopped})
    return AsrResult(out, best_dir, Path(merged_dir), ct2_dir, best_step, step, stopped,
                     first["eval_loss"], best["eval_loss"], report)
