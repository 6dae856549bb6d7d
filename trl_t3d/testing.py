"""Tiny, offline models of every diffusion-LM family in DESIGN.md's table, the classes users load.

The Hub is not reachable on our machines, so tests, examples and benchmarks build these in code and load them
back through the same `from_pretrained` paths a user takes:

- `make_tokenizer`: character-level `WordLevel` tokenizer with pad/eos/mask and a chat template.
- `save_llada` / `save_dream` / `save_sdar`: tiny configs of our native classes (`trl_t3d.models`, held equal to
  the families' original code by the golden fixtures in tests/golden/), saved in the Hub layout with the published
  `model_type` and `auto_map`, loaded without remote code.
- `save_generic_mlm`: `LlamaForCausalLM` with `is_causal=False` and `config.mask_token_id` (generic adapter).
- `save_remote_mlm`: a remote-code bidirectional model of no known family ("any other diffusion LM").
- `save_llada2`: a tiny native LLaDA2.0 / LLaDA2.1 (MoE, block diffusion; `model_type` llada2_moe / llada21_moe).
- `save_lladamoe`: a tiny native LLaDA-MoE (`lladamoe`, bidirectional MoE).
- `make_diffusion_gemma`: a tiny native `DiffusionGemmaForBlockDiffusion`.
- `quick_ddo_config`: a `DDOConfig` for a few CPU steps of training on these models, nothing saved or reported.
"""

from __future__ import annotations

import json
import os
import string
import textwrap

import torch

PAD, EOS, MASK, BOS = "<|pad|>", "<|eos|>", "<|mask|>", "<|bos|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [PAD, EOS, MASK, BOS, *ROLE_TOKENS]
SPECIAL_TOKEN_ROLES = {"pad_token": PAD, "eos_token": EOS, "mask_token": MASK, "bos_token": BOS}
CHARACTERS = list(string.digits + string.ascii_letters + string.punctuation + " \n")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def synthetic_rows(
    vocab_size: int,
    n: int = 4,
    completion_length: int = 8,
    block_length: int = 4,
    seed: int = 0,
    prompt_lengths=(4, 5, 6),
) -> list[dict]:
    """Trajectory rows of random tokens below `vocab_size` (ids from 10): row i has a prompt of
    `prompt_lengths[i % len]` tokens, and its step map decodes each block in a random order, blocks in sequence (the
    schema `collect_trajectories` writes)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        steps = []
        for start in range(0, completion_length, block_length):
            size = min(block_length, completion_length - start)
            steps += [start + int(p) for p in torch.randperm(size, generator=g)]
        prompt_length = prompt_lengths[i % len(prompt_lengths)]
        rows.append(
            {
                "prompt_ids": torch.randint(10, vocab_size, (prompt_length,), generator=g).tolist(),
                "completion_ids": torch.randint(10, vocab_size, (completion_length,), generator=g).tolist(),
                "step_map": steps,
                "block_length": block_length,
            }
        )
    return rows


def synthetic_trajectories(
    tokenizer, n: int = 4, completion_length: int = 8, block_length: int = 4, seed: int = 0, prompt_lengths=(4, 5, 6)
):
    """A trajectory `Dataset` of `synthetic_rows` over the tokenizer's vocabulary."""
    from datasets import Dataset

    return Dataset.from_list(synthetic_rows(len(tokenizer), n, completion_length, block_length, seed, prompt_lengths))


def quick_ddo_config(output_dir, **overrides):
    """A `DDOConfig` for a few CPU steps: batch 2, a log line every step, seed 0, no saving, reporting, progress bar or
    activation checkpointing; `overrides` go on top."""
    from .trainer import DDOConfig

    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        activation_checkpointing=False,
        use_cpu=True,
        seed=0,
    )
    return DDOConfig(**{**settings, **overrides})


def ddo_trainer(model, args, train_dataset, processing_class, lora: bool = False):
    """A `DDOTrainer`; with `lora`, the small adapter the tests train (`LoraConfig(r=4, lora_alpha=8)`, the adapter's
    default target modules)."""
    from peft import LoraConfig

    from .trainer import DDOTrainer

    peft_config = LoraConfig(r=4, lora_alpha=8) if lora else None
    return DDOTrainer(
        model, args=args, train_dataset=train_dataset, processing_class=processing_class, peft_config=peft_config
    )


