"""Device placement, checked without a GPU: a fake GPU that fails where a real one would.

The bug this guards against (issue 13): training built its batches, the SFT batches and PPO's value head on
the CPU and fed them to a model on CUDA without `.to(device)`. Every test ran on the CPU, where the two
devices are the same, so none could see it.

`FakeGPU` is a `TorchFunctionMode` that runs everything on the CPU but keeps, for every tensor, where it
would live on a machine with a GPU:

- on the device: the model's parameters and buffers (as `load_policy` puts them on the GPU), results of
  `.to(device)` / `.cuda()`, of factories called with `device=` the model's device, and of any operation
  with a device tensor among its inputs (gradients and `.data` follow their tensor);
- on the host: tensors made without a device (`torch.tensor(list)`, `torch.zeros(...)`, `from_numpy`),
  results of `.cpu()` / `.to("cpu")`, and of operations on host tensors only.

`t.device` of a device tensor answers one particular `torch.device` object, `FakeGPU.device` (its type is
"cpu", so torch's own code keeps taking its CPU paths); `.to(x)` and `device=x` count as a move to the GPU
when `x` is that object, exactly what code that asks the model for its device (`next(model.parameters())
.device`) passes. An operation that mixes a device tensor with a host tensor of one or more dimensions,
indexes a host tensor with device indices, or turns a device tensor into numpy raises `DeviceMismatch`,
as CUDA would (`Expected all tensors to be on the same device`). Allowed, as on CUDA: 0-dim host tensors
(scalars) in device operations, host indices into a device tensor, copies across devices (`copy_`,
`x[i] = y`), `.item()` / `.tolist()`.

`FakeGPU(skip_moves_in=[fn])` reintroduces the bug: a `Tensor.to(device)` called directly from `fn`
returns its input unmoved, so the negative tests below prove that the detector sees it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, make_tiny_model, tiny_lora_policy
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from agentr1_nb import algos, sft
from agentr1_nb import train as train_mod
from agentr1_nb.config import get_config
from agentr1_nb.env import build_task

DEV, HOST = "device", "host"
_PACKAGE_DIR = str(Path(algos.__file__).resolve().parent)
_TORCH_INTERNALS = ("torch/overrides.py", "torch/utils/_device.py")


_ACROSS_DEVICES = (torch.Tensor.__setitem__, torch.Tensor.copy_, torch._has_compatible_shallow_copy_type)
"""Functions that may take tensors on two devices: copies, and a type check of `Module._apply`."""


class DeviceMismatch(RuntimeError):
    """What CUDA would raise: a device tensor and a host tensor met in one operation."""


def _tensors(obj, depth: int = 0):
    """The tensors in a call's (args, kwargs), looking into lists, tuples and dicts (torch.cat, _foreach_*)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x, depth + 1)


def _caller_code():
    """The code object of the Python frame that called the torch function (skipping torch's dispatch)."""
    f = sys._getframe(2)
    while f is not None and (
        f.f_code.co_filename.endswith(_TORCH_INTERNALS) or f.f_code.co_filename == __file__
    ):
        f = f.f_back
    return f.f_code if f is not None else None


def _where() -> str:
    """The innermost frame inside the package (where the offending call was written)."""
    f = sys._getframe(2)
    while f is not None:
        if f.f_code.co_filename.startswith(_PACKAGE_DIR):
            return f"{Path(f.f_code.co_filename).name}:{f.f_lineno} in {f.f_code.co_name}"
        f = f.f_back
    return "outside agentr1_nb"


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


