"""What ``seq`` is when the dataset is known: TRL 1.16's own tokenization, truncation and padding,
replayed on a ``.jsonl`` file to find the padded length of the longest step.

TRL feeds each step the batch's sequences (prompt + completion ids, with the special tokens it adds)
truncated one by one to ``max_length`` and padded together to the longest in the batch, rounded up
to ``pad_to_multiple_of``. Every kept example lands in some batch over an epoch, so the peak step's
padded length is ``min(max_length, longest kept example)`` rounded up. What each trainer does
differs (read in the installed sources):

- DPO / IPO (trl/trainer/dpo_trainer.py ``_prepare_dataset`` ~1036, ``DataCollatorForPreference``
  ~145): a plain-text completion gets ``eos_token`` appended as text unless it ends with it; prompt
  and prompt + completion are tokenized with the tokenizer's special tokens (``tokenizer(text)``), a
  conversation through the chat template (``add_special_tokens=False``); the completion starts where
  the prompt's ids and the prompt + completion's diverge. With ``keep_start`` an example whose prompt
  alone fills ``max_length`` is dropped (~1137); ``keep_end`` keeps the last ``max_length`` ids.
- KTO (kto_trainer.py ``_prepare_dataset`` ~1044, ``DataCollatorForUnpairedPreference`` ~161): the
  same tokenization on prompt/completion (a paired file is unpaired first: per 1000-row chunk the
  chosen rows, then the rejected ones -- data_utils.py ``_unpair_row``); always ``keep_start``, and
  the drop whenever ``max_length`` is set. The KL forward reads mismatched sequences, the prompt of
  each example with the completion of the one before it within its batch of
  ``per_device_train_batch_size`` (~1159): its padded length counts too.
- ORPO / SimPO (experimental/orpo, experimental/cpo ``tokenize_row``): conversations are rendered to
  text first; ids without special tokens, then a BOS prepended and an EOS appended unless present;
  only the completion is truncated (to ``max_length`` minus the prompt, never below nothing), so a
  prompt longer than ``max_length`` stays whole; ``max_length`` None means 512; no
  ``pad_to_multiple_of``, no drop.

Tokenizers are read with the ``tokenizers`` library from ``tokenizer.json`` alone -- transformers 5
ignores ``tokenizer_config.json``'s ``add_bos_token`` / ``add_eos_token`` when that file exists
(tokenization_utils_base.py ~1818), so its post-processor decides BOS/EOS -- and chat templates are
rendered with transformers' ``render_jinja_template``: neither imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from refplan.errors import PlanError
from refplan.methods import Method

#: datasets.Dataset.map's default batch_size: the chunk unpair_preference_dataset reorders
UNPAIR_CHUNK = 1000
#: ORPOTrainer / CPOTrainer: max_length None -> 512 (orpo_trainer.py ~302, cpo_trainer.py ~292)
LEGACY_DEFAULT_MAX_LENGTH = 512
#: which TRL code path tokenizes and pads for each method
FAMILY = {Method.DPO: "dpo", Method.IPO: "dpo", Method.KTO: "kto", Method.ORPO: "legacy", Method.SIMPO: "legacy"}


@dataclass(frozen=True)
class Padding:
    """TRL's three settings that shape a padded sequence (DPOConfig's defaults)."""

    max_length: int | None = 1024
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None


def round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


@dataclass(frozen=True)
class Derived:
    """The padded length one method's TRL path gives a dataset."""

    path: str
    method: Method
    seq: int  # the peak step's padded length
    longest: int  # the longest kept sequence before truncation
    max_length: int | None  # as the trainer applies it
    multiple: int | None
    kept: int
    dropped: int

    def detail(self) -> str:
        parts = [f"longest example {self.longest} tokens"]
        if self.max_length is not None and self.longest > self.max_length:
            parts.append(f"truncated to max_length {self.max_length}")
        elif self.max_length is not None:
            parts.append(f"padded to the longest, under max_length {self.max_length}")
        if self.multiple:
            parts.append(f"rounded to multiple {self.multiple}")
        if self.dropped:
            parts.append(f"{self.dropped} of {self.kept + self.dropped} examples dropped: the prompt fills max_length")
        return f"derived from {self.path} ({', '.join(parts)})"


# --------------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------------

