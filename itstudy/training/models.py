"""Models, tokenizers and precision for instruction tuning of seq2seq (T5) and decoder-only models.

A model is one of:
- a named T5 shape initialised from scratch with a seed (`scratch/t5-tiny` for tests and the demo,
  with tied embeddings; `scratch/t5-small`, `-base`, `-large`, `-xl` with the T5 v1.1 / lm-adapt
  architecture: gated-GELU, untied input and output embeddings, vocabulary 32128);
- a named decoder-only shape from scratch (`scratch/llama-tiny`: a LlamaConfig, for tests);
- a Hugging Face hub id or a local folder, loaded with the real `from_pretrained` path: an
  encoder-decoder (`config.is_encoder_decoder`) as a seq2seq model, anything else as a causal LM.

Random shapes carry the `scratch/` prefix because the bare names (`t5-small`, ...) are pretrained
checkpoints on the hub: a user who writes them expects trained weights, so they are refused with
a hint naming both.

A tokenizer is the T5 SentencePiece vocabulary (`t5`: the folder in $ITSTUDY_T5_TOKENIZER, else
the hub), a hub id or folder, or a byte-level BPE over whole words trained on the run's own texts (`bpe`).

Precision is bf16 (autocast, fp32 master weights, as Hugging Face's Trainer does) or fp32; `auto`
picks bf16 on GPU and fp32 on CPU. fp16 is not among them: T5 overflows to NaN in fp16
(transformers#4938), and the config refuses it when the experiment file loads.

This module imports only torch, transformers and tokenizers (no Ray, MLflow or pydantic), so the
benchmark can use it on a GPU box that has nothing else. Errors are `ModelSpecError`s that name
the value and say what was expected; `itstudy.training.runner` turns them into config errors that
name the field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
    T5TokenizerFast,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from itstudy.errors import UserError
from itstudy.paths import T5_TOKENIZER_ENV
from itstudy.training.fast_t5 import FastT5
from itstudy.training.shapes import CAUSAL_SHAPES, NAMED_SHAPES

# Every T5 / v1.1 / lm-adapt checkpoint uses this one SentencePiece vocabulary.
T5_TOKENIZER_HUB_ID = "google-t5/t5-small"
T5_VOCAB_SIZE = 32128  # the T5 embedding size: 32100 SentencePiece pieces padded to a multiple of 128

SCRATCH_PREFIX = "scratch/"
# Bare shape names that are pretrained checkpoints on the hub (where they are), for the refusal's hint.
_HUB_CHECKPOINTS = {"t5-small": "google-t5/t5-small", "t5-base": "google-t5/t5-base", "t5-large": "google-t5/t5-large",
                    "t5-xl": "google/t5-v1_1-xl"}

PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}


class ModelSpecError(UserError):
    """A model, tokenizer or precision that cannot be used; the message names it and says why."""


# --- precision ---------------------------------------------------------------------------------


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: `auto` is bf16 on GPU and fp32 on CPU (the config refuses fp16 at load)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision not in PRECISIONS:
        raise ModelSpecError(f"precision {precision!r}: expected one of auto, bf16, fp32")
    return PRECISIONS[precision]


# --- models ------------------------------------------------------------------------------------


def is_named_shape(name: str) -> bool:
    return name in NAMED_SHAPES or name in CAUSAL_SHAPES


def is_causal(name: str) -> bool:
    """Whether `name` (a named shape, folder or hub id) is a decoder-only model (reads only its config)."""
    if is_named_shape(name):
        return name in CAUSAL_SHAPES
    return not _read_config(name).is_encoder_decoder


def _refuse_bare_shape_name(name: str) -> None:
    """A name that is a scratch shape without its prefix is refused: it reads as a pretrained model."""
    if not is_named_shape(SCRATCH_PREFIX + name):
        return
    if name in _HUB_CHECKPOINTS:
        what = f"is a pretrained checkpoint name on the Hugging Face Hub ({_HUB_CHECKPOINTS[name]})"
    else:
        what = "names no pretrained checkpoint"
    raise ModelSpecError(f"{name!r} {what}; the randomly initialised shape is '{SCRATCH_PREFIX}{name}'")


def _read_config(name: str):
    """The model's config.json, from a folder or the hub (the local cache when offline)."""
    _refuse_bare_shape_name(name)
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelSpecError(f"model {name!r}: the folder has no config.json (save it with save_pretrained)")
        return AutoConfig.from_pretrained(str(folder))
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return AutoConfig.from_pretrained(name, local_files_only=offline)
    except (OSError, ValueError) as error:
        where = "in the local Hugging Face cache while offline (HF_HUB_OFFLINE=1)" if offline else "on the Hugging Face hub"
        raise ModelSpecError(
            f"model {name!r}: not a named shape ({', '.join([*NAMED_SHAPES, *CAUSAL_SHAPES])}), not a local folder, "
            f"and not found {where}: {str(error).splitlines()[0]}"
        ) from None