def train_and_list_moved(trainer) -> list[str]:
    """`trainer.train()`, then the names of the trainable parameters it changed."""
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    return [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]


def plain_loop_completion(model, tokenizer, prompt: str, length: int, per_step: int, *, block=None, eos=None):
    """Greedy block decoding written without the decoder, the tests' reference: blocks of `block` (default: one block
    of `length`) left to right, one unpadded full forward per step, the `per_step` most confident masked positions of
    the block (probability of the argmax, the mask never proposed) take their argmax, until an `eos` (default: the
    tokenizer's) has everything before it decided. Returns (the text up to that EOS, forwards run)."""
    context, mask = tokenizer(prompt)["input_ids"], tokenizer.mask_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    block = block or length
    state, forwards = [mask] * length, 0
    for start in range(0, length, block):
        while mask in state[start : start + block]:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([context + state])).logits[0, len(context) :]
            forwards += 1
            probs = torch.softmax(logits.double(), -1)
            probs[:, mask] = -1.0
            confidence, tokens = probs.max(-1)
            undecided = [i for i in range(start, min(start + block, length)) if state[i] == mask]
            for i in sorted(undecided, key=lambda i: -confidence[i].item())[:per_step]:
                state[i] = int(tokens[i])
            if eos in state and mask not in state[: state.index(eos)]:
                return tokenizer.decode(state[: state.index(eos)], skip_special_tokens=True), forwards
    if eos in state:
        state = state[: state.index(eos)]
    return tokenizer.decode(state, skip_special_tokens=True), forwards


def one_step_full_and_lora(model, train_dataset, processing_class, output_dir):
    """One step of full training, then one of LoRA (`ddo_trainer(..., lora=True)`), each with activation
    checkpointing and learning rate 1e-3: yields (lora, trainer, the names of the parameters the step moved)."""
    for lora in (False, True):
        args = quick_ddo_config(
            os.path.join(output_dir, f"out{lora}"), max_steps=1, learning_rate=1e-3, activation_checkpointing=True
        )
        trainer = ddo_trainer(model, args, train_dataset, processing_class, lora=lora)
        yield lora, trainer, train_and_list_moved(trainer)


def make_tokenizer(save_directory: str | None = None):
    """Character-level fast tokenizer: every printable ASCII character is one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **SPECIAL_TOKEN_ROLES,
        additional_special_tokens=ROLE_TOKENS,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    if save_directory is not None:
        tokenizer.save_pretrained(save_directory)
    return tokenizer


def _token_ids(tokenizer, *kinds: str) -> dict:
    """`{"<kind>_token_id": tokenizer.<kind>_token_id}` for each kind ("pad", "eos", "bos", "mask")."""
    return {f"{kind}_token_id": getattr(tokenizer, f"{kind}_token_id") for kind in kinds}


def _decoder_sizes(tokenizer, hidden_size: int, num_layers: int, num_heads: int, num_key_value_heads: int) -> dict:
    """The sizes of a tiny decoder over the tokenizer's vocabulary: an MLP twice as wide as the model, 1024 positions."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=1024,
    )


def _llama_kwargs(tokenizer, hidden_size: int, num_layers: int, num_heads: int, **extra) -> dict:
    return dict(
        **_decoder_sizes(tokenizer, hidden_size, num_layers, num_heads, num_heads),
        **_token_ids(tokenizer, "pad", "eos", "bos", "mask"),
        tie_word_embeddings=False,
        **extra,
    )


def make_generic_mlm(tokenizer=None, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4, seed: int = 0):
    """A LLaDA-like bidirectional Llama (`is_causal=False`) with the mask id in its config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or make_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(**_llama_kwargs(tokenizer, hidden_size, num_layers, num_heads, is_causal=False))
    return LlamaForCausalLM(config).eval()


def _seeded(model_class, config, seed: int):
    """`model_class(config)` initialized under `seed`, in eval mode."""
    torch.manual_seed(seed)
    return model_class(config).eval()


def tiny_llama(vocab_size: int, **config):
    """A one-layer `LlamaForCausalLM` (hidden size 16, 2 heads) over `vocab_size` tokens, `config` keys on top: the
    tests' model of no known family (causal unless `is_causal=False`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2
    )
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **sizes, **config))


