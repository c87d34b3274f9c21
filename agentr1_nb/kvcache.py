"""The shared-cache batch of the rollout: rows of different lengths decoded together on one KV cache.

`KVBatch` holds the rows that decode together. With `use_cache`, one transformers `DynamicCache` holds every
row: key/value tensors are (n, heads, L, d) and `mask` (n, L) marks which cache columns are real tokens of
that row (0 = a padding hole); its layers are `GrowingLayer`s, which write a token into spare columns instead
of copying the whole cache at every decoding step. Rows have different lengths, so holes appear (left padding
of a ragged chunk, padding added when batches merge); the 2D attention mask hides them and explicit position ids
(`cumsum(mask) - 1`) give every real token its true position. `compact()` squeezes the holes out again,
since attention kernels pay for masked columns too.

A row is any object with `traj.token_ids` (its whole history), `n_fed` (how many of those tokens are already
in the cache) and `pending` (`traj.token_ids[n_fed:]`): the rollout's `Row`; with a `HiddenProbe`, also a
list `hidden` that receives the probed layer's input for each token fed.
"""

from __future__ import annotations

import inspect
import time

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with `SPARE` free columns, so that appending a
    token writes it in place; transformers' `DynamicLayer` concatenates, which copies the whole layer's cache at
    every decoding step. SmolLM2-135M, 16 rows x 500 cached tokens, one thread: 600-630 -> 520-580 ms per step,
    the same tokens (with `prefill_shared`, the cpu_demo rollout of 16 episodes: 72 -> 55 s, one thread).

    `KVBatch` also replaces `keys`/`values` wholesale (compact, select, merge) through `replace` and
    `batch_select_indices`, which drop the buffers; the next `update` copies the new tensors into new ones, once.
    """

    SPARE = 64
    """Free columns after each (re)allocation: one action of the cpu_demo preset (48 tokens) without another."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.key_buf = self.value_buf = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        L, P = self.get_seq_length(), key_states.shape[-2]
        if not (self._views_of_buffers() and L + P <= self.key_buf.shape[-2]):
            # Drop the old buffers first: if keys/values were replaced wholesale, nothing else needs them, and
            # holding them while the new ones are allocated would keep a third copy of the cache alive.
            self.key_buf = self.value_buf = None
            n, heads, _, d = key_states.shape
            self.key_buf = key_states.new_empty(n, heads, L + P + self.SPARE, d)  # (n, h, capacity, d)
            self.value_buf = value_states.new_empty(n, value_states.shape[1], L + P + self.SPARE, d)
            if L:
                self.key_buf[..., :L, :] = self.keys
                self.value_buf[..., :L, :] = self.values
        self.key_buf[..., L : L + P, :] = key_states
        self.value_buf[..., L : L + P, :] = value_states
        self.keys, self.values = self.key_buf[..., : L + P, :], self.value_buf[..., : L + P, :]
        return self.keys, self.values

    def adopt(self, key_buf: torch.Tensor, value_buf: torch.Tensor, length: int) -> None:
        """Take (n, heads, capacity, d) buffers as this layer's, their first `length` columns as its cache."""
        self.lazy_initialization(key_buf[..., :0, :], value_buf[..., :0, :])
        self.key_buf, self.value_buf = key_buf, value_buf
        self.keys, self.values = key_buf[..., :length, :], value_buf[..., :length, :]

    def replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Set keys/values wholesale and let go of the buffers at once: they would otherwise stay alive until
        the next `update`, so that after `KVBatch.compact`, `select` or `merge` every layer held two copies of
        its cache (the eval's 25 rows x 1,024 tokens: 1.2 GB each in fp32)."""
        self.keys, self.values = keys, values
        self.key_buf = self.value_buf = None

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)  # new tensors: the buffers hold only the rows dropped
        self.key_buf = self.value_buf = None

    def _views_of_buffers(self) -> bool:
        """Whether keys/values are still the leading columns of this layer's buffers (nobody replaced them)."""
        if self.key_buf is None or self.keys.numel() == 0:
            return False
        return all(
            x.data_ptr() == buf.data_ptr() and x.shape[:2] == buf.shape[:2] and x.stride() == buf.stride()
            for x, buf in ((self.keys, self.key_buf), (self.values, self.value_buf))
        )