def check_model_available(name: str) -> None:
    """Raise ModelSpecError unless `name` is a named shape, a model folder, or a reachable hub id of
    an encoder-decoder or a causal LM.

    For hub ids this reads only `config.json` (from the cache when offline), so a typo or an
    offline machine fails here, in the driver, before any worker starts.
    """
    if is_named_shape(name):
        return
    config = _read_config(name)
    if not config.is_encoder_decoder and config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelSpecError(
            f"model {name!r}: a {config.model_type} model is neither an encoder-decoder nor a causal language model "
            f"that transformers can load with AutoModelForCausalLM"
        )


def t5_config(shape: str, vocab_size: int = T5_VOCAB_SIZE, pad_id: int = 0, eos_id: int = 1) -> T5Config:
    """The T5Config of a named shape; T5 starts decoding from the pad token."""
    if not is_named_shape(shape):
        raise ModelSpecError(f"model shape {shape!r}: expected one of {', '.join(NAMED_SHAPES)}")
    return T5Config(
        # v1.1 / lm-adapt: separate output embedding, no decoder-output rescaling (unless the shape says otherwise)
        **{"tie_word_embeddings": False, **NAMED_SHAPES[shape]},
        vocab_size=vocab_size,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        decoder_start_token_id=pad_id,
    )


def new_t5(config: T5Config, seed: int) -> T5ForConditionalGeneration:
    """A T5 with random weights drawn from `seed`; the output embedding untied unless the config ties it.

    transformers 5 always ties T5's lm_head to the shared embedding at construction (it unties
    only when a checkpoint holds both with different values), so the v1.1 head is split off here;
    `save_pretrained` then writes both and `from_pretrained` reads them back untied.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
        # transformers 5 keeps tie_word_embeddings=True for T5 and records a v1.1 config
        # (tie_word_embeddings=False) as scale_decoder_outputs=False.
        if config.scale_decoder_outputs:
            return model
        # T5's own init for an untied head: N(0, initializer_factor).
        head = torch.empty_like(model.shared.weight).normal_(0.0, config.initializer_factor)
    model.lm_head.weight = nn.Parameter(head)
    # Forget the tie so save_pretrained writes lm_head (transformers >= 5 keeps the map here).
    getattr(model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
    return model


def llama_config(shape: str, vocab_size: int, pad_id: int, eos_id: int, bos_id: int | None) -> LlamaConfig:
    """The LlamaConfig of a named decoder-only shape, with the tokenizer's special ids."""
    if shape not in CAUSAL_SHAPES:
        raise ModelSpecError(f"model shape {shape!r}: expected one of {', '.join(CAUSAL_SHAPES)}")
    return LlamaConfig(**CAUSAL_SHAPES[shape], vocab_size=vocab_size, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=bos_id)


