"""Token log-probs and the decoder's hidden states, computed in chunks (the math of the update).

- `token_logprobs(model, input_ids, attention_mask)` computes log p(x_t | x_<t) for every position without
  materialising the full (B, T, V) fp32 logits at once: the output head and log-softmax run over chunks
  of time steps, each under activation checkpointing so the backward pass also holds one chunk at a time.
  Pass the sampler's `temperature`: the rollout records log softmax(logits / T), and the ratio, the KL and
  the entropy must be taken under the same distribution.
- `final_hidden(model, input_ids, attention_mask)`: the decoder's last hidden states (PPO's value features);
  with `share_prefix` (what `token_logprobs` does) a prompt that every row begins with runs once.
- `trunk_layer(model)`: the first decoder layer with a trainable parameter. Below it the layers are frozen, so
  a token's input to that layer is the same at rollout and at update time: the rollout keeps it
  (`rollout(keep_hidden_at=...)`) and `final_hidden(trunk=..., trunk_at=...)` runs only the layers from there
  on (`run_from_layer`). The CPU default adapts its top 15 of 30 layers: half of the update's forward.
- `group_prompt(model, rows...)` -> `SharedPrompt`: a GRPO group's prompt run once (from the trunk's layer
  when there is one) for every later pass over the group's rows, across micro-batches (`Config.share_prompt`):
  its keys and values are expanded to each micro-batch's rows and, with gradients, the rows' gradients are
  summed into one backward of the prompt pass. The same log-probs and gradients as every row run alone; only
  the rounding order differs (fp32: ~1e-6, see tests/test_shared_prompt.py). `micro_batches` splits a
  minibatch so that no micro-batch mixes groups, and `GroupPrompts` makes and finishes each group's pass as
  the update's micro-batches come.

Every function takes a causal LM with or without a PEFT wrapper (`decoder_and_head` looks through it); the
model loading is in `policy.py`.
"""

from __future__ import annotations

import inspect

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from .kvcache import cache_kwarg


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left padding and padding holes do not shift RoPE."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def decoder_and_head(model):
    """(decoder, output head) of a causal LM, looking through a PEFT wrapper.

    Calling the decoder directly still applies LoRA (its layers are injected into the modules) and still
    honours `reference()` (disabling the adapter switches those layers off).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None:
        raise TypeError(
            f"token_logprobs / final_hidden need a causal LM with a decoder and an output head; got {type(base)}"
        )
    return decoder, head


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM (through a PEFT wrapper)."""
    return decoder_and_head(model)[0].layers