def _saver(make, note: str = ""):
    """`save_<family>(save_directory, **kwargs)`: `make(tokenizer, **kwargs)` saved with the char tokenizer in
    `save_directory` (the Hub layout); it returns `save_directory`."""

    def save(save_directory: str, **kwargs) -> str:
        tokenizer = make_tokenizer(save_directory)
        make(tokenizer, **kwargs).save_pretrained(save_directory)
        return save_directory

    save.__name__ = save.__qualname__ = "save_" + make.__name__.removeprefix("make_")
    save.__doc__ = f"`{make.__name__}(tokenizer, **kwargs)` and the char tokenizer in the Hub layout. {note}".strip()
    return save


save_generic_mlm = _saver(make_generic_mlm)


# --------------------------------------------------------------------------------------------------
# Native families (trl_t3d.models): tiny configs of the classes users load, saved in the Hub layout (config.json with
# the published `model_type` and `auto_map`), loaded back without remote code.
# --------------------------------------------------------------------------------------------------

# LLaDA's attention and MLP projections by their published names: the LoRA targets the llada adapter must resolve to.
LLADA_LORA_TARGETS = frozenset({"q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"})

LLADA_AUTO_MAP = {
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModel": "modeling_llada.LLaDAModelLM",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
}


def make_llada(tokenizer=None, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4, seed: int = 0):
    """A tiny native `LLaDAModelLM` with the published 8B checkpoints' settings (llama blocks, RMSNorm, RoPE, SwiGLU,
    untied output) over the char tokenizer's vocabulary."""
    from .models.llada import LLaDAConfig, LLaDAModelLM

    tokenizer = tokenizer or make_tokenizer()
    config = LLaDAConfig(
        d_model=hidden_size,
        n_heads=num_heads,
        n_kv_heads=num_heads,
        n_layers=num_layers,
        mlp_hidden_size=2 * hidden_size,
        block_type="llama",
        activation_type="silu",
        layer_norm_type="rms",
        rope=True,
        rope_theta=10000.0,
        attention_dropout=0.0,
        residual_dropout=0.0,
        embedding_dropout=0.0,
        vocab_size=len(tokenizer),
        embedding_size=len(tokenizer),
        weight_tying=False,
        include_bias=False,
        include_qkv_bias=False,
        max_sequence_length=1024,
        **_token_ids(tokenizer, "mask", "eos", "pad"),
        auto_map=dict(LLADA_AUTO_MAP),
    )
    return _seeded(LLaDAModelLM, config, seed)


save_llada = _saver(make_llada, "`AutoModel.from_pretrained(dir)` loads it.")