class Tokenizer:
    """A tokenizer directory read as transformers' fast tokenizer reads it, without transformers' torch."""

    def __init__(self, directory: str | Path, flag: str):
        d = Path(directory).expanduser()
        if not (d / "tokenizer.json").is_file():
            raise PlanError(flag, f"{directory}: no tokenizer.json there (give a local model or tokenizer directory)")
        from tokenizers import Tokenizer as Backend

        self.backend = Backend.from_file(str(d / "tokenizer.json"))
        cfg_path = d / "tokenizer_config.json"
        self.config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        self.flag = flag
        self.special = {k: _token_text(self.config.get(k)) for k in
                        ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")}
        self.special = {k: v for k, v in self.special.items() if v is not None}
        self.bos_id = self._id(self.special.get("bos_token"))
        self.eos_id = self._id(self.special.get("eos_token"))
        self.chat_template = _chat_template(d, self.config)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def encode(self, text: str, special: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=special).ids

    def render(self, messages: list, generation_prompt: bool) -> str:
        """The chat template's text, as ``apply_chat_template(tokenize=False)`` renders it."""
        if self.chat_template is None:
            raise PlanError(self.flag, "the dataset is conversational (lists of messages) and this tokenizer has no "
                                       "chat template to render them")
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, _ = render_jinja_template(conversations=[messages], chat_template=self.chat_template,
                                                add_generation_prompt=generation_prompt, **self.special)
        except Exception as err:  # noqa: BLE001 -- a template error is the user's input
            raise PlanError(self.flag, f"the chat template fails on the dataset: {type(err).__name__}: {err}") from None
        return rendered[0]

    def chat_ids(self, messages: list, generation_prompt: bool = False) -> list[int]:
        return self.encode(self.render(messages, generation_prompt), special=False)


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _chat_template(d: Path, config: dict) -> str | None:
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text()
    tmpl = config.get("chat_template")
    if isinstance(tmpl, list):  # named templates: transformers uses "default"
        tmpl = next((t.get("template") for t in tmpl if t.get("name") == "default"), None)
    return tmpl


# --------------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------------

PAIRED = ("prompt", "chosen", "rejected")
UNPAIRED = ("prompt", "completion", "label")


def read_rows(path: str, method: Method) -> list[dict]:
    """The ``.jsonl`` rows, checked for the columns ``method``'s trainer reads (one line naming --dataset)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise PlanError("--dataset", f"{path}: no such file")
    rows = []
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PlanError("--dataset", f"{path}:{i + 1}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise PlanError("--dataset", f"{path}:{i + 1}: expected a JSON object per line")
            rows.append(row)
    if not rows:
        raise PlanError("--dataset", f"{path}: no rows")
    cols = set(rows[0])
    kto = method is Method.KTO
    if not (set(PAIRED) <= cols or (kto and set(UNPAIRED) <= cols)):
        need = "prompt/chosen/rejected" + (" or prompt/completion/label" if kto else "")
        raise PlanError("--dataset", f"{path}: {method.value} needs columns {need}; has {', '.join(sorted(cols))}")
    keys = PAIRED if set(PAIRED) <= cols else UNPAIRED
    for i, row in enumerate(rows):
        if not set(keys) <= set(row):
            raise PlanError("--dataset", f"{path}: row {i + 1} lacks {', '.join(k for k in keys if k not in row)}")
    return rows


def conversational(row: dict) -> bool:
    """trl.data_utils.is_conversational: a message list under one of the text columns."""
    value = next((row[k] for k in ("prompt", "chosen", "rejected", "completion") if k in row), None)
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def derive(path: str, tok: Tokenizer, method: Method, padding: Padding, batch: int) -> Derived:
    """The peak step's padded length for ``method`` on the file at ``path``."""
    rows = read_rows(path, method)
    family = FAMILY[method]
    if family == "legacy":
        lengths, dropped, k, multiple = _legacy(rows, tok, padding), 0, padding.max_length, None
        k = LEGACY_DEFAULT_MAX_LENGTH if k is None else k
    else:
        lengths, dropped = _dpo(rows, tok, padding) if family == "dpo" else _kto(rows, tok, padding, batch)
        k, multiple = padding.max_length, padding.pad_to_multiple_of
    if not lengths:
        raise PlanError("--dataset", f"{path}: every example is dropped (its prompt alone fills max_length {k})")
    longest = max(full for full, _ in lengths)
    seq = round_up(max(cut for _, cut in lengths), multiple)
    kept = len(rows) * (2 if method is Method.KTO and set(PAIRED) <= set(rows[0]) else 1) - dropped
    return Derived(path, method, seq, longest, k, multiple, kept, dropped)


def _cut(n: int, k: int | None) -> int:
    return n if k is None else min(n, k)


def _with_eos(text, eos: str | None):
    return text if eos is None or text.endswith(eos) else text + eos


def _dpo_example(row: dict, tok: Tokenizer) -> tuple[int, list[int]]:
    """(prompt length, [prompt+chosen, prompt+rejected] lengths) as DPOTrainer tokenizes a row."""
    if conversational(row):
        p = tok.chat_ids(row["prompt"], generation_prompt=True)
        full = [tok.chat_ids(row["prompt"] + row[c]) for c in ("chosen", "rejected")]
    else:
        eos = tok.special.get("eos_token")
        p = tok.encode(row["prompt"])
        full = [tok.encode(row["prompt"] + _with_eos(row[c], eos)) for c in ("chosen", "rejected")]
    return min(common_prefix(p, f) for f in full), [len(f) for f in full]


def _dpo(rows: list[dict], tok: Tokenizer, padding: Padding) -> tuple[list[tuple[int, int]], int]:
    k, out, dropped = padding.max_length, [], 0
    for row in rows:
        plen, lens = _dpo_example(row, tok)
        if k is not None and padding.truncation_mode == "keep_start" and plen >= k:
            dropped += 1
            continue
        out += [(n, _cut(n, k)) for n in lens]
    return out, dropped


def _unpaired(rows: list[dict]) -> list[dict]:
    """unpair_preference_dataset's order: per chunk of 1000 rows, the chosen rows then the rejected ones."""
    if "completion" in rows[0]:
        return rows
    out = []
    for i in range(0, len(rows), UNPAIR_CHUNK):
        chunk = rows[i:i + UNPAIR_CHUNK]
        out += [{"prompt": r["prompt"], "completion": r["chosen"]} for r in chunk]
        out += [{"prompt": r["prompt"], "completion": r["rejected"]} for r in chunk]
    return out


def _kto(rows: list[dict], tok: Tokenizer, padding: Padding, batch: int) -> tuple[list[tuple[int, int]], int]:
    k, kept, dropped = padding.max_length, [], 0
    for row in _unpaired(rows):
        if conversational(row):
            p = tok.chat_ids(row["prompt"], generation_prompt=True)
            full = tok.chat_ids(row["prompt"] + row["completion"])
        else:
            p = tok.encode(row["prompt"])
            full = tok.encode(row["prompt"] + _with_eos(row["completion"], tok.special.get("eos_token")))
        plen = common_prefix(p, full)
        if k is not None and plen >= k:  # KTO drops whenever max_length is set (kto_trainer.py ~1153)
            dropped += 1
            continue
        kept.append((plen, len(full) - plen))
    out = [(p + c, _cut(p + c, k)) for p, c in kept]
    for i in range(0, len(kept), batch):  # KL: prompt i with the completion before it, within the batch
        chunk = kept[i:i + batch]
        for j, (p, _) in enumerate(chunk):
            n = p + chunk[j - 1][1]
            out.append((n, _cut(n, k)))
    return out, dropped


def _legacy(rows: list[dict], tok: Tokenizer, padding: Padding) -> list[tuple[int, int]]:
    """ORPOTrainer / CPOTrainer ``tokenize_row`` (build_tokenized_answer, add_bos/eos_token_if_needed)."""
    k = LEGACY_DEFAULT_MAX_LENGTH if padding.max_length is None else padding.max_length
    out = []
    for row in rows:
        prompt, answers = _legacy_text(row, tok)
        p = tok.encode(prompt, special=False)
        for answer in answers:
            full = tok.encode(prompt + answer, special=False)
            start = len(p) - (p != full[:len(p)])
            plen, alen = start, len(full) - start
            if tok.bos_id is not None and (plen == 0 or full[0] != tok.bos_id):
                plen += 1
            if tok.eos_id is not None and (alen == 0 or full[-1] != tok.eos_id):
                alen += 1
            out.append((plen + alen, plen + (alen if plen + alen <= k else max(0, k - plen))))
    return out


def _legacy_text(row: dict, tok: Tokenizer) -> tuple[str, list[str]]:
    """maybe_apply_chat_template: the prompt rendered with the generation prompt, each completion as the
    rest of the rendered conversation (trl/data_utils.py apply_chat_template)."""
    if not conversational(row):
        return row["prompt"], [row["chosen"], row["rejected"]]
    prompt = tok.render(row["prompt"], generation_prompt=True)
    wholes = [tok.render(row["prompt"] + row[c], generation_prompt=False) for c in ("chosen", "rejected")]
    for whole in wholes:  # the prompt is cut to its common prefix with each rendered conversation
        prompt = prompt[:common_prefix(list(prompt), list(whole))]
    return prompt, [whole[len(prompt):] for whole in wholes]