def valid_targets(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T-1) True where target token t and the token before it are both real (not padding)."""
    return attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()  # (B, T-1)


def final_hidden(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    share_prefix: bool = False,
    trunk: torch.Tensor | None = None,
    trunk_at: int | None = None,
    prompt: SharedPrompt | None = None,
) -> torch.Tensor:
    """The decoder's final hidden states (LoRA applied, or not inside `reference()`), without the logits.

    input_ids, attention_mask: (B, T). Returns (B, T, H). `use_cache=False`: no KV cache is built, since
    nothing decodes after this call (PPO's value head reads these features).

    `share_prefix`: when the rows begin with the same real tokens (a GRPO group's prompt: `shared_prefix_len`
    of at least `MIN_SHARED_PREFIX`), the decoder runs that prefix once for one row and the rest of every row
    on top of its KV cache, repeated B times. Autograd flows through the repeat, so the gradient is the
    unshared one (each row's share of the prompt's keys and values summed); only the prompt's LoRA dropout
    noise is then shared by the rows. Off under activation checkpointing (transformers builds no cache
    there) and for a single row.

    `trunk` (B, T, H) with `trunk_at` = k: every token's input to decoder layer k, as the rollout computed it
    (`rollout(keep_hidden_at=k)`; the columns of padding are ignored). Only layers k.. run. Valid when
    layers < k hold nothing trainable (`trunk_layer`): then they compute the same function at rollout and
    at update time, up to the rounding of a different batch layout (fp32: ~1e-6, see the tests).

    `prompt` (`group_prompt`): the pass over a prompt that every row begins with, run once beforehand (for a
    whole group, across micro-batches); only the rest of every row runs here, on its keys and values.
    """
    if trunk is not None and trunk_at is None:
        raise ValueError("final_hidden: `trunk` needs `trunk_at`, the layer it is the input of")
    decoder, _ = decoder_and_head(model)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    positions = position_ids_from_mask(attention_mask)  # (B, T)
    B, T = input_ids.shape
    if prompt is not None:
        if prompt.start != (trunk_at if trunk is not None else 0):
            raise ValueError(
                f"final_hidden: the prompt's pass starts at layer {prompt.start}, this one at "
                f"{trunk_at if trunk is not None else 0}: pass the same `trunk` to both"
            )
        P = prompt.length
        rest = _run_rest(decoder, input_ids, attention_mask, positions, P, trunk, trunk_at, prompt.cache(B))
        return torch.cat([prompt.hidden.expand(B, -1, -1), rest], dim=1)  # (B, T, H)
    P = min(shared_prefix_len(input_ids, attention_mask), T - 1) if share_prefix else 0
    if P < MIN_SHARED_PREFIX or getattr(decoder, "is_activation_checkpointing", False):
        if trunk is not None:
            return run_from_layer(decoder, trunk, attention_mask, positions, trunk_at)  # (B, T, H)
        out = decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
        )
        return out.last_hidden_state  # (B, T, H)
    cache = DynamicCache(config=decoder.config)
    prefix = _run_prefix(
        decoder, input_ids[:1, :P], attention_mask[:1, :P], trunk, trunk_at, cache
    )  # (1, P, H)
    cache.batch_repeat_interleave(B)  # (1, h, P, d) -> (B, h, P, d) per layer from layer k, differentiably
    rest = _run_rest(decoder, input_ids, attention_mask, positions, P, trunk, trunk_at, cache)  # (B, T-P, H)
    return torch.cat([prefix.expand(B, -1, -1), rest], dim=1)  # (B, T, H)


def _run_prefix(decoder, input_ids, attention_mask, trunk, trunk_at, cache) -> torch.Tensor:
    """The decoder on the first P tokens of one row, filling `cache`: input_ids, attention_mask (1, P);
    from layer `trunk_at` on `trunk[:1, :P]` when `trunk` is given. Returns (1, P, H)."""
    P = input_ids.shape[1]
    positions = position_ids_from_mask(attention_mask)  # (1, P)
    if trunk is not None:  # layers k.. only: the cache of layers < k stays empty
        return run_from_layer(decoder, trunk[:1, :P], attention_mask, positions, trunk_at, cache)
    return decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        **{cache_kwarg(decoder): cache, "use_cache": True},
    ).last_hidden_state


def _run_rest(decoder, input_ids, attention_mask, positions, P, trunk, trunk_at, cache) -> torch.Tensor:
    """The decoder on columns P.. of every row, on a `cache` holding columns ..P (B rows): (B, T-P, H)."""
    if trunk is not None:
        return run_from_layer(decoder, trunk[:, P:], attention_mask, positions[:, P:], trunk_at, cache)
    return decoder(
        input_ids=input_ids[:, P:],
        attention_mask=attention_mask,
        position_ids=positions[:, P:],
        **{cache_kwarg(decoder): cache, "use_cache": True},
    ).last_hidden_state


def run_from_layer(
    decoder,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    start: int,
    cache=None,
) -> torch.Tensor:
    """Decoder layers `start`.. and the final norm on `hidden` (B, t, H), the input of layer `start` for
    the t newest tokens: what the decoder's own forward does after its embedding and first `start` layers.
    attention_mask (B, L) covers the cached tokens and these (L = cached + t), positions (B, t). With a
    `cache` (a `DynamicCache`), layers `start`.. read and extend it; the mask takes its length from layer
    `start`, since the layers below it have none."""
    mask = create_causal_mask(
        config=decoder.config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        cache=cache,
        position_ids=positions,
        layer_idx=start if cache is not None else None,
    )
    position_embeddings = decoder.rotary_emb(hidden, position_ids=positions)
    for layer in decoder.layers[start : decoder.config.num_hidden_layers]:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=position_embeddings,
            position_ids=positions,
            cache=cache,
            use_cache=cache is not None,
        )
    return decoder.norm(hidden)


def trunk_layer(model) -> int | None:
    """The first decoder layer holding a trainable parameter, when that is above layer 0 and every
    trainable parameter lies in the decoder's layers (no trainable embedding or head); else None.

    Layers below it are frozen, so a token's input to it does not change when the adapter learns: the
    rollout can keep it and the update start there (`final_hidden(trunk=...)`). None also for a decoder
    that `run_from_layer` cannot run: one without `layers`, `rotary_emb` and `norm` (the Llama / Qwen2
    layout), with other than full-attention layers, or under a transformers older than its calls.
    """
    decoder, _ = decoder_and_head(model)
    layers = getattr(decoder, "layers", None)
    if not {"cache", "layer_idx"} <= set(inspect.signature(create_causal_mask).parameters):
        return None  # an older transformers 5.x (`past_key_values`, `cache_position`): recompute instead
    if layers is None or not all(hasattr(decoder, a) for a in ("rotary_emb", "norm")):
        return None
    if any(t != "full_attention" for t in getattr(decoder.config, "layer_types", None) or []):
        return None
    layer_of = {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable or any(id(p) not in layer_of for p in trainable):
        return None
    start = min(layer_of[id(p)] for p in trainable)
    return start or None


MIN_SHARED_PREFIX = 16
"""Shorter common prefixes are not worth a second decoder call."""


def shared_prefix_len(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """How many leading columns are the same real token in every row (B >= 2; else 0)."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)  # (T,)
    differ = (~same).nonzero()
    return int(differ[0]) if len(differ) else int(same.shape[0])


class SharedPrompt:
    """One pass over a prompt that several rows begin with (a GRPO group's), for every later pass over
    those rows (`final_hidden(prompt=...)`, across micro-batches): its final hidden states (1, P, H) and each
    layer's keys and values (1, h, P, d) from layer `start` on.

    With gradients, `hidden` and the keys and values are leaves cut from the prompt pass's graph: every
    row's backward pass (through the expansion to its micro-batch) adds its share into their `.grad`, and
    `backward()` then runs the prompt pass's own backward once on the summed gradients. The result is the
    unshared gradient (each row's gradient through the prompt tokens, summed), with the prompt's forward
    and backward run once instead of once per row; only the rounding order differs (and, with
    `lora_dropout` > 0, the prompt's dropout noise is shared by the rows, as inside one micro-batch without
    it). Without gradients `backward()` does nothing.
    """

    def __init__(self, hidden: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]], start: int, config):
        self.start, self.config = start, config
        self.graph: list[tuple[torch.Tensor, torch.Tensor]] = []  # (output of the pass, its leaf)
        if torch.is_grad_enabled() and hidden.requires_grad:
            outs = [hidden] + [t for pair in kv for t in pair]
            leaves = [t.detach().requires_grad_(t.requires_grad) for t in outs]
            self.graph = [(o, leaf) for o, leaf in zip(outs, leaves) if o.requires_grad]
            hidden, kv = leaves[0], list(zip(leaves[1::2], leaves[2::2]))
        self.hidden, self.kv = hidden, kv

    @property
    def length(self) -> int:
        return self.hidden.shape[1]

    def cache(self, rows: int) -> DynamicCache:
        """A cache holding the prompt for `rows` rows: the keys and values expanded (a view; the layers
        copy them when they append the rows' own tokens, and the copy's gradient is summed over the rows)."""
        cache = DynamicCache(config=self.config)
        for layer, (k, v) in zip(cache.layers[self.start :], self.kv):
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)
        return cache

    def backward(self) -> None:
        """The prompt pass's backward on the gradients its rows left in the leaves (once, after the last of
        them); the graph is released either way."""
        pairs = [(o, leaf.grad) for o, leaf in self.graph if leaf.grad is not None]
        self.graph = []
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])


