"""What the loss sees: examples, batches and the answer-only loss.

Two details matter more than any hyper-parameter:
- the loss covers only the answer tokens and the final `<end_of_turn>` (a masked end token is why
  the earlier fine-tunes never stopped talking);
- sequences are left-padded so every answer ends at the same position, and logits are computed
  only for the last answer-length positions (`logits_to_keep`): Gemma's 262k-way output layer is
  most of a CPU step otherwise (NOTES: 3.4 s vs 4.9 s per step on the 270M).
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from campus_guide import prompt
from campus_guide.errors import UserError

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]               # IGNORE on the prompt, token ids on the answer + <end_of_turn>


def encode(tok, prompt_text: str, target: str) -> Example:
    """Prompt and target tokenized apart, exactly as at inference: the device tokenizes the prompt
    (one <bos> added) and the model continues it."""
    p = tok(prompt_text, add_special_tokens=True)["input_ids"]
    t = tok(target, add_special_tokens=False)["input_ids"]
    eot = tok.convert_tokens_to_ids(prompt.END_OF_TURN)
    if not t or t[-1] != eot:
        raise UserError(f"target {target[-40:]!r} does not end in {prompt.END_OF_TURN} "
                        "(render it with campus_guide.prompt.render_target)")
    if p.count(tok.bos_token_id) != 1:
        raise UserError(f"prompt tokenizes with {p.count(tok.bos_token_id)} <bos>; "
                        "render_prompt's text must not contain one")
    return Example(p + t, [IGNORE] * len(p) + t)


def load_examples(path: Path, tok, max_length: int) -> list[Example]:
    if not path.is_file():
        raise UserError(f"{path} not found; build the data with `campus-guide train dataset`")
    out, dropped = [], 0
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ex = encode(tok, row["prompt"], row["target"])
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{path}:{i + 1}: not a dataset row ({e}); rows need 'prompt' and "
                            "'target'") from None
        if len(ex.input_ids) > max_length:
            dropped += 1
        else:
            out.append(ex)
    if dropped:
        log.warning("%s: %d examples longer than max_length=%d dropped", path, dropped, max_length)
    if not out:
        raise UserError(f"{path}: no usable examples (all longer than max_length={max_length}?)")
    return out


def collate(batch: list[Example], pad_id: int):
    """Left-pad to a common length: every answer then ends at the last position, so the answer
    span is the last `n_answer` positions for all rows."""
    import torch

    n = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), n), pad_id)
    labels = torch.full((len(batch), n), IGNORE)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for row, e in enumerate(batch):
        k = len(e.input_ids)
        ids[row, n - k:] = torch.tensor(e.input_ids)
        labels[row, n - k:] = torch.tensor(e.labels)
        mask[row, n - k:] = 1
    n_answer = max(sum(1 for x in e.labels if x != IGNORE) for e in batch)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "n_answer": n_answer}


def batches(data: list[Example], size: int, seed: int, pad_id: int) -> Iterator[dict]:
    """Endless shuffled batches, reshuffled each epoch with a seeded generator."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(data)))
        rng.shuffle(order)
        for i in range(0, max(1, len(order) - size + 1), size):   # full batches only
            yield collate([data[j] for j in order[i:i + size]], pad_id)


def answer_loss(model, batch) -> "torch.Tensor":
    """Cross-entropy on the answer tokens only, with logits for those positions only."""
    import torch.nn.functional as F

    mask = batch["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)       # positions as if unpadded, as at inference
    k = batch["n_answer"]
    logits = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=pos,
                   logits_to_keep=k + 1).logits[:, :-1]
    labels = batch["labels"][:, -k:]
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE)