class FakeGPU(TorchFunctionMode):
    """Track host/device placement of every tensor as if the model lived on a GPU (see the module docstring)."""

    def __init__(self, *modules: torch.nn.Module, skip_moves_in=()):
        super().__init__()
        self.device = torch.device("cpu")  # the one object that stands for "the GPU"
        self.kind: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.violations: list[str] = []
        self.moves = 0  # host -> device moves seen (the tests check that the detector saw traffic)
        self.skipped = 0
        self._skip = [(fn.__code__.co_filename, fn.__qualname__) for fn in skip_moves_in]
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                self.kind[t] = DEV

    # -- helpers
    def _k(self, t):
        """DEV or HOST; a tensor the mode never saw made (a new module's parameters) is on the host."""
        return self.kind.get(t, HOST)

    def _is_dev(self, d) -> bool:
        if d is self.device:
            return True
        if isinstance(d, int) and not isinstance(d, bool):
            return True  # a CUDA ordinal
        return isinstance(d, (str, torch.device)) and str(d).startswith("cuda")

    def _real(self, d):
        return torch.device("cpu") if isinstance(d, (str, int, torch.device)) and self._is_dev(d) else d

    def _fail(self, msg: str):
        msg = f"{msg} [at {_where()}]"
        self.violations.append(msg)
        raise DeviceMismatch(msg)

    def _skipping(self) -> bool:
        code = _caller_code()
        if code is None or not self._skip:
            return False
        qual = getattr(code, "co_qualname", code.co_name)
        return any(
            code.co_filename == file and (qual == q or qual.startswith(q + ".<locals>.<"))
            for file, q in self._skip
        )

    def _tag(self, out, kind, inputs=()):
        if kind is None:
            return
        ids = {id(t) for t in inputs}
        for t in _tensors(out):
            if id(t) not in ids or t not in self.kind:
                self.kind[t] = kind

    def _fresh(self, out, src):
        """A new tensor object for a move, so that the source keeps its own placement."""
        if out is src:
            with torch._C.DisableTorchFunction():
                out = src.view_as(src)
        return out

    # -- the mode
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        desc = getattr(func, "__self__", None)
        if type(desc).__name__ == "getset_descriptor":  # a tensor property: t.device, t.grad, t.data = ...
            attr = desc.__name__
            if func.__name__ == "__get__":
                if attr == "device" and self._k(args[0]) == DEV:
                    return self.device
                out = func(*args, **kwargs)
                if attr in ("grad", "data") and isinstance(out, torch.Tensor):
                    self.kind[out] = self._k(args[0])  # autograd made the gradient beside its tensor
                return out
            if func.__name__ == "__set__" and attr == "data" and isinstance(args[1], torch.Tensor):
                out = func(*args, **kwargs)
                self.kind[args[0]] = self._k(args[1])  # Module.to(device) moves parameters this way
                return out
            return func(*args, **kwargs)

        if func is torch.device:
            if args and args[0] is self.device:
                return self.device
            return func(*[self._real(a) for a in args], **kwargs)

        if func is torch._C._nn._parse_to:  # Module.to(device) parses its device here: keep the object
            out = func(*args, **kwargs)
            if any(a is self.device for a in (*args, *kwargs.values())):
                out = (self.device, *out[1:])
            return out

        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            return self._move(func, args, kwargs)

        if func in (torch.Tensor.numpy, torch.Tensor.__array__) and self._k(args[0]) == DEV:
            self._fail(f"{_name(func)} of a device tensor (call .cpu() first)")

        tensors = list(_tensors((args, kwargs)))
        kinds = [self._k(t) for t in tensors]
        if func in _ACROSS_DEVICES:
            return func(*args, **kwargs)
        if func is torch.Tensor.__getitem__:
            self_kind = self._k(args[0])
            if self_kind != DEV and DEV in kinds[1:]:
                self._fail("indexing a host tensor with device indices")
            out = func(*args, **kwargs)
            self._tag(out, self_kind, tensors)
            return out

        if DEV in kinds:
            host = [t for t, k in zip(tensors, kinds) if k == HOST and t.dim() > 0]
            if host:
                shapes = ", ".join(str(tuple(t.shape)) for t in host)
                self._fail(f"{_name(func)} got device tensors and host tensors of shapes {shapes}")
        device = kwargs.get("device")
        if device is not None:
            kwargs["device"] = self._real(device)
            kind = DEV if self._is_dev(device) else HOST
        else:
            kind = DEV if DEV in kinds else HOST
        out = func(*args, **kwargs)
        self._tag(out, kind, tensors)
        return out

    def _move(self, func, args, kwargs):
        src, rest = args[0], list(args[1:])
        if func is torch.Tensor.cpu:
            target = HOST
        elif func is torch.Tensor.cuda:
            target, rest, kwargs = DEV, [], {k: v for k, v in kwargs.items() if k == "non_blocking"}
        else:
            target = self._k(src)  # .to(dtype) keeps the placement
            for i, a in enumerate(rest):
                if isinstance(a, torch.Tensor):
                    target = self._k(a)
                elif isinstance(a, (str, torch.device)) or (isinstance(a, int) and not isinstance(a, bool)):
                    target = DEV if self._is_dev(a) else HOST
                    rest[i] = self._real(a)
            if kwargs.get("device") is not None:
                target = DEV if self._is_dev(kwargs["device"]) else HOST
                kwargs["device"] = self._real(kwargs["device"])
        if target == DEV and self._k(src) != DEV:
            if self._skipping():
                self.skipped += 1
                return src  # the old code: the tensor stays on the host
            self.moves += 1
        out = src if func is torch.Tensor.cuda else func(src, *rest, **kwargs)
        if target != self._k(src):
            out = self._fresh(out, src)
        self.kind[out] = target
        return out


# ----------------------------------------------------------------------------- the detector itself


