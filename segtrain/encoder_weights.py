"""Pretrained encoder weights: a local file loaded as data, and a hub download that fails readably.

Why this module: many users train where there is no internet (cluster compute nodes, hospital
networks). ``model.encoder_weights`` therefore takes either

- a **hub name** (``imagenet`` ...): smp/timm download it into the Hugging Face hub cache
  (``$HF_HOME/hub``) or torch.hub's (``$TORCH_HOME/hub/checkpoints``). :func:`hub_download`
  wraps that download: when the files are already cached it switches huggingface_hub offline
  (``HF_HUB_OFFLINE``), so nothing touches the network; when the download fails it raises one
  ``ValueError`` (:func:`offline_message`) with both fixes instead of a 40-line traceback; or
- a **path to a file** (:func:`is_weights_path`): a state dict as timm, torchvision or smp save
  it (``.pth``/``.pt``/``.bin``, or a dict holding one under ``state_dict``/``model``), or
  ``.safetensors``. :func:`load_encoder_weights` reads it as data only
  (:func:`segtrain.trust.safe_torch_load` / ``safetensors``: nothing in the file can run code) and
  maps its tensors onto ``net.encoder`` by name and shape (:func:`match_tensors`).

First conv with ``in_channels != 3``: a 3-channel (RGB) kernel from the file is adapted as smp
does when it loads its own pretrained weights for other channel counts (smp's
``patch_first_conv``): 1 channel = the sum of the RGB kernels; 2 or more = the RGB kernels
repeated cyclically and scaled by ``3 / in_channels``, so a pixel with equal channels gives the
same activation as the RGB image would.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

# segmentation-models-pytorch 0.6.0 (also 0.5.x): patch_first_conv -- how smp adapts a pretrained
# first conv to in_channels != 3 -- is not exported at the package's top level. This is the
# project's one import of that module path; _adapt_first_conv below is its only user.
# tests/test_encoder_weights.py fails if it moves.
from segmentation_models_pytorch.encoders._utils import patch_first_conv

from .trust import safe_torch_load

log = logging.getLogger(__name__)

#: File suffixes taken as a path to weights (even without a "/" in the value).
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")

#: Prefixes stripped from both sides' names before matching: a whole smp model (``encoder.``),
#: smp's timm universal encoder (``model.``), DataParallel/DDP (``module.``), a Lightning module
#: of this project (``net.``), mmseg-style backbones (``backbone.``).
PREFIXES = ("module.", "net.", "encoder.", "model.", "backbone.")

#: Where the fixes for an offline machine are documented.
DOCS = 'docs/training.md "Starting from pretrained weights"'


def is_weights_path(value: object) -> bool:
    """True when ``model.encoder_weights`` names a file rather than a hub weight set like ``imagenet``."""
    if not isinstance(value, (str, os.PathLike)):
        return False
    text = os.fspath(value)
    return "/" in text or os.sep in text or text.lower().endswith(WEIGHT_SUFFIXES) or os.path.isfile(text)


# --------------------------------------------------------------------------------------------
# a local file
# --------------------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read as data only.

    ``.safetensors``: ``safetensors.torch.load_file``. Anything else: ``torch.load(weights_only=True)``
    (a pickled object other than tensors and plain types is refused before it runs). A dict
    holding the state dict under ``state_dict`` or ``model`` (training checkpoints) is unwrapped.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file holds no tensors, or pickled code (``UntrustedCheckpointError``).
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    if not path.is_file():
        raise FileNotFoundError(
            f"model.encoder_weights={os.fspath(path)} does not exist (or is not a file). Pass the path of a "
            f"weights file (.pth/.pt/.bin/.safetensors), a hub name such as imagenet, or null; see {DOCS}."
        )
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        data: object = load_file(os.fspath(path), device="cpu")
    else:
        data = safe_torch_load(path, map_location="cpu")
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"state_dict": ...}}
        if isinstance(data, Mapping) and not any(isinstance(v, torch.Tensor) for v in data.values()):
            inner = next((data[k] for k in ("state_dict", "model") if isinstance(data.get(k), Mapping)), None)
            if inner is None:
                break
            data = inner
    tensors = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, Mapping) else {}
    if not tensors:
        raise ValueError(
            f"model.encoder_weights={os.fspath(path)} holds no tensors (found {type(data).__name__}"
            + (f" with keys {list(data)[:5]}" if isinstance(data, Mapping) else "")
            + "). Pass a state dict as timm, torchvision or smp save it (torch.save(model.state_dict(), path)) "
            "or a .safetensors file."
        )
    return tensors


def _strip(name: str) -> str:
    """``name`` without the :data:`PREFIXES` it starts with, dots as underscores.

    Dots become underscores because timm's ``features_only`` models (smp's ``tu-`` encoders)
    flatten nested modules: ``blocks.0.conv`` is ``blocks_0.conv`` there.
    """
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name.replace(".", "_")


def _unique_index(names: list[str]) -> dict[str, str]:
    """Normalised name -> name, leaving out normalised names that two names share (ambiguous)."""
    index: dict[str, str] = {}
    clashes = set()
    for name in names:
        key = _strip(name)
        if key in index:
            clashes.add(key)
        index[key] = name
    return {k: v for k, v in index.items() if k not in clashes}


def match_tensors(
    target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor], in_channels: int = 3
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Map ``source`` (the file) onto ``target`` (the encoder's state dict) by name and shape.

    Names are tried as they are, then with :data:`PREFIXES` stripped on both sides. A 4-D
    file tensor with 3 input channels matching a target tensor with ``in_channels`` (the first
    conv) is adapted by :func:`adapt_first_conv`.

    Returns:
        ``(loaded, target names not loaded, file names that matched nothing)``; ``loaded`` maps
        target names to tensors of the target's shape.
    """
    pairs: dict[str, str] = {t: t for t in target if t in source}
    target_index = _unique_index([t for t in target if t not in pairs])
    source_index = _unique_index([s for s in source if s not in pairs.values()])
    for key, t in target_index.items():
        if key in source_index:
            pairs[t] = source_index[key]
    loaded: dict[str, torch.Tensor] = {}
    for t, s in pairs.items():
        want, have = target[t], source[s]
        if have.shape == want.shape:
            loaded[t] = have.to(want.dtype)
        elif have.ndim == 4 and have.shape[1] == 3 and want.shape[1] == in_channels != 3 \
                and have.shape[0] == want.shape[0] and have.shape[2:] == want.shape[2:]:
            loaded[t] = adapt_first_conv(have, in_channels).to(want.dtype)
    used = {pairs[t] for t in loaded}
    return loaded, [t for t in target if t not in loaded], [s for s in source if s not in used]


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A pretrained RGB kernel ``[out, 3, kh, kw]`` for ``in_channels`` inputs, by smp's own rule.

    Runs smp's ``patch_first_conv`` on a throw-away conv holding ``weight``, so the result is
    exactly what ``encoder_weights=imagenet`` with that ``in_channels`` gives.
    """
    conv = nn.Conv2d(3, weight.shape[0], tuple(weight.shape[2:]), bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight.float())
    patch_first_conv(conv, new_in_channels=int(in_channels), default_in_channels=3, pretrained=True)
    return conv.weight.detach().to(weight.dtype)


def _few(names: list[str], n: int = 10) -> str:
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike, in_channels: int = 3) -> dict[str, list[str]]:
    """Load the weights file at ``path`` into ``encoder`` (smp's ``net.encoder``), by name and shape.

    Logs (INFO) how many tensors were loaded, the encoder's that were not (up to 10 names) and the
    file's that matched nothing.

    Returns:
        ``{"loaded": [...], "missing": [...], "unused": [...]}`` (encoder names, encoder names, file names).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: pickled code in the file, or no tensor of the file matches the encoder.
    """
    source = read_state_dict(path)
    target = encoder.state_dict()
    loaded, missing, unused = match_tensors(target, source, in_channels)
    if not loaded:
        raise ValueError(
            f"model.encoder_weights={os.fspath(path)}: none of its {len(source)} tensors matches the encoder "
            f"({type(encoder).__name__}) by name and shape: the file's keys look like {list(source)[:4]}, "
            f"the encoder's like {list(target)[:4]}. Is it weights of the same model as model.encoder_name? "
            f"(smp resnet34 takes torchvision's resnet34; tu-<name> takes timm's <name>.)"
        )
    encoder.load_state_dict(loaded, strict=False)
    log.info("Encoder weights from %s: loaded %d of the encoder's %d tensors.", os.fspath(path), len(loaded), len(target))
    if missing:
        log.info("Not in the file (kept at random init): %s", _few(missing))
    if unused:
        log.info("In the file but matching nothing in the encoder (ignored): %s", _few(unused))
    if len(loaded) < len(target) / 2:
        log.warning("Only %d of the encoder's %d tensors came from %s: check that it holds weights of %s.",
                    len(loaded), len(target), os.fspath(path), type(encoder).__name__)
    return {"loaded": list(loaded), "missing": missing, "unused": unused}


# --------------------------------------------------------------------------------------------
# a hub download
# --------------------------------------------------------------------------------------------


def cached_hub_files(encoder_name: str, weights: str) -> list[tuple[str, str, str | None]]:
    """``(repo_id, filename, revision)`` that smp/timm fetch from the Hugging Face hub for these weights.

    smp's own encoders: ``config.json`` + ``model.safetensors`` of ``smp-hub/<encoder>.<weights>`` at a
    pinned revision (``hf_hub_download``). ``tu-`` encoders: timm's pretrained config; timm tries
    ``model.safetensors`` then ``pytorch_model.bin`` (or its ``hf_hub_filename``). Empty when the
    weights come from a URL (torch.hub, which never re-downloads a cached file) or are unknown.
    """
    import segmentation_models_pytorch as smp

    if encoder_name.startswith("tu-"):
        try:
            import timm

            cfg = timm.models.get_pretrained_cfg(encoder_name[3:])
        except Exception:  # noqa: BLE001 -- unknown to timm: smp raises its own error later
            return []
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not repo:
            return []
        name = getattr(cfg, "hf_hub_filename", None)
        return [(repo, f, None) for f in ([name] if name else ["model.safetensors", "pytorch_model.bin"])]
    settings = smp.encoders.encoders.get(encoder_name, {}).get("pretrained_settings", {}).get(weights)
    if not settings or "repo_id" not in settings:
        return []
    return [(settings["repo_id"], f, settings.get("revision")) for f in ("config.json", "model.safetensors")]


def is_cached(encoder_name: str, weights: str) -> bool:
    """True when the hub files for these weights are all in the local hub cache (tu-: any one of timm's)."""
    from huggingface_hub import try_to_load_from_cache

    files = cached_hub_files(encoder_name, weights)
    if not files:
        return False
    found = [isinstance(try_to_load_from_cache(repo, f, revision=rev), str) for repo, f, rev in files]
    return any(found) if encoder_name.startswith("tu-") else all(found)


@contextmanager
def hub_offline(enabled: bool) -> Iterator[None]:
    """huggingface_hub's offline switch (``HF_HUB_OFFLINE=1``) for the block, as it was afterwards.

    huggingface_hub reads the variable once at import into ``constants.HF_HUB_OFFLINE`` and checks
    that constant on every request; both are set.
    """
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    before_env, before = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
        if before_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before_env


def cache_dirs() -> dict[str, str]:
    """Where downloads go: ``HF_HOME`` (hub cache ``$HF_HOME/hub``) and ``TORCH_HOME`` (torch.hub)."""
    from huggingface_hub import constants

    return {"HF_HOME": constants.HF_HOME, "HF_HUB_CACHE": constants.HF_HUB_CACHE, "TORCH_HOME": torch.hub.get_dir()}


def offline_message(encoder_name: str, weights: str, error: BaseException) -> str:
    """The one message for a download that failed: what happened, and both fixes."""
    first = (str(error).strip().splitlines() or [""])[0][:200]
    dirs = cache_dirs()
    return (
        f"model.encoder_weights={weights} for model.encoder_name={encoder_name}: the pretrained weights could not be "
        f"downloaded ({type(error).__name__}: {first}) and are not in this machine's cache "
        f"(HF_HOME={dirs['HF_HOME']}, TORCH_HOME={os.path.dirname(dirs['TORCH_HOME'])}). Two fixes: "
        f"(1) fetch them once on a machine with internet into a cache this machine reads: "
        f"python scripts/fetch_weights.py model=<your model> model.encoder_name={encoder_name} "
        f"model.encoder_weights={weights} (it prints the folder and the HF_HOME/TORCH_HOME to set here); or "
        f"(2) pass a local file: model.encoder_weights=/path/to/encoder.pth (.pth/.pt/.bin/.safetensors). "
        f"See {DOCS}."
    )


def download_errors() -> tuple[type[BaseException], ...]:
    """What a failed download raises: OSError (huggingface_hub's LocalEntryNotFoundError and
    OfflineModeIsEnabled, urllib's URLError, socket errors) and httpx's transport errors."""
    errors: list[type[BaseException]] = [OSError]
    try:
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:  # pragma: no cover -- huggingface_hub < 1 uses requests (an OSError)
        pass
    try:
        from huggingface_hub.errors import HfHubHTTPError

        errors.append(HfHubHTTPError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def reachable(url: str, timeout: float = 5.0) -> OSError | None:
    """``None`` when a TCP connection to ``url``'s host opens, else the error.

    Why: offline, huggingface_hub retries a failed request five times with back-off (~25 s of
    warnings) before it gives up; one quick probe fails in a second instead.
    """
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname or url, parsed.port or 443), timeout=timeout).close()
    except OSError as err:
        return err
    return None


@contextmanager
def hub_download(encoder_name: str, weights: str) -> Iterator[None]:
    """Around building a network with hub weights: offline when cached, one readable error when the download fails."""
    cached = is_cached(encoder_name, weights)
    if not cached and cached_hub_files(encoder_name, weights):
        from huggingface_hub import constants

        error = OSError("offline mode (HF_HUB_OFFLINE=1)") if constants.HF_HUB_OFFLINE else reachable(constants.ENDPOINT)
        if error is not None:
            raise ValueError(offline_message(encoder_name, weights, error)) from error
    with hub_offline(cached):
        try:
            yield
        except download_errors() as err:
            raise ValueError(offline_message(encoder_name, weights, err)) from err