def group_prompt(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trunk: torch.Tensor | None = None,
    trunk_at: int | None = None,
) -> SharedPrompt | None:
    """The pass over the prefix that all these rows (a group's, right-padded, (n, T)) begin with, run once
    on the first row: at most every row's length - 1 tokens, so that each row keeps a token after it. None
    when there is nothing worth sharing (one row, or a prefix shorter than `MIN_SHARED_PREFIX`).
    `trunk` (n, T, H) and `trunk_at` as in `final_hidden`: the pass then runs from that layer."""
    P = min(shared_prefix_len(input_ids, attention_mask), int(attention_mask.sum(1).min()) - 1)
    if P < MIN_SHARED_PREFIX:
        return None
    decoder, _ = decoder_and_head(model)
    cache = DynamicCache(config=decoder.config)
    hidden = _run_prefix(decoder, input_ids[:1, :P], attention_mask[:1, :P], trunk, trunk_at, cache)
    start = trunk_at if trunk is not None else 0
    kv = [(layer.keys, layer.values) for layer in cache.layers[start : decoder.config.num_hidden_layers]]
    return SharedPrompt(hidden, kv, start, decoder.config)  # hidden (1, P, H)


def _logprob_chunk(head, hidden, targets, temperature: float, with_entropy: bool):
    """log p(target) (and the entropy) for one chunk of time steps: hidden (B, c, H), targets (B, c)."""
    logits = head(hidden).float()  # (B, c, V): the only vocabulary-sized tensors live here
    if temperature > 0 and temperature != 1.0:  # <= 0 is greedy, which records log softmax(logits)
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    del logits
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, c)
    if not with_entropy:
        return logp
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, c)
    return logp, entropy


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chunk: int = 256,
    temperature: float = 1.0,
    with_entropy: bool = False,
    positions: torch.Tensor | None = None,
    trunk: torch.Tensor | None = None,
    trunk_at: int | None = None,
    prompt: SharedPrompt | None = None,
):
    """log p(x_t | x_<t) for t = 1..T-1, without holding the full (B, T, V) fp32 logits.

    input_ids, attention_mask: (B, T), left padding or padding holes allowed (position ids skip them).
    Returns (B, T-1) float32, or `(logp, entropy)` with `with_entropy=True`; 0.0 where the target token or
    the token before it is padding. The decoder runs once; then the output head, the fp32 cast and the
    log-softmax run over `chunk` time steps at a time. When gradients are on, each chunk runs under
    non-reentrant activation checkpointing, so the backward pass also rebuilds one chunk of logits at a
    time instead of keeping all of them alive. Peak vocabulary-sized memory: about 3 x B x chunk x V x 4 bytes.

    `positions` (B, T-1) bool, optional: the time steps whose log-probs are needed (training needs the
    action tokens only). The output head then runs on those steps alone (0.0 elsewhere): for SmolLM2-135M
    the head is a fifth of the forward's FLOPs per token, and action tokens are a fifth of a trajectory.

    `temperature` divides the logits, to match log-probs of a sampler that used that temperature (pass
    `cfg.temperature` for the ratio, the KL and the entropy); <= 0 means greedy and leaves them undivided,
    as `rollout.sample_tokens` records them.
    `trunk` (B, T, H) and `trunk_at`: the rollout's inputs to layer `trunk_at`; the decoder then runs from
    that layer on (`final_hidden`). `prompt` (`group_prompt`): the rows' shared prompt, already run once.
    Assumes the logits are `head(h)` with no extra scaling (true for Llama, Qwen2, SmolLM2).
    """
    _, head = decoder_and_head(model)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    hidden = final_hidden(
        model, input_ids, attention_mask, share_prefix=True, trunk=trunk, trunk_at=trunk_at, prompt=prompt
    )  # (B, T, H)
    hidden = hidden[:, :-1]  # (B, T-1, H): position t-1 predicts token t
    targets = input_ids[:, 1:]  # (B, T-1)
    valid = valid_targets(attention_mask)  # (B, T-1)
    use_ckpt = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in head.parameters())
    )
    if positions is not None:  # only the wanted steps, flattened: (N, H), (N,)
        keep = positions.bool() & valid
        hidden, targets = hidden[keep], targets[keep]
        step = chunk * input_ids.shape[0]  # as many rows per chunk as B x chunk time steps
    else:
        step = chunk
    logps, ents = [], []
    for s in range(0, targets.shape[-1], step):
        if positions is not None:
            h, tg = hidden[s : s + step], targets[s : s + step]  # (n, H), (n,)
        else:
            h, tg = hidden[:, s : s + step], targets[:, s : s + step]  # (B, c, H), (B, c)
        args = (head, h, tg, temperature, with_entropy)
        res = checkpoint(_logprob_chunk, *args, use_reentrant=False) if use_ckpt else _logprob_chunk(*args)
        if with_entropy:
            logps.append(res[0])
            ents.append(res[1])
        else:
            logps.append(res)
    if positions is not None:
        logp = _scatter(keep, logps, hidden)
        if not with_entropy:
            return logp
        return logp, _scatter(keep, ents, hidden)
    logp = torch.where(valid, torch.cat(logps, dim=1), 0.0)  # (B, T-1)
    if not with_entropy:
        return logp
    return logp, torch.where(valid, torch.cat(ents, dim=1), 0.0)


