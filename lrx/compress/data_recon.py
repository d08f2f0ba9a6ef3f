"""Data reconstruction (docs/DESIGN.md, section 2): optimise each approximated layer so that it
reproduces the ORIGINAL layer's outputs on training data, one layer at a time, in network order.

Filter reconstruction fits the approximation to the original kernel and ignores the data; here
each replaced layer of ``approx`` is trained, with every other parameter frozen, to minimise

    mean ‖original_layer(x_orig) − approx_layer(x)‖²

on activations captured with forward hooks. The target is always the original network's output
of that layer; the input ``x`` is

* ``symmetric``: the original network's input to that layer (``x = x_orig``);
* ``asymmetric``: the approximated network's input to that layer, computed with the earlier
  layers already reconstructed, so that the layer learns to undo the error of the layers before
  it instead of letting it accumulate (the paper's choice, and the default).

The approximation can be ANY module with parameters that takes the original layer's input and
returns a tensor of the original layer's output shape: this module knows nothing about the
low-rank schemes.

Memory bound
------------
The input batches are kept (on the device they came on) for the whole call, and the activations
of ONE layer at a time are cached on the networks' device, freed before the next layer:

    bytes = input_bytes + max over layers l of  N · (in_l · e_in + out_l · e_out)

with N the number of samples over all batches (held-out ones included), ``in_l`` / ``out_l``
the per-sample element counts of layer l's input / output and ``e`` their element sizes. This is
computed from the shapes of a one-sample probe forward, before any activation is captured, and
the call is refused (:class:`CacheLimitError`) above ``max_cache_bytes``. On top of it, the
optimisation needs the autograd working memory of one chunk (at most as many samples as the
first input batch) of the layer being optimised, and the least-squares refit the last-pass
features of one chunk plus two (P, P) float64 matrices (P: the last pass's inputs per pixel).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterable
from contextlib import ExitStack

import torch
from torch import nn
from tqdm.auto import tqdm

from lrx.modes import eval_mode

log = logging.getLogger(__name__)

STAGE = "data reconstruction"
MODES = ("asymmetric", "symmetric")
OPTIMIZERS = ("adam", "sgd", "lbfgs")
SGD_MOMENTUM = 0.9
LSTSQ_RIDGE = 1e-6


class DataReconError(ValueError):
    """A bad argument of :func:`reconstruct`; the message names the bad value and valid ones."""


class CacheLimitError(DataReconError):
    """The activations to cache would exceed ``max_cache_bytes``; raised before any capture."""


class NonFiniteError(FloatingPointError):
    """A NaN/Inf activation, loss or parameter during data reconstruction; ``layer`` and
    ``stage`` say where."""

    def __init__(self, layer: str, what: str):
        self.layer, self.stage = layer, STAGE
        super().__init__(f"{STAGE} of layer {layer!r}: {what}")


class _Stop(BaseException):
    """Raised from a hook to stop a forward pass once the wanted activation is captured
    (a BaseException so that a model's own ``except Exception`` cannot swallow it)."""


def reconstruct(
    original: nn.Module,
    approx: nn.Module,
    layer_names: list[str],
    batches: Iterable,
    *,
    mode: str = "asymmetric",
    lstsq: bool = True,
    steps: int = 200,
    lr: float = 1e-3,
    optimizer: str = "adam",
    holdout_batches: int = 1,
    batch_size: int | None = None,
    max_cache_bytes: int = 1 << 30,
    seed: int = 0,
    revert_if_worse: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Optimise the layers ``layer_names`` of ``approx`` (in place) to reproduce ``original``'s.

    Args:
        original: the baseline network; never modified (its parameters, buffers and flags).
        approx: a copy of ``original`` in which the modules named in ``layer_names`` are replaced
            by approximations with parameters and the same input / output shapes. Only the
            parameters of those modules that require grad are changed, one layer at a time.
        layer_names: dotted names as in ``named_modules()``; processed in network order (the
            order of ``original.named_modules()``), whatever their order here.
        batches: an iterable of input tensors or ``(x, y, ...)`` tuples (only ``x`` is used),
            e.g. a few batches of the TRAINING split. It is read once and kept; each batch is
            moved to the networks' device when used. All batches must share the per-sample shape.
        mode: ``"asymmetric"`` (inputs from ``approx``) or ``"symmetric"`` (inputs from
            ``original``); targets come from ``original`` in both.
        lstsq: before the gradient steps, refit the LAST linear pass of each layer that exposes
            it (``final_features`` / ``set_final``, as lrx's low-rank layers do) by least squares
            on the training samples: the exact optimum of that pass given the earlier ones.
        steps: gradient steps per layer after that (an L-BFGS step is one iteration with line
            search); 0 = the least-squares refit alone.
        lr: learning rate (the initial step of the line search for L-BFGS).
        optimizer: ``"adam"``, ``"sgd"`` (momentum 0.9) or ``"lbfgs"`` (full-batch only).
        holdout_batches: the last this many batches are never optimised on; the relative errors
            are measured on them.
        batch_size: samples per optimisation step, drawn without replacement (reshuffled every
            pass) from the cached training activations; ``None`` = all of them (full batch,
            gradients accumulated chunk by chunk). Clamped to the number of training samples.
        max_cache_bytes: refuse, before capturing anything, if the bound in the module docstring
            exceeds this.
        seed: seeds the mini-batch draws (the run is otherwise deterministic on CPU).
        revert_if_worse: if a layer's held-out error ends higher than it started, put back its
            initial parameters (reported as ``reverted``).
        progress: show a tqdm bar over the steps of each layer.

    Both networks are put in eval mode (BatchNorm uses running statistics, dropout is off) for
    capturing and optimising; every module's training flag is restored afterwards, also on
    error. No ``requires_grad`` flag is changed, and the ``.grad`` of the optimised parameters is
    put back as it was. If an error stops the call, the layers already reconstructed keep their
    new parameters.

    Returns:
        One JSON-serialisable dict per layer, in processing order: ``name``, ``mode``,
        ``rel_error_before`` / ``rel_error_after`` (‖target − approx_layer(x)‖_F / ‖target‖_F
        over the held-out batches, before optimising and as the layer is left),
        ``rel_error_lstsq`` (after the least-squares refit; None without one), ``steps``,
        ``time_s`` (capture + optimisation), ``cached_bytes`` (this layer's activation cache),
        ``optimizer``, ``lr``, ``batch_size``, ``train_samples``, ``holdout_samples``,
        ``train_loss`` (MSE of the last step), ``reverted`` and, if reverted,
        ``rel_error_optimised`` (the held-out error the optimisation reached).

    Raises:
        DataReconError: a bad argument (also for shapes / devices that do not fit).
        CacheLimitError: the activation cache would exceed ``max_cache_bytes``.
        NonFiniteError: a NaN/Inf in the captured activations, a loss or a parameter.
    """
    _check_args(mode, lstsq, steps, lr, optimizer, holdout_batches, batch_size, max_cache_bytes)
    names = _check_layers(original, approx, layer_names)
    device = _device(original, approx)
    inputs, input_bytes = _materialise(batches, holdout_batches, max_cache_bytes)
    n_total = sum(x.shape[0] for x in inputs)
    n_train = n_total - sum(x.shape[0] for x in inputs[-holdout_batches:])
    fit = dict(lstsq=lstsq, steps=steps, lr=lr, optimizer=optimizer, batch_size=batch_size, seed=seed)
    fit.update(revert_if_worse=revert_if_worse, progress=progress)
    with eval_mode(original, approx):
        shapes = _probe(original, approx, names, inputs[0][:1].to(device), mode)
        cached = _check_cache(shapes, n_total, input_bytes, max_cache_bytes)
        return [
            _reconstruct_layer(original, approx, name, inputs, shapes[name], mode, device, n_train, cached[name], fit)
            for name in names
        ]


def _check_cache(shapes: dict, n_total: int, input_bytes: int, max_cache_bytes: int) -> dict[str, int]:
    """Bytes of activations each layer caches (its inputs and targets for ``n_total`` samples);
    CacheLimitError if the input batches and the biggest layer's cache exceed ``max_cache_bytes``."""
    per_layer = {
        n: n_total * (s["in_numel"] * s["in_esize"] + s["out_numel"] * s["out_esize"]) for n, s in shapes.items()
    }
    biggest = max(per_layer, key=per_layer.get)
    needed = input_bytes + per_layer[biggest]
    if needed > max_cache_bytes:
        raise CacheLimitError(
            f"{STAGE} needs {needed} bytes ({needed / 2**20:.1f} MiB) > max_cache_bytes={max_cache_bytes} "
            f"({max_cache_bytes / 2**20:.1f} MiB): {input_bytes} bytes of input batches + "
            f"{per_layer[biggest]} bytes of activations for layer {biggest!r} "
            f"({n_total} samples); use fewer or smaller batches or raise max_cache_bytes"
        )
    return per_layer


def _reconstruct_layer(original, approx, name, inputs, shape, mode, device, n_train, cached, fit) -> dict:
    """Capture one layer's inputs and targets, optimise it (:func:`_optimise` with ``fit``), log
    and return its record."""
    t0 = time.perf_counter()
    X, T = _capture(original, approx, name, inputs, shape, mode, device)
    res = _optimise(approx.get_submodule(name), name, X, T, n_train, inputs[0].shape[0], **fit)
    del X, T
    res = {
        "name": name,
        "mode": mode,
        **res,
        "time_s": time.perf_counter() - t0,
        "cached_bytes": int(cached),
        "train_samples": n_train,
        "holdout_samples": sum(x.shape[0] for x in inputs) - n_train,
    }
    log.info(
        "%s %s (%s): held-out rel. error %.4g -> %.4g in %d steps, %.1f s%s",
        STAGE,
        name,
        mode,
        res["rel_error_before"],
        res["rel_error_after"],
        fit["steps"],
        res["time_s"],
        " (reverted: the optimisation made it worse)" if res["reverted"] else "",
    )
    return res


# ---------------------------------------------------------------------------------------------
# argument checks


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_args(mode, lstsq, steps, lr, optimizer, holdout_batches, batch_size, max_cache_bytes) -> None:
    if mode not in MODES:
        raise DataReconError(f"{STAGE}: unknown mode={mode!r}; valid: {', '.join(map(repr, MODES))}")
    if optimizer not in OPTIMIZERS:
        raise DataReconError(f"{STAGE}: unknown optimizer={optimizer!r}; valid: {', '.join(map(repr, OPTIMIZERS))}")
    if not isinstance(lstsq, bool):
        raise DataReconError(f"{STAGE}: lstsq={lstsq!r} is invalid; valid: true or false")
    if not _is_int(steps) or steps < 0 or (steps == 0 and not lstsq):
        raise DataReconError(f"{STAGE}: steps={steps!r} is invalid; valid: an integer >= 1, or >= 0 with lstsq")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise DataReconError(f"{STAGE}: lr={lr!r} is invalid; valid: a finite number > 0")
    if not _is_int(holdout_batches) or holdout_batches < 1:
        raise DataReconError(
            f"{STAGE}: holdout_batches={holdout_batches!r} is invalid; valid: an integer >= 1 "
            "and smaller than the number of batches"
        )
    if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
        raise DataReconError(f"{STAGE}: batch_size={batch_size!r} is invalid; valid: None or an integer >= 1")
    if optimizer == "lbfgs" and batch_size is not None:
        raise DataReconError(
            f"{STAGE}: optimizer='lbfgs' needs full-batch steps, got batch_size={batch_size!r}; "
            "valid: batch_size=None with 'lbfgs', or optimizer 'adam' / 'sgd' for mini-batches"
        )
    if not _is_int(max_cache_bytes) or max_cache_bytes < 1:
        raise DataReconError(f"{STAGE}: max_cache_bytes={max_cache_bytes!r} is invalid; valid: an integer >= 1")


def _check_layers(original: nn.Module, approx: nn.Module, layer_names) -> list[str]:
    """The layer names in network order, after checking that they exist and do not overlap."""
    if original is approx:
        raise DataReconError(f"{STAGE}: `approx` is the same object as `original`; pass a modified copy")
    if isinstance(layer_names, (str, bytes)) or not isinstance(layer_names, Iterable):
        raise DataReconError(f"{STAGE}: layer_names={layer_names!r} is invalid; valid: a non-empty list of names")
    layer_names = list(layer_names)  # a tuple or an omegaconf ListConfig is fine too
    if not layer_names:
        raise DataReconError(f"{STAGE}: layer_names is empty; valid: a non-empty list of names")
    orig = dict(original.named_modules(remove_duplicate=False))
    appr = dict(approx.named_modules(remove_duplicate=False))
    seen = set()
    for name in layer_names:
        if not isinstance(name, str) or not name:
            raise DataReconError(f"{STAGE}: layer name {name!r} is invalid; valid: a submodule's dotted name")
        if name in seen:
            raise DataReconError(f"{STAGE}: layer {name!r} is listed twice in layer_names")
        seen.add(name)
        for mods, what in ((orig, "original"), (appr, "approx")):
            if name not in mods:
                valid = ", ".join(n for n in mods if n)
                raise DataReconError(f"{STAGE}: no layer {name!r} in the {what} network; valid: {valid}")
    for a in layer_names:
        for b in layer_names:
            if b.startswith(a + "."):
                raise DataReconError(f"{STAGE}: layers {a!r} and {b!r} overlap (one contains the other)")
    orig_storage = {p.untyped_storage().data_ptr() for p in original.parameters()}
    for name in layer_names:
        params = list(appr[name].parameters())
        if not any(p.requires_grad for p in params):
            raise DataReconError(
                f"{STAGE}: approx layer {name!r} ({type(appr[name]).__name__}) has no parameter that "
                "requires grad: nothing to optimise"
            )
        if any(p.untyped_storage().data_ptr() in orig_storage for p in params):
            raise DataReconError(
                f"{STAGE}: approx layer {name!r} shares parameters with the original network, which must "
                "stay unchanged; give it its own parameters (e.g. copy.deepcopy)"
            )
    order = {n: i for i, n in enumerate(orig)}
    return sorted(layer_names, key=order.__getitem__)


def _device(original: nn.Module, approx: nn.Module) -> torch.device:
    def dev(net):
        for t in net.parameters():
            return t.device
        for t in net.buffers():
            return t.device
        return torch.device("cpu")

    d_orig, d_appr = dev(original), dev(approx)
    if d_orig != d_appr:
        raise DataReconError(f"{STAGE}: original is on {d_orig} but approx is on {d_appr}; put both on one device")
    return d_orig


def _materialise(batches, holdout_batches: int, max_cache_bytes: int) -> tuple[list[torch.Tensor], int]:
    """Read ``batches`` once into a list of input tensors (labels dropped), refusing early if
    they alone exceed ``max_cache_bytes``."""
    if isinstance(batches, torch.Tensor):
        raise DataReconError(f"{STAGE}: batches must be an iterable of batches, not one tensor; wrap it: [x]")
    inputs, nbytes = [], 0
    for i, b in enumerate(batches):
        x = b[0] if isinstance(b, (tuple, list)) and b else b
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] < 1:
            raise DataReconError(
                f"{STAGE}: batch {i} is a {type(b).__name__}; valid: a non-empty tensor or an (x, y) tuple"
            )
        if inputs and x.shape[1:] != inputs[0].shape[1:]:
            raise DataReconError(
                f"{STAGE}: batch {i} has per-sample shape {tuple(x.shape[1:])}, batch 0 has "
                f"{tuple(inputs[0].shape[1:])}; all batches must share it"
            )
        nbytes += x.numel() * x.element_size()
        if nbytes > max_cache_bytes:
            raise CacheLimitError(
                f"{STAGE}: the first {i + 1} input batches alone take {nbytes} bytes > "
                f"max_cache_bytes={max_cache_bytes}; use fewer or smaller batches or raise max_cache_bytes"
            )
        inputs.append(x.detach())
    if holdout_batches >= len(inputs):
        raise DataReconError(
            f"{STAGE}: holdout_batches={holdout_batches} leaves no training batch out of {len(inputs)} "
            f"batches; valid: 1..{len(inputs) - 1}"
            if len(inputs) > 1
            else f"{STAGE}: got {len(inputs)} batches; need at least 2 (one to train on, one held out)"
        )
    return inputs, nbytes


# ---------------------------------------------------------------------------------------------
# capture


def _only_input(name: str, args) -> torch.Tensor:
    if len(args) != 1 or not isinstance(args[0], torch.Tensor):
        raise DataReconError(
            f"{STAGE}: layer {name!r} is called with {len(args)} positional arguments; "
            "only layers called with one tensor input are supported"
        )
    return args[0]


def _tensor_output(name: str, out) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise DataReconError(
            f"{STAGE}: layer {name!r} returns a {type(out).__name__}; only tensor outputs are supported"
        )
    return out


@torch.no_grad()
def _probe(original: nn.Module, approx: nn.Module, names: list[str], x1: torch.Tensor, mode: str) -> dict:
    """Per-sample input / output shapes of every layer, from one-sample forwards of both networks;
    checks that each layer is called and that the approximations fit the originals' shapes (in
    asymmetric ``mode`` the inputs are approx's, narrower where a pruning removed channels)."""
    found: dict[str, dict[str, dict]] = {"original": {}, "approx": {}}
    with ExitStack() as stack:
        for net, key in ((original, "original"), (approx, "approx")):
            for name in names:
                rec = found[key]

                def pre(_m, args, name=name, rec=rec):
                    if name not in rec:
                        x = _only_input(name, args)
                        rec[name] = {"in_shape": tuple(x.shape[1:]), "in_dtype": x.dtype}

                def post(_m, _args, out, name=name, rec=rec):
                    r = rec[name]
                    if "out_shape" not in r:
                        y = _tensor_output(name, out)
                        r.update(out_shape=tuple(y.shape[1:]), out_dtype=y.dtype)

                m = net.get_submodule(name)
                stack.enter_context(m.register_forward_pre_hook(pre))
                stack.enter_context(m.register_forward_hook(post))
        original(x1)
        approx(x1)
    shapes = {}
    for name in names:
        for key in ("original", "approx"):
            if "out_shape" not in found[key].get(name, {}):
                raise DataReconError(f"{STAGE}: layer {name!r} is not called by the {key} network's forward")
        o, a = found["original"][name], found["approx"][name]
        if mode == "asymmetric":  # inputs from approx: a layer whose input channels were pruned reads fewer
            o = {**o, "in_shape": a["in_shape"], "in_dtype": a["in_dtype"]}
        if (o["in_shape"], o["out_shape"]) != (a["in_shape"], a["out_shape"]):
            raise DataReconError(
                f"{STAGE}: layer {name!r} maps per-sample shape {o['in_shape']} -> {o['out_shape']} in the original "
                f"network but {a['in_shape']} -> {a['out_shape']} in approx; they must match"
            )
        shapes[name] = {
            **o,
            "in_numel": math.prod(o["in_shape"]),
            "out_numel": math.prod(o["out_shape"]),
            "in_esize": torch.empty(0, dtype=o["in_dtype"]).element_size(),
            "out_esize": torch.empty(0, dtype=o["out_dtype"]).element_size(),
        }
    return shapes


def _run_until(net: nn.Module, module: nn.Module, x: torch.Tensor, *, want: str) -> torch.Tensor:
    """Run ``net(x)`` only until ``module`` sees its input (``want="input"``) or produces its
    output (``want="output"``) on its first call, and return that tensor."""
    box = []

    def pre(_m, args):
        box.append(args[0])
        raise _Stop

    def post(_m, _args, out):
        box.append(out)
        raise _Stop

    handle = module.register_forward_pre_hook(pre) if want == "input" else module.register_forward_hook(post)
    try:
        net(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return box[0]


@torch.no_grad()
def _capture(original, approx, name, inputs, shape, mode, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs X and targets T of layer ``name`` for every sample of ``inputs``, on ``device``."""
    n = sum(x.shape[0] for x in inputs)
    X = torch.empty((n, *shape["in_shape"]), dtype=shape["in_dtype"], device=device)
    T = torch.empty((n, *shape["out_shape"]), dtype=shape["out_dtype"], device=device)
    orig_layer, appr_layer = original.get_submodule(name), approx.get_submodule(name)
    src_net, src_layer = (approx, appr_layer) if mode == "asymmetric" else (original, orig_layer)
    start = 0
    for b in inputs:
        x = b.to(device, non_blocking=True)
        end = start + x.shape[0]
        X[start:end] = _run_until(src_net, src_layer, x, want="input")
        # the original layer applied to the original network's input to it
        T[start:end] = _run_until(original, orig_layer, x, want="output")
        start = end
    for what, t in (("inputs", X), ("targets", T)):
        if not torch.isfinite(t).all():
            raise NonFiniteError(
                name,
                f"the captured {what} contain NaN/Inf (check the input batches and the "
                "weights of the network before this layer)",
            )
    return X, T


# ---------------------------------------------------------------------------------------------
# optimisation


def _chunks(n: int, chunk: int):
    return [slice(s, min(s + chunk, n)) for s in range(0, n, chunk)]


@torch.no_grad()
def relative_error(layer: nn.Module, X: torch.Tensor, T: torch.Tensor, chunk: int) -> float:
    """‖T − layer(X)‖_F / ‖T‖_F, in float64, ``chunk`` samples at a time."""
    diff = ref = 0.0
    for sl in _chunks(X.shape[0], chunk):
        t = T[sl].double()
        diff += (layer(X[sl]).double() - t).pow(2).sum().item()
        ref += t.pow(2).sum().item()
    if ref == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return math.sqrt(diff / ref)


def _loss_backward(layer: nn.Module, X: torch.Tensor, T: torch.Tensor, idx, chunk: int) -> torch.Tensor:
    """MSE of ``layer`` on the samples ``idx`` (a slice or an index tensor), gradients
    accumulated chunk by chunk; returns the (detached) loss."""
    xs, ts = X[idx], T[idx]  # a view for a slice, a gathered copy for an index tensor
    denom = ts.numel()
    total = torch.zeros((), device=X.device)
    for sl in _chunks(xs.shape[0], chunk):
        out = layer(xs[sl])
        loss = (out.float() - ts[sl].float()).pow(2).sum() / denom
        loss.backward()
        total += loss.detach()
    return total


class _Sampler:
    """Index sets for the optimisation steps: everything (full batch), or mini-batches drawn
    without replacement, reshuffled every pass."""

    def __init__(self, n: int, batch_size: int | None, seed: int, device: torch.device):
        self.n, self.device = n, device
        self.bs = None if batch_size is None or batch_size >= n else batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = None, n

    def next(self):
        if self.bs is None:
            return slice(0, self.n)
        if self.pos + self.bs > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.bs]
        self.pos += self.bs
        return idx.to(self.device)


def _make_optimizer(kind: str, params, lr: float) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM)
    return torch.optim.LBFGS(params, lr=lr, max_iter=1, history_size=10, line_search_fn="strong_wolfe")


@torch.no_grad()
def refit_final(layer: nn.Module, name: str, X: torch.Tensor, T: torch.Tensor, chunk: int) -> None:
    """Least squares for the layer's last linear pass F (and bias b) given its earlier passes:

        min_{F, b} sum over samples and output pixels of ‖T[:, l] − F Z[:, l] − b‖²,

    solved from the accumulated float64 normal equations (Z Zᵀ + ridge) Fᵀ = Z Tᵀ, with Z from
    ``layer.final_features`` (B, P, L) and a tiny ridge (1e-6 of the mean diagonal) for
    rank-deficient features."""
    has_bias = getattr(layer, "bias", None) is not None
    gram = cross = None
    for sl in _chunks(X.shape[0], chunk):
        z = layer.final_features(X[sl]).double()  # (B, P, L)
        if has_bias:
            z = torch.cat([z, torch.ones_like(z[:, :1])], 1)  # (B, P+1, L)
        t = T[sl].double().flatten(2)  # (B, N, L)
        g, c = torch.einsum("bpl,bql->pq", z, z), torch.einsum("bnl,bpl->np", t, z)
        gram, cross = (g, c) if gram is None else (gram + g, cross + c)
    ridge = LSTSQ_RIDGE * gram.diagonal().mean().clamp_min(torch.finfo(gram.dtype).tiny)
    sol = torch.linalg.solve(
        gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device), cross.T
    ).T  # (N, P[+1])
    if not torch.isfinite(sol).all():
        raise NonFiniteError(name, "the least-squares refit of the last pass is NaN/Inf")
    dtype = next(layer.parameters()).dtype
    layer.set_final(sol[:, :-1].to(dtype) if has_bias else sol.to(dtype), sol[:, -1].to(dtype) if has_bias else None)


def _optimise(
    layer: nn.Module,
    name: str,
    X: torch.Tensor,
    T: torch.Tensor,
    n_train: int,
    chunk: int,
    *,
    lstsq: bool,
    steps: int,
    lr: float,
    optimizer: str,
    batch_size: int | None,
    seed: int,
    revert_if_worse: bool,
    progress: bool,
) -> dict:
    Xtr, Ttr, Xho, Tho = X[:n_train], T[:n_train], X[n_train:], T[n_train:]
    params = [p for p in layer.parameters() if p.requires_grad]
    before = relative_error(layer, Xho, Tho, chunk)
    if not math.isfinite(before):
        raise NonFiniteError(
            name, f"the held-out error before optimisation is {before} (NaN/Inf in the approximation's parameters?)"
        )
    initial = copy.deepcopy(layer.state_dict()) if revert_if_worse else None
    after_lstsq = None
    if lstsq and hasattr(layer, "final_features"):
        refit_final(layer, name, Xtr, Ttr, chunk)
        after_lstsq = relative_error(layer, Xho, Tho, chunk)
    old_grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    opt = _make_optimizer(optimizer, params, lr)
    sampler = _Sampler(n_train, batch_size, seed, X.device)
    loss_value = math.nan
    try:
        with torch.enable_grad(), tqdm(total=steps, desc=f"{STAGE} {name}", disable=not progress, leave=False) as bar:
            for step in range(1, steps + 1):
                idx = sampler.next()

                def closure(idx=idx):
                    opt.zero_grad(set_to_none=True)
                    return _loss_backward(layer, Xtr, Ttr, idx, chunk)

                if optimizer == "lbfgs":
                    loss = opt.step(closure)
                else:
                    loss = closure()
                    opt.step()
                loss_value = float(loss)
                if not math.isfinite(loss_value):
                    raise NonFiniteError(
                        name,
                        f"the loss is {loss_value} at step {step}/{steps} (lr={lr} too "
                        "large, or NaN/Inf in the approximation's parameters?)",
                    )
                if step % 10 == 0 or step == steps:
                    bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)
                bar.update()
    finally:
        for p, g in zip(params, old_grads):
            p.grad = g
    after = relative_error(layer, Xho, Tho, chunk)
    if not all(torch.isfinite(p).all() for p in params) or not math.isfinite(after):
        raise NonFiniteError(name, f"the parameters became NaN/Inf after {steps} steps (lr={lr} too large?)")
    res = {
        "rel_error_before": before,
        "rel_error_lstsq": after_lstsq,
        "rel_error_after": after,
        "steps": steps,
        "optimizer": optimizer,
        "lr": float(lr),
        "batch_size": sampler.bs or n_train,
        "train_loss": loss_value if steps else None,
        "reverted": False,
    }
    if revert_if_worse and after > before:
        layer.load_state_dict(initial)
        res.update(rel_error_after=before, rel_error_optimised=after, reverted=True)
        log.warning(
            "%s of %s made its held-out error worse (%.4g -> %.4g): initial parameters restored",
            STAGE,
            name,
            before,
            after,
        )
    return res