def test_fake_gpu_flags_what_cuda_would_refuse():
    model = make_tiny_model(32, hidden=16, layers=1)
    with FakeGPU(model) as gpu:
        device = next(model.parameters()).device
        assert device is gpu.device
        ids = torch.tensor([[1, 2, 3]])
        with pytest.raises(DeviceMismatch, match="embedding"):
            model(input_ids=ids)
        ids.to(device)  # moved, but the result is dropped: `ids` itself stays on the host
        with pytest.raises(DeviceMismatch):
            model(input_ids=ids)
        out = model(input_ids=ids.to(device)).logits.detach()  # (1, 3, V) on the device
        assert gpu.kind[out] == DEV
        with pytest.raises(DeviceMismatch, match="host tensors of shapes"):
            out + torch.ones(out.shape)
        with pytest.raises(DeviceMismatch, match="numpy"):
            out.numpy()
        with pytest.raises(DeviceMismatch, match="device indices"):
            torch.arange(4)[torch.tensor([0, 1], device=device)]
        # what CUDA allows: host scalars, host indices into device tensors, copies, python numbers
        y = out * torch.tensor(2.0) + 1
        _ = y[:, torch.tensor([0, 2])]
        buf = torch.zeros(2, 3, device=device)
        buf[0] = torch.ones(3)
        _ = float(y.sum()), y.cpu().numpy(), torch.zeros_like(y).device
        assert gpu.kind[torch.zeros_like(y)] == DEV and gpu.kind[y.cpu()] == HOST
        head = torch.nn.Linear(16, 1)  # a module built after the model: on the host until moved
        with pytest.raises(DeviceMismatch, match="linear"):
            head(torch.zeros(2, 16, device=device))
        head.to(device)
        assert gpu.kind[head(torch.zeros(2, 16, device=device))] == DEV
    assert gpu.moves >= 2 and len(gpu.violations) == 6


# ----------------------------------------------------------------------------- the training code

TINY = TINY_RUN + ["minibatch_size=2", "micro_batch_size=1", "save_every=10"]


def _policy(tokenizer):
    return tiny_lora_policy(tokenizer, hidden=32, layers=1)


@pytest.fixture(scope="module")
def task(tokenizer):
    return build_task(get_config("cpu_demo", TINY), tokenizer)


def _train(tmp_path, tokenizer, task, algo, skip_moves_in=()):
    cfg = get_config("cpu_demo", TINY + ["steps=1", f"algo={algo}", "kl_coef=0.01", "old_logprobs=recompute"])
    model = _policy(tokenizer)
    with FakeGPU(model, skip_moves_in=skip_moves_in) as gpu:
        hist = train_mod.train(cfg, tmp_path, model=model, tokenizer=tokenizer, task=task)
    return gpu, hist


@pytest.mark.parametrize("algo", ["grpo", "ppo", "reinforce++", "rloo"])
def test_train_keeps_every_tensor_on_the_models_device(tmp_path, tokenizer, task, algo):
    """Rollout, old/reference log-probs, PPO's value head, the update and the checkpoint: no mismatch."""
    gpu, hist = _train(tmp_path, tokenizer, task, algo)
    assert gpu.violations == [] and [m["step"] for m in hist] == [1]
    assert gpu.moves > 0, "the batch must be moved to the device"


def test_sft_warmup_keeps_every_tensor_on_the_models_device(tokenizer, task):
    cfg = get_config("cpu_demo", TINY)
    model = _policy(tokenizer)
    with FakeGPU(model) as gpu:
        losses = sft.sft_warmup(model, tokenizer, task, cfg, steps=1, batch_size=2)
    assert gpu.violations == [] and len(losses) == 1 and gpu.moves > 0


# ----------------------------------------------------------------------------- the old bug, reintroduced


def test_detector_fails_when_train_does_not_move_the_batch(tmp_path, tokenizer, task):
    # the batch is moved to the device where it is built
    with pytest.raises(DeviceMismatch, match="host tensors"):
        _train(tmp_path, tokenizer, task, "grpo", skip_moves_in=[train_mod.build_batch])


def test_detector_fails_when_the_value_head_stays_on_the_host(tmp_path, tokenizer, task, monkeypatch):
    class HostValueHead(algos.ValueHead):
        def to(self, *args, **kwargs):  # the old code: ValueHead(hidden) without .to(device)
            return self

    monkeypatch.setattr(algos, "ValueHead", HostValueHead)
    with pytest.raises(DeviceMismatch, match="linear"):
        _train(tmp_path, tokenizer, task, "ppo")


def test_detector_fails_when_sft_does_not_move_its_batches(tokenizer, task):
    cfg = get_config("cpu_demo", TINY)
    model = _policy(tokenizer)
    with pytest.raises(DeviceMismatch, match="embedding"):
        with FakeGPU(model, skip_moves_in=[sft.sft_warmup]):
            sft.sft_warmup(model, tokenizer, task, cfg, steps=1, batch_size=2)