def _scatter(keep: torch.Tensor, parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Put the (N,) values computed at `keep`'s True entries back into a (B, T-1) float32 tensor of zeros."""
    out = torch.zeros(keep.shape, dtype=torch.float32, device=like.device)  # (B, T-1)
    if parts:
        out = out.masked_scatter(keep, torch.cat(parts))
    return out


def trim_padding(ids: torch.Tensor, am: torch.Tensor):
    """Drop the columns that are padding in every row (the batch is right-padded)."""
    L = int(am.sum(dim=1).max())
    return ids[:, :L], am[:, :L]


def micro_batches(group: torch.Tensor, rows: torch.Tensor, size: int, by_group: bool) -> list[torch.Tensor]:
    """`rows` (ordered by `group` (B,) when `by_group`) in micro-batches of at most `size`; `by_group`: a
    micro-batch never holds two groups (a group of 4 with size 3 gives 3 + 1)."""
    if not by_group:
        return list(rows.split(size))
    counts = torch.unique_consecutive(group[rows], return_counts=True)[1]
    return [m for run in rows.split(counts.tolist()) for m in run.split(size)]


class GroupPrompts:
    """Each group's prompt pass (`logprobs.group_prompt` over the group's rows among `rows`), made when the
    group's first micro-batch asks for it and finished (its backward run on the gradients its rows left)
    when the next group's comes or at `finish`: micro-batches come group by group (`micro_batches`)."""

    def __init__(self, model, batch: dict, rows: torch.Tensor, trunk_at: int | None):
        self.model, self.batch, self.rows, self.trunk_at = model, batch, rows, trunk_at
        self.group: int | None = None
        self.prompt: SharedPrompt | None = None

    def get(self, micro_rows: torch.Tensor) -> SharedPrompt | None:
        group = self.batch["group"]
        g = int(group[micro_rows[0]])
        if g != self.group:
            self.finish()
            rows = self.rows[group[self.rows] == g]
            ids, am = trim_padding(self.batch["input_ids"][rows], self.batch["attention_mask"][rows])
            trunk = self.batch.get("trunk_hidden")
            trunk = None if trunk is None else trunk[rows[:1], : ids.shape[1]]  # (1, t, H): the first row's
            self.group, self.prompt = g, group_prompt(self.model, ids, am, trunk, self.trunk_at)
        return self.prompt

    def finish(self, backward: bool = True) -> None:
        if self.prompt is not None and backward:
            self.prompt.backward()
        self.prompt = None