def new_llama(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """A Llama with random weights drawn from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def padded_vocab_size(tokenizer: PreTrainedTokenizerBase) -> int:
    """The embedding rows for `tokenizer`: its size rounded up to a multiple of 128 (T5: 32100 -> 32128)."""
    return math.ceil(len(tokenizer) / 128) * 128


def build_model(name: str, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A named shape from scratch (seeded, sized to the tokenizer), else `from_pretrained(name)`."""
    if name in CAUSAL_SHAPES:
        ids = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)
        return new_llama(llama_config(name, padded_vocab_size(tokenizer), *ids), seed)
    if is_named_shape(name):
        config = t5_config(name, padded_vocab_size(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
        return new_t5(config, seed)
    check_model_available(name)
    location = str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
    model = _auto_class(is_causal(name)).from_pretrained(location)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ModelSpecError(
            f"model {name!r} has {model.get_input_embeddings().num_embeddings} embeddings but the tokenizer has "
            f"{len(tokenizer)} tokens; use the model's own tokenizer"
        )
    return model


def load_model(folder: str | Path) -> PreTrainedModel:
    """A model saved with `save_pretrained` (a checkpoint's `model/` folder), seq2seq or causal as its config says."""
    return _auto_class(is_causal(str(folder))).from_pretrained(str(folder))


def model_for_run(spec, tokenizer: PreTrainedTokenizerBase, seed: int, checkpoint: Path | None) -> PreTrainedModel | FastT5:
    """The model a run trains: built (`spec.name`, with `spec.lora` adapters if set), or restored from `checkpoint`,
    as a `FastT5` holding the same weights under `spec.implementation` 'fast' (checkpoints stay in HF's layout).

    `spec` is the study's model section. A LoRA checkpoint holds only the adapters
    (`adapter_config.json`): the base model is built again (seeded, or from the hub) and the
    saved adapters are loaded onto it, trainable.
    """
    model = _hf_model_for_run(spec, tokenizer, seed, checkpoint)
    return FastT5.from_hf(model) if spec.implementation == "fast" else model


def check_implementation(name: str, implementation: str) -> None:
    """The fast implementation is a T5: refuse a hub id or folder of another architecture (reads only its config)."""
    if implementation == "fast" and not is_named_shape(name) and (model_type := _read_config(name).model_type) != "t5":
        raise ModelSpecError(f"model {name!r} is a {model_type} model; implementation 'fast' runs T5 only (use 'hf')")


def _hf_model_for_run(spec, tokenizer: PreTrainedTokenizerBase, seed: int, checkpoint: Path | None) -> PreTrainedModel:
    if checkpoint is not None and not (checkpoint / ADAPTER_CONFIG).is_file():
        return load_model(checkpoint)
    model = build_model(spec.name, tokenizer, seed)
    if spec.lora is None:
        return model
    from peft import PeftModel

    if checkpoint is not None:
        return PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True)
    return with_lora(model, spec.lora.r, spec.lora.alpha, spec.lora.dropout, spec.lora.target_modules, seed)


ADAPTER_CONFIG = "adapter_config.json"  # what peft's save_pretrained writes beside the adapter weights


def with_lora(model: PreTrainedModel, r: int, alpha: float, dropout: float, target_modules: list[str] | None, seed: int):
    """`model` with LoRA adapters (peft), their random half drawn from `seed`; every other weight is frozen."""
    from peft import LoraConfig, TaskType, get_peft_model

    task = TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM
    config = LoraConfig(task_type=task, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_peft_model(model, config)
    except ValueError as error:  # unknown target modules, or no default for this architecture
        raise ModelSpecError(f"lora: {str(error).splitlines()[0]}") from None


def _auto_class(causal: bool):
    return AutoModelForCausalLM if causal else AutoModelForSeq2SeqLM


def parameter_counts(model: PreTrainedModel) -> dict[str, int]:
    """Parameters: total, trainable, and the encoder / decoder matmul weights that the FLOPs formula counts.

    `encoder` and `decoder` leave out the input embedding (a lookup, no FLOPs); `decoder`
    includes the output projection (lm_head), which is a matmul over every target token. A
    decoder-only model has no encoder: all its matmul weights count as `decoder`.
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    if not model.config.is_encoder_decoder:
        # parameters() lists a tied head once, as the embedding: add its matmul back
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        return {"total": total, "trainable": trainable, "encoder": 0, "decoder": total - embedding + head * tied}
    encoder = sum(p.numel() for p in model.get_encoder().parameters()) - embedding
    decoder = sum(p.numel() for p in model.get_decoder().parameters()) - embedding + head
    return {"total": total, "trainable": trainable, "encoder": encoder, "decoder": decoder}


# --- tokenizers --------------------------------------------------------------------------------


def t5_tokenizer_location() -> str:
    """$ITSTUDY_T5_TOKENIZER (a folder holding spiece.model), else the hub id of the T5 vocabulary."""
    return os.environ.get(T5_TOKENIZER_ENV) or T5_TOKENIZER_HUB_ID


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """`t5`, a hub id or a folder; `bpe` tokenizers are built with `train_bpe_tokenizer` instead."""
    if spec == "bpe":
        raise ModelSpecError("tokenizer 'bpe' is trained on the run's texts: call train_bpe_tokenizer")
    location = t5_tokenizer_location() if spec == "t5" else spec
    # A folder holding only spiece.model has no tokenizer config for AutoTokenizer to dispatch on.
    loader = T5TokenizerFast if spec == "t5" else AutoTokenizer
    try:
        return loader.from_pretrained(location)
    except (OSError, ValueError) as error:
        hint = f" (set ${T5_TOKENIZER_ENV} to a folder holding spiece.model)" if spec == "t5" else ""
        raise ModelSpecError(f"tokenizer {spec!r}: cannot load {location!r}{hint}: {str(error).splitlines()[0]}") from None


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE over whole words, trained on `texts`, with T5's special-token layout (pad 0, eos 1, unk 2).

    Text is split at whitespace and punctuation first and every word gets the same leading-space
    marker, so a word has the same tokens wherever it stands: `'ocean'` in a definition,
    `Output: ocean.` in a demonstration and the target `ocean` all hold `Ġocean`. (Plain
    byte-level BPE spelt them three ways, and a tiny model trained from scratch could not learn
    to answer with the label words its prompt names.) The cost: decoding puts spaces around
    punctuation ("it's" -> "it ' s"), which SuperNI's answer normalisation removes for
    single-word labels. Byte-level, so any text encodes (nothing is unknown); training is
    deterministic (a BPE with an end-of-word suffix was not: it numbers the suffixed characters
    in hash-map order). BPE because the `tokenizers` Unigram trainer degenerates to single
    characters on small corpora. Like T5's, it appends </s> to every sequence.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation(),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False),  # every word gets its leading Ġ
    ])
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])  # no leading space
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
