"""Tiny random-weight models and tokenizers, built locally (no model hub), for fast tests.

Every helper writes a Hugging Face checkpoint with ``save_pretrained`` into a given directory and
returns that directory, so tests load it the way users load real models (``hf:DIR``).

- :func:`make_tiny_model`: a 2-layer Llama-architecture causal LM with a byte-level BPE tokenizer
  trained on :data:`CORPUS`, with one of the chat templates below (or none).
- :func:`make_tiny_encoder`: a BERT-style encoder (sequence classification), not a causal LM.
- :func:`make_lora_adapter`: a LoRA adapter for a tiny model, with random non-zero weights.

Chat template presets (``chat_template=`` accepts a preset name or a Jinja string):

- ``"chatml"``: ``<|im_start|>role\\ncontent<|im_end|>\\n``; no BOS; ``<|im_end|>`` is EOS.
- ``"llama2"``: ``<s>[INST] content [/INST] answer </s>``; the template writes the BOS itself.
- ``None``: no chat template (the backend falls back to a plain template).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

CORPUS = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Two plus two is four. Three times three is nine. Ten minus one is nine.",
    "How do I bake bread? Mix flour, water, salt and yeast, then let it rise.",
    "Write a short poem about the sea: waves roll in, the gulls cry, the tide goes out.",
    "I cannot help with that request because it could cause harm.",
    "Sure, here is a helpful answer to your question about gardening and plants.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please explain why the sky is blue in simple words for a child.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Assistant: Hello! How can I help you today? User: Tell me a joke.",
    "A critique of the response: it is helpful, honest and harmless.",
    "Revision: here is a safer and more accurate version of the answer.",
    "Which response is better, A or B? Response A is more helpful.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000.",
]

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

PRESETS = {"chatml": CHATML_TEMPLATE, "llama2": LLAMA2_TEMPLATE}


def build_tokenizer(
    vocab_size: int = 400,
    add_bos: bool = False,
    eos_token: str = "</s>",
    pad_token: str | None = "<pad>",
    chat_template: str | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on :data:`CORPUS` and wrap it for transformers.

    ``add_bos`` makes plain ``tokenizer(text)`` prepend ``<s>``; ``pad_token=None`` leaves the
    tokenizer without a pad token (as many real chat models ship).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if add_bos:
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token=eos_token,
        pad_token=pad_token,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    wrapped.chat_template = PRESETS.get(chat_template, chat_template) if chat_template else None
    return wrapped


def make_tiny_model(
    directory: str | Path,
    chat_template: str | None = "chatml",
    add_bos: bool | None = None,
    pad_token: str | None = "<pad>",
    seed: int = 0,
    hidden_size: int = 48,
    num_layers: int = 2,
    init_range: float = 0.2,
) -> Path:
    """Save a tiny random Llama causal LM and its tokenizer to ``directory``; return the path.

    ``chat_template`` is a preset name (``"chatml"``, ``"llama2"``), a Jinja string, or ``None``.
    ``add_bos`` defaults to the preset's convention: False for ChatML, True otherwise.
    The EOS is ``<|im_end|>`` for ChatML and ``</s>`` otherwise. A large ``init_range`` gives
    peaked next-token distributions, so greedy decoding has no near-ties.
    """
    directory = Path(directory)
    chatml = chat_template == "chatml"
    add_bos = (not chatml) if add_bos is None else add_bos
    eos = "<|im_end|>" if chatml else "</s>"
    tokenizer = build_tokenizer(
        add_bos=add_bos, eos_token=eos, pad_token=pad_token, chat_template=chat_template
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,  # RoPE: no weights depend on it; fits guard prompts
        initializer_range=init_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_tiny_encoder(directory: str | Path, seed: int = 0) -> Path:
    """Save a tiny BERT sequence classifier (an encoder, not a causal LM) to ``directory``."""
    directory = Path(directory)
    tokenizer = build_tokenizer(add_bos=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=2,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_lora_adapter(
    model_dir: str | Path, directory: str | Path, seed: int = 1, scale: float = 0.5
) -> Path:
    """Save a LoRA adapter for the model in ``model_dir`` whose weights are random, not zero.

    PEFT initialises ``lora_B`` to zero (a no-op adapter); here every LoRA matrix is drawn
    from N(0, scale^2) so the adapter visibly changes the model's outputs.
    """
    from peft import LoraConfig, get_peft_model

    directory = Path(directory)
    base = LlamaForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    peft_model = get_peft_model(base, lora)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    peft_model.save_pretrained(directory)
    return directory