def new_cache(model) -> DynamicCache:
    """An empty cache for `model` made of `GrowingLayer`s; models with sliding-window layers are refused."""
    cache = DynamicCache(config=model.config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        raise NotImplementedError(
            "rollout's shared KV cache supports full-attention models only (this one has sliding-window "
            "layers); pass use_cache=False"
        )
    cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


def placeholder_cache(
    model, pools: list[tuple[torch.Tensor, torch.Tensor]], rows: int, length: int
) -> DynamicCache:
    """A cache of `rows` rows and `length` columns whose layers write on into `pools` (one (keys, values)
    pair of (N >= rows, heads, capacity, d) tensors per layer): the shape of a real cache without computing
    one, for timing a decoding forward (`bench_rollout.replay_decoding`); the values are whatever `pools` hold."""
    cache = new_cache(model)
    for layer, (k, v) in zip(cache.layers, pools):
        layer.adopt(k[:rows], v[:rows], length)
    return cache


class HiddenProbe:
    """Keeps every fed token's input to one decoder layer: a forward pre-hook on that layer holds the input
    of the last call, and `KVBatch.forward` deals its columns out to the rows it fed (`row.hidden`, a list of
    (t, H) pieces in token order). A context manager: the hook is removed on exit."""

    def __init__(self, layer: torch.nn.Module):
        self.layer, self.last, self.handle = layer, None, None

    def __enter__(self) -> HiddenProbe:
        self.handle = self.layer.register_forward_pre_hook(self._keep, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()
        self.last = None

    def _keep(self, module, args, kwargs) -> None:
        self.last = (args[0] if args else kwargs["hidden_states"]).detach()  # (n, P, H)

    def deal(self, rows: list, fed: list[int]) -> None:
        """Row i was fed the last `fed[i]` columns of the call (left padding before them)."""
        h, self.last = self.last, None
        if h is None:
            raise RuntimeError("HiddenProbe: the probed layer did not run in this forward")
        for i, (r, n) in enumerate(zip(rows, fed)):
            r.hidden.append(h[i, h.shape[1] - n :].clone())  # (n, H)


class KVBatch:
    """Rows decoded together; `forward()` feeds each row's pending tokens and returns next-token logits (n, V).

    Without `use_cache`, every forward recomputes each row's whole left-padded history (the reference for the
    equivalence tests).

    On the CPU the cache keeps one leading hole column (`anchor`). When the mask has no zero at all,
    transformers drops it and torch's CPU SDPA takes its grouped-query path, 2.5-4x slower per decoding step
    than with an explicit mask (SmolLM2-135M bf16, 16 rows x 700 cached tokens: 326 ms against 100 ms).
    Without the anchor that would happen whenever the rows left have equal lengths, e.g. a single row.

    `timer` (a dict with `forward_s` and `forward_calls`) and `probe` (a `HiddenProbe` or None) are shared by
    every batch made from this one. Each forward adds its seconds to `forward_s` (the model call alone) and
    the probe's dealing to `probe_s`; when `timer` has a list `calls`, it also appends (rows, columns fed,
    tokens fed (padding not counted), longest row's tokens after the call, seconds): the schedule that
    `bench_rollout.replay_decoding` replays.
    """

    def __init__(
        self, model, rows: list, use_cache: bool, pad_id: int, timer: dict, cache=None, mask=None, probe=None
    ):
        self.model, self.rows, self.use_cache, self.pad_id, self.timer = model, rows, use_cache, pad_id, timer
        self.probe = probe
        self.device = next(model.parameters()).device
        self.anchor = int(self.device.type == "cpu")
        self.cache, self.mask = cache, mask
        if use_cache and cache is None:
            self.cache = new_cache(model)
            self.mask = torch.zeros(len(rows), 0, dtype=torch.long, device=self.device)

    def __len__(self) -> int:
        return len(self.rows)

    def forward(self) -> torch.Tensor:
        if self.use_cache:
            pending = [r.pending for r in self.rows]
            width = max(len(p) for p in pending) + (self.anchor if self.mask.shape[1] == 0 else 0)
            ids, new_mask = left_pad(pending, self.pad_id, self.device, width)  # (n, P)
            self.mask = torch.cat([self.mask, new_mask], dim=1)  # (n, L + P)
            positions = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
            kw = {cache_kwarg(self.model): self.cache, "use_cache": True}
        else:
            ids, mask = left_pad([r.traj.token_ids for r in self.rows], self.pad_id, self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            kw = {"use_cache": False}
        t0 = time.perf_counter()
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask if self.use_cache else mask,
            position_ids=positions,
            logits_to_keep=1,
            **kw,
        )
        logits = out.logits[:, -1]  # (n, V)
        if logits.is_cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        self.timer["forward_s"] += t1 - t0
        self.timer["forward_calls"] += 1
        if self.probe is not None:
            if not self.use_cache:  # the whole history was fed again: keep only this call's
                for r in self.rows:
                    r.hidden.clear()
            fed = [len(p) for p in pending] if self.use_cache else [len(r.traj.token_ids) for r in self.rows]
            self.probe.deal(self.rows, fed)
            self.timer["probe_s"] = self.timer.get("probe_s", 0.0) + time.perf_counter() - t1
        for r in self.rows:
            r.n_fed = len(r.traj.token_ids)
        if "calls" in self.timer:  # the schedule, for `bench_rollout`
            longest = max(r.n_fed for r in self.rows)
            real = sum(map(len, pending)) if self.use_cache else int(mask.sum())
            self.timer["calls"].append((len(self.rows), int(ids.shape[1]), real, longest, t1 - t0))
        return logits

    def prefill_shared(self) -> torch.Tensor | None:
        """Feed the rows' first tokens (their prompts) with each distinct prompt computed once, and copy its
        cache to every row that begins with it (a GRPO group's rows share one prompt: a quarter of the prompt
        prefill with groups of 4). Returns the next-token logits of every row (n, V), or None, having done
        nothing, when no two rows share a prompt, the batch has no cache or is not fresh."""
        if not self.use_cache or self.mask.shape[1] or len(self) < 2:
            return None
        lead_of: dict[tuple[int, ...], int] = {}  # prompt -> its row in the batch of leads
        leads, index = [], []
        for r in self.rows:
            prompt = tuple(r.pending)
            if prompt not in lead_of:
                lead_of[prompt] = len(leads)
                leads.append(r)
            index.append(lead_of[prompt])
        if len(leads) == len(self):
            return None
        lead = KVBatch(self.model, leads, True, self.pad_id, self.timer, probe=self.probe)
        logits = lead.forward()  # (leads, V)
        index = torch.tensor(index, device=self.device)  # (n,): each row's lead
        lead.cache.batch_select_indices(index)
        self.cache, self.mask = lead.cache, lead.mask[index]
        for r, i in zip(self.rows, index.tolist()):
            r.n_fed = len(r.traj.token_ids)
            if self.probe is not None and r is not leads[i]:
                r.hidden = list(leads[i].hidden)  # the same prompt, the same hidden states
        return logits[index]

    def compact(self) -> None:
        """Squeeze the holes out of the cache: each row's real columns, in order and right-aligned, in a
        cache as wide as the longest row. Attention kernels work on every column, masked or not, so holes
        left by rows of different lengths would otherwise cost decoding time at every later step."""
        if not self.use_cache or not len(self):
            return
        width = int(self.mask.sum(1).max()) + self.anchor
        if width >= self.mask.shape[1]:
            return
        # a stable sort puts each row's holes first and its real columns after them, both in order
        idx = torch.argsort(self.mask, dim=1, stable=True)[:, -width:]  # (n, W)
        rows = torch.arange(len(self), device=self.device)[:, None]
        for layer in self.cache.layers:
            # (n, h, L, d) -> (n, L, h, d)[rows, idx] -> (n, W, h, d) -> (n, h, W, d)
            layer.replace(
                layer.keys.transpose(1, 2)[rows, idx].transpose(1, 2).contiguous(),
                layer.values.transpose(1, 2)[rows, idx].transpose(1, 2).contiguous(),
            )
        self.mask = torch.gather(self.mask, 1, idx)

    def select(self, idx: list[int]) -> KVBatch:
        """A batch of the rows `idx` (this batch must not be used afterwards: the cache is shared)."""
        rows = [self.rows[i] for i in idx]
        if not self.use_cache:
            return KVBatch(self.model, rows, False, self.pad_id, self.timer, probe=self.probe)
        if len(idx) == len(self.rows) and idx == list(range(len(self.rows))):
            return self
        index = torch.tensor(idx, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(index)
        mask = self.mask[index]
        # columns that are holes in every remaining row cost attention time for nothing: drop them at the ends
        real = mask.any(0).nonzero()
        lo, hi = (max(int(real[0]) - self.anchor, 0), int(real[-1]) + 1) if len(real) else (0, 0)
        if (lo, hi) != (0, mask.shape[1]):
            for layer in self.cache.layers:
                if getattr(layer, "keys", None) is not None and layer.keys.numel():
                    layer.replace(layer.keys[..., lo:hi, :], layer.values[..., lo:hi, :])
            mask = mask[:, lo:hi]
        return KVBatch(self.model, rows, True, self.pad_id, self.timer, self.cache, mask, self.probe)

    def split(self, idx: list[int]) -> KVBatch:
        """A copy of rows `idx` of the batch (its own cache), leaving this batch intact."""
        rows = [self.rows[i] for i in idx]
        if not self.use_cache:
            return KVBatch(self.model, rows, False, self.pad_id, self.timer, probe=self.probe)
        index = torch.tensor(idx, dtype=torch.long, device=self.device)
        cache = new_cache(self.model)
        for li, layer in enumerate(self.cache.layers):
            cache.update(layer.keys[index], layer.values[index], li)
        return KVBatch(self.model, rows, True, self.pad_id, self.timer, cache, self.mask[index], self.probe)

    @staticmethod
    def merge(parts: list[KVBatch]) -> KVBatch:
        """One batch from several (the rows that stopped at different steps of a turn)."""
        parts = [p for p in parts if len(p)]
        first = parts[0]
        if len(parts) == 1:
            return first
        rows = [r for p in parts for r in p.rows]
        if not first.use_cache:
            return KVBatch(first.model, rows, False, first.pad_id, first.timer, probe=first.probe)
        # right-pad each part's cache with hole columns to a common length, then stack the rows
        length = max(p.mask.shape[1] for p in parts)
        for li, layer in enumerate(first.cache.layers):
            keys = [pad_cols(p.cache.layers[li].keys, length) for p in parts]
            values = [pad_cols(p.cache.layers[li].values, length) for p in parts]
            layer.replace(torch.cat(keys, 0), torch.cat(values, 0))
        mask = torch.cat([F.pad(p.mask, (0, length - p.mask.shape[1])) for p in parts], 0)
        return KVBatch(first.model, rows, True, first.pad_id, first.timer, first.cache, mask, first.probe)


def left_pad(seqs: list[list[int]], pad_id: int, device, width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, P) ids and mask, each sequence right-aligned so that the last column is real in every row."""
    width = max(width, max(len(s) for s in seqs))
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs], dtype=torch.long, device=device)
    mask = torch.tensor(
        [[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long, device=device
    )
    return ids, mask


def pad_cols(x: torch.Tensor, length: int) -> torch.Tensor:
    """Pad the sequence dimension (-2) of a (n, heads, L, d) cache tensor with zeros up to `length`."""
    return F.pad(x, (0, 0, 0, length - x.shape[-2])) if x.shape[-2] < length else x


def cache_kwarg(model) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` (5.24); use whichever this version takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