DREAM_AUTO_MAP = {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"}
SDAR_AUTO_MAP = {
    "AutoConfig": "configuration_sdar.SDARConfig",
    "AutoModel": "modeling_sdar.SDARModel",
    "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
}


def _qwen_kwargs(tokenizer, hidden_size: int, num_layers: int, num_heads: int) -> dict:
    """Qwen2/Qwen3-style keys shared by the tiny Dream and SDAR configs (GQA with half the heads)."""
    return dict(
        **_decoder_sizes(tokenizer, hidden_size, num_layers, num_heads, max(1, num_heads // 2)),
        rope_theta=10000.0,
        tie_word_embeddings=False,
        **_token_ids(tokenizer, "pad", "eos", "bos"),
    )


def make_dream(tokenizer=None, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4, seed: int = 0):
    """A tiny native `DreamModel` (Qwen2 layers, bidirectional, logits shifted by one as Dream's) over the char
    tokenizer's vocabulary."""
    from .models.dream import DreamConfig, DreamModel

    tokenizer = tokenizer or make_tokenizer()
    config = DreamConfig(
        **_qwen_kwargs(tokenizer, hidden_size, num_layers, num_heads),
        mask_token_id=tokenizer.mask_token_id,
        auto_map=dict(DREAM_AUTO_MAP),
    )
    return _seeded(DreamModel, config, seed)


save_dream = _saver(make_dream, "`AutoModel.from_pretrained(dir)` loads it.")


def make_sdar(tokenizer=None, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4, seed: int = 0):
    """A tiny native `SDARForCausalLM` (Qwen3 layers with q/k norms, block diffusion through the caller's 4D mask)
    over the char tokenizer's vocabulary."""
    from .models.sdar import SDARConfig, SDARForCausalLM

    tokenizer = tokenizer or make_tokenizer()
    config = SDARConfig(
        **_qwen_kwargs(tokenizer, hidden_size, num_layers, num_heads),
        head_dim=hidden_size // num_heads,
        mask_token_id=tokenizer.mask_token_id,  # not a published SDAR key (its tokenizer names <|MASK|>): a convenience
        auto_map=dict(SDAR_AUTO_MAP),
    )
    return _seeded(SDARForCausalLM, config, seed)


save_sdar = _saver(make_sdar, "`AutoModelForCausalLM.from_pretrained(dir)` loads it.")


def _moe_settings(tokenizer, hidden_size: int, num_layers: int, num_heads: int, architecture: str, auto_map: dict):
    """The keys the tiny LLaDA2 and LLaDA-MoE configs share: sizes (GQA with half the heads), 8 experts with 2 per
    token, positions, special ids, architecture and auto_map."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        num_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=1024,
        # the mask id is a convenience: the published configs leave it to the tokenizer
        **_token_ids(tokenizer, "pad", "eos", "mask"),
        architectures=[architecture],
        auto_map=dict(auto_map),
    )


LLADA2_AUTO_MAP = {
    "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
    "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
    "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
}


def make_llada2(
    tokenizer=None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    model_type: str = "llada2_moe",
    **overrides,
):
    """A tiny native LLaDA2.0 (`model_type="llada2_moe"`) or LLaDA2.1 (`"llada21_moe"`) with every MoE feature of the
    published configs (a dense first layer, then 8 experts in 4 groups, top-2 within 2 groups, a shared expert, routed
    scaling, `expert_bias`; partial RoPE, q/k norm, GQA) over the char tokenizer's vocabulary."""
    from .models.llada2 import LLaDA2MoeConfig, LLaDA2MoeModelLM, LLaDA21MoeConfig, LLaDA21MoeModelLM

    tokenizer = tokenizer or make_tokenizer()
    config_class, model_class = {
        "llada2_moe": (LLaDA2MoeConfig, LLaDA2MoeModelLM),
        "llada21_moe": (LLaDA21MoeConfig, LLaDA21MoeModelLM),
    }[model_type]
    settings = dict(
        **_moe_settings(tokenizer, hidden_size, num_layers, num_heads, "LLaDA2MoeModelLM", LLADA2_AUTO_MAP),
        intermediate_size=2 * hidden_size,
        moe_intermediate_size=hidden_size // 2,
        head_dim=hidden_size // num_heads,
        num_shared_experts=1,
        n_group=4,
        topk_group=2,
        first_k_dense_replace=1,
        use_bias=False,
        attention_dropout=0.0,
        embedding_dropout=0.0,
        output_dropout=0.0,
    )
    return _seeded(model_class, config_class(**(settings | overrides)), seed)


save_llada2 = _saver(make_llada2)


LLADAMOE_AUTO_MAP = {
    "AutoConfig": "configuration_lladamoe.LLaDAMoEConfig",
    "AutoModel": "modeling_lladamoe.LLaDAMoEModel",
    "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM",
}


def make_lladamoe(
    tokenizer=None, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4, seed: int = 0, **overrides
):
    """A tiny native LLaDA-MoE (`lladamoe`): a dense first layer, then 8 softmax-routed experts (top 2) with
    `expert_bias` and a shared expert; q/k norm, partial RoPE, GQA; over the char tokenizer's vocabulary."""
    from .models.llada_moe import LLaDAMoEConfig, LLaDAMoEModelLM

    tokenizer = tokenizer or make_tokenizer()
    settings = dict(
        **_moe_settings(tokenizer, hidden_size, num_layers, num_heads, "LLaDAMoEModelLM", LLADAMOE_AUTO_MAP),
        dense_intermediate_size=2 * hidden_size,
        expert_intermediate_size=hidden_size // 2,
        shared_expert_intermediate_size=hidden_size,
        moe_layer_freq=[0] + [1] * (num_layers - 1),
        moe_router_enable_expert_bias=True,
        moe_router_score_function="softmax",
        qk_layernorm=True,
        partial_rotary_factor=0.5,
        rope_theta=50000.0,
    )
    return _seeded(LLaDAMoEModelLM, LLaDAMoEConfig(**(settings | overrides)), seed)


save_lladamoe = _saver(make_lladamoe)


# --------------------------------------------------------------------------------------------------
# Remote-code families: the modeling files are written next to the weights, as on the Hub.
# --------------------------------------------------------------------------------------------------

_REMOTE_MLM_CONFIG = """
from transformers import PretrainedConfig


class RemoteMLMConfig(PretrainedConfig):
    model_type = "toy_remote_mlm"

    def __init__(self, vocab_size=128, d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64,
                 max_sequence_length=1024, rope_theta=10000.0, mask_token_id=None, is_causal=False, **kwargs):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.mlp_hidden_size = mlp_hidden_size
        self.max_sequence_length = max_sequence_length
        self.rope_theta = rope_theta
        self.mask_token_id = mask_token_id
        self.is_causal = is_causal
        super().__init__(**kwargs)
"""

_REMOTE_MLM_MODELING = """
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_remote_mlm import RemoteMLMConfig


def _rope(x, theta):
    # x: (B, H, T, D); rotate pairs by absolute position (LLaDA does not take position ids)
    T, D = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    ang = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class RemoteMLMBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, h = config.d_model, config.mlp_hidden_size
        self.n_heads, self.theta = config.n_heads, config.rope_theta
        self.attn_norm = nn.RMSNorm(d, eps=1e-5)
        self.ff_norm = nn.RMSNorm(d, eps=1e-5)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj = nn.Linear(d, h, bias=False)
        self.up_proj = nn.Linear(d, h, bias=False)
        self.ff_out = nn.Linear(h, d, bias=False)

    def forward(self, x, key_mask):
        B, T, D = x.shape
        y = self.attn_norm(x)
        q, k, v = (p(y).view(B, T, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = _rope(q, self.theta), _rope(k, self.theta)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=False)
        x = x + self.attn_out(a.transpose(1, 2).reshape(B, T, D))
        y = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(y)) * self.up_proj(y))


class RemoteMLMModel(PreTrainedModel):
    config_class = RemoteMLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False

    def __init__(self, config):
        super().__init__(config)
        self.model = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.d_model),
            blocks=nn.ModuleList(RemoteMLMBlock(config) for _ in range(config.n_layers)),
            ln_f=nn.RMSNorm(config.d_model, eps=1e-5),
            ff_out=nn.Linear(config.d_model, config.vocab_size, bias=False),
        ))
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def get_input_embeddings(self):
        return self.model.wte

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        key_mask = None
        if attention_mask is not None and attention_mask.dim() == 2:
            key_mask = attention_mask[:, None, None, :].bool()
        x = self.model.wte(input_ids)
        for block in self.model.blocks:
            x = block(x, key_mask)
        logits = self.model.ff_out(self.model.ln_f(x))
        return CausalLMOutputWithPast(logits=logits)
"""


def _write_remote_code(save_directory: str, files: dict[str, str], auto_map: dict[str, str], config) -> None:
    os.makedirs(save_directory, exist_ok=True)
    for name, source in files.items():
        with open(os.path.join(save_directory, name), "w") as f:
            f.write(textwrap.dedent(source).lstrip())
    config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    config_dict["auto_map"] = auto_map
    with open(os.path.join(save_directory, "config.json"), "w") as f:
        json.dump(config_dict, f, indent=2)


def _materialize_remote_model(save_directory: str, auto_class: str, seed: int):
    """Build the remote-code model from its own files, initialize it and save its weights beside them."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.AutoConfig.from_pretrained(save_directory, trust_remote_code=True)
    model = getattr(transformers, auto_class).from_config(config, trust_remote_code=True)
    model.save_pretrained(save_directory)
    # save_pretrained rewrites config.json; keep the auto_map pointing at the local files.
    with open(os.path.join(save_directory, "config.json")) as f:
        saved = json.load(f)
    with open(os.path.join(save_directory, "config.json"), "w") as f:
        saved["auto_map"] = config.auto_map
        json.dump(saved, f, indent=2)
    return save_directory


def save_remote_mlm(
    save_directory: str, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4, seed: int = 0
):
    """Remote-code bidirectional model of no known family (`toy_remote_mlm`, `is_causal=False`, a mask id in its
    config): the "any other diffusion LM" path, loaded with `trust_remote_code=True` through the generic adapter.
    Module names are LLaDA's (`attn_out`, `ff_proj`, `ff_out`), so Llama-style LoRA targets would miss them."""
    tokenizer = make_tokenizer(save_directory)
    config = dict(
        model_type="toy_remote_mlm",
        vocab_size=len(tokenizer),
        d_model=hidden_size,
        n_layers=num_layers,
        n_heads=num_heads,
        mlp_hidden_size=2 * hidden_size,
        **_token_ids(tokenizer, "mask", "pad", "eos"),
        is_causal=False,
        architectures=["RemoteMLMModel"],
    )
    _write_remote_code(
        save_directory,
        {"configuration_remote_mlm.py": _REMOTE_MLM_CONFIG, "modeling_remote_mlm.py": _REMOTE_MLM_MODELING},
        {"AutoConfig": "configuration_remote_mlm.RemoteMLMConfig", "AutoModel": "modeling_remote_mlm.RemoteMLMModel"},
        config,
    )
    return _materialize_remote_model(save_directory, "AutoModel", seed)


def load_remote(save_directory: str, auto_class: str = "AutoModel"):
    import transformers

    return getattr(transformers, auto_class).from_pretrained(save_directory, trust_remote_code=True).eval()


# --------------------------------------------------------------------------------------------------
# DiffusionGemma: native in transformers, no remote code.
# --------------------------------------------------------------------------------------------------


def make_diffusion_gemma(
    tokenizer=None,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    canvas_length: int = 8,
    sliding_window: int = 512,
    attn_implementation: str | None = None,
):
    """A tiny native `DiffusionGemmaForBlockDiffusion` (MoE text layers with 2 experts, 1-layer vision tower).

    Layers alternate sliding / full attention as in the real model (the last one full); `sliding_window` lets tests
    make the window shorter than their sequences. The vocabulary is the char tokenizer's.
    """
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    tokenizer = tokenizer or make_tokenizer()
    head_dim = hidden_size // num_heads
    text_config = dict(
        **_decoder_sizes(tokenizer, hidden_size, num_layers, num_heads, max(1, num_heads // 2)),
        head_dim=head_dim,
        global_head_dim=2 * head_dim,
        num_global_key_value_heads=max(1, num_heads // 2),
        layer_types=["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers - 1)]
        + ["full_attention"],
        sliding_window=sliding_window,
        num_experts=2,
        top_k_experts=1,
        moe_intermediate_size=hidden_size,
        **_token_ids(tokenizer, "pad", "eos", "bos"),
    )
    vision_config = dict(
        model_type="gemma4_vision",
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        patch_size=4,
        position_embedding_size=64,
    )
    config = DiffusionGemmaConfig(
        text_config=text_config,
        vision_config=vision_config,
        canvas_length=canvas_length,
        boi_token_id=None,
        eoi_token_id=None,
        image_token_id=None,
    )
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return _seeded(DiffusionGemmaForBlockDiffusion, config, seed)


save_diffusion_gemma = _saver(make_diffusion_gemma, "Load it back with `DiffusionGemmaForBlockDiffusion`.")
