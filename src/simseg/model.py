"""The SimSeg dual encoder: a timm ViT image tower, a Hugging Face BERT text tower, bias-free projections to a shared
space, LoDA pooling and a learnable temperature.

The towers are the libraries' own modules (``timm.create_model`` / ``transformers.BertModel``); only the projection,
pooling and temperature are ours.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from types import MethodType, SimpleNamespace
from typing import Any

import torch
import torch.nn as nn

from simseg.errors import CheckpointError, ConfigError, TextTowerAbsentError, one_line
from simseg.loda import l2_normalize, pool_tokens
from simseg.schema import POOLINGS, TRAIN_POOLINGS
from simseg.tokenizer import Tokenizer
from simseg.transforms import IMAGENET_MEAN, IMAGENET_STD


def state_sha256(state: dict[str, torch.Tensor], prefixes: tuple[str, ...] | None = None) -> str:
    """sha256 over a state dict's names and raw tensor bytes in name order (optionally only names with one of
    ``prefixes``): :attr:`SimSegModel.weights_hash` of a model, computable from a weights file alone."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        if prefixes is None or name.startswith(prefixes):
            h.update(name.encode())
            h.update(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))  # no copy
    return h.hexdigest()


def pack_rows(lengths: Sequence[int], row_length: int) -> tuple[list[int], list[int], int]:
    """Place sequences of ``lengths`` into rows of at most ``row_length`` slots, first fit, longest first (ties in
    order). Returns each sequence's row and offset in its row, and the longest row's fill."""
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    fill: list[int] = []
    rows, offsets = [0] * len(lengths), [0] * len(lengths)
    for i in order:
        n = int(lengths[i])
        if n > row_length:
            raise ValueError(f"pack_rows: a sequence of {n} does not fit a row of {row_length}")
        r = next((r for r, used in enumerate(fill) if used + n <= row_length), len(fill))
        if r == len(fill):
            fill.append(0)
        rows[i], offsets[i] = r, fill[r]
        fill[r] += n
    return rows, offsets, max(fill, default=0)


def build_vision_tower(name: str, pretrained: bool, img_size: int, kwargs: dict | None = None) -> nn.Module:
    """A timm ViT returning tokens (no classifier head), accepting any input size that is a multiple of its patch.

    ``img_size`` is the native size (the position embedding's grid); other sizes get a resampled position embedding
    per call (see :meth:`SimSegModel.position_embedding`), so the tower itself never changes with the input size.
    """
    import timm

    try:
        vit = timm.create_model(name, pretrained=pretrained, num_classes=0, img_size=img_size, **(kwargs or {}))
    except Exception as e:
        if isinstance(e, RuntimeError) and "Unknown model" in str(e):
            raise ConfigError(f"model.vision.name: unknown timm model {name!r}") from None
        if pretrained:
            raise CheckpointError(
                f"could not load pretrained timm weights for {name!r} ({type(e).__name__}: {one_line(e)}); "
                "set model.vision.pretrained=false or make the weights available offline"
            ) from None
        # the free-form kwargs go to timm as they are: its refusal is the user's setting, not a bug of ours
        shown = ", ".join(f"{k}={v!r}" for k, v in (kwargs or {}).items()) or "none"
        raise ConfigError(f"model.vision: timm cannot build {name!r} with img_size={img_size} and kwargs {shown} "
                          f"({type(e).__name__}: {one_line(e)})") from None
    if getattr(vit, "pos_embed", None) is None or getattr(vit, "patch_embed", None) is None:
        raise ConfigError(f"model.vision.name: {name!r} is not a ViT with an absolute position embedding")
    vit.patch_embed.strict_img_size = False  # other sizes are checked (multiple of the patch) and resampled by us
    return vit


def build_text_tower(name: str, pretrained: bool, config: dict | None, vocab_size: int | None) -> nn.Module:
    """A ``transformers.BertModel`` without its pooler (the original uses no pooler layer)."""
    from transformers import BertConfig, BertModel

    if pretrained:
        try:
            return BertModel.from_pretrained(name, add_pooling_layer=False)
        except Exception as e:
            raise CheckpointError(
                f"could not load pretrained BERT {name!r} ({type(e).__name__}); "
                "set model.text.pretrained=false or pass a local folder"
            ) from None
    overrides = dict(config or {})
    if vocab_size is not None and "vocab_size" not in overrides:
        overrides["vocab_size"] = vocab_size
    try:
        return BertModel(BertConfig(**overrides), add_pooling_layer=False)
    except Exception as e:  # the free-form config goes to transformers as it is
        shown = ", ".join(f"{k}={v!r}" for k, v in (config or {}).items()) or "none"
        raise ConfigError(f"model.text.config: transformers cannot build BERT with {shown} "
                          f"({type(e).__name__}: {one_line(e)})") from None


class AbsentTextTower(nn.Module):
    """Stands in for the text tower of a model loaded for images only (``load_model(..., text=False)``): it has no
    weights, and calling it says how to load the whole model. ``config.hidden_size`` sizes the text projection."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.config = SimpleNamespace(hidden_size=int(hidden_size))

    def forward(self, *args: Any, **kwargs: Any) -> None:
        raise TextTowerAbsentError("this model was loaded without its text tower (text=False), so it cannot encode "
                                   "text; load it with text=True")


class SimSegModel(nn.Module):
    """Image and text towers projected to ``embed_dim`` and pooled by LoDA (or avg / cls).

    Args:
        vision: a timm VisionTransformer.
        text: a transformers BertModel (no pooler).
        embed_dim: shared embedding width (512).
        pooling: "loda", "avg" or "cls".
        image_topk / text_topk: LoDA's k for each modality (5 and 1).
        temperature_init / temperature_min / temperature_max: the learnable temperature and its clamp.
        tokenizer: the tokenizer whose vocabulary matches ``text`` (may be None for image-only use).
        max_length: caption length in tokens (25).
        config: the model config this was built from (saved with checkpoints).
        train_pooling: the LoDA variant of the training forward: ``"masked"`` (padding excluded, what the released
            code trains with: its training forward passes the attention mask to the same top-k pooling used at
            evaluation) or ``"vanilla"`` (every token counts, what the author's answer in the original tracker
            describes). Evaluation always uses the masked variant.
    """

    #: The LoDA variants a training forward may use (see ``train_pooling``).
    TRAIN_POOLINGS = TRAIN_POOLINGS

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self,
        vision: nn.Module,
        text: nn.Module,
        embed_dim: int = 512,
        pooling: str = "loda",
        image_topk: int = 5,
        text_topk: int = 1,
        temperature_init: float = 0.02,
        temperature_min: float = 0.001,
        temperature_max: float = 0.5,
        tokenizer: Tokenizer | None = None,
        max_length: int = 25,
        config: dict | None = None,
        train_pooling: str = "masked",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling: unknown pooling {pooling!r}: choose loda, avg or cls")
        if train_pooling not in self.TRAIN_POOLINGS:
            raise ConfigError(f"model.train_pooling: {train_pooling!r} is not one of {', '.join(self.TRAIN_POOLINGS)}")
        self.train_pooling = train_pooling
        self.image_encoder = vision
        self.text_encoder = text
        self.image_projection = nn.Linear(vision.num_features, embed_dim, bias=False)
        self.text_projection = nn.Linear(text.config.hidden_size, embed_dim, bias=False)
        self.temperature_param = nn.Parameter(torch.tensor(float(temperature_init)))
        self.pooling = pooling
        self.image_topk = image_topk
        self.text_topk = text_topk
        self.temperature_range = (temperature_min, temperature_max)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.config: dict[str, Any] = dict(config or {})
        self._pos_source: dict | None = None  # native position embedding, see set_image_size
        #: :attr:`text_weights_hash` of a model loaded without its text tower (computed from the weights file)
        self.absent_text_hash: str | None = None

    # ---------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.image_projection.weight.device

    @property
    def image_size(self) -> int:
        return int(self.image_encoder.patch_embed.img_size[0])

    @property
    def patch_size(self) -> int:
        return int(self.image_encoder.patch_embed.patch_size[0])

    @property
    def embed_dim(self) -> int:
        """Width of the shared embedding space (512)."""
        return int(self.image_projection.out_features)

    @property
    def weights_hash(self) -> str:
        """sha256 of the current weights (recomputed on every access, so never stale)."""
        return state_sha256(self.state_dict())

    @property
    def text_weights_hash(self) -> str:
        """sha256 of the text tower and text projection only: what class embeddings depend on (the image tower,
        and its input size, do not change them). A model loaded without its text tower gives the hash of the text
        weights in its file, so that it finds the class embeddings the whole model cached."""
        if self.has_text_tower:
            return state_sha256(self.state_dict(), prefixes=("text_encoder.", "text_projection."))
        if self.absent_text_hash is None:  # never a shared placeholder key: it would find another model's embeddings
            raise TextTowerAbsentError("this model was built without its text tower and without the hash of its text "
                                       "weights, so no cached class embedding can be matched to it")
        return self.absent_text_hash

    @property
    def has_text_tower(self) -> bool:
        """False for a model loaded with ``text=False``: images only, class embeddings from the cache."""
        return not isinstance(self.text_encoder, AbsentTextTower)

    def temperature(self) -> torch.Tensor:
        """The learnable temperature clamped to its range; logits = similarity / temperature."""
        return self.temperature_param.clamp(*self.temperature_range)

    def set_image_size(self, size: int) -> None:
        """Make ``size`` the ViT's native input size; the position embedding is resampled bicubically (align_corners
        False, no antialias), prefix ([CLS]) positions kept as they are.

        The model runs at any size without this (see :meth:`position_embedding`); it is for building a model at the
        size it will be trained or exported at (:func:`simseg.checkpoint.load_model`'s ``image_size``).

        Resampling always starts from the native (trained) position embedding, so switching sizes back and forth
        (e.g. 288 for one protocol, 448 for another) never compounds interpolation error. Weights changed since the
        last resize (training) become the new native ones.

        Raises:
            ConfigError: ``size`` is not a positive multiple of the patch size.
        """
        from timm.layers import resample_abs_pos_embed

        if isinstance(size, bool) or not hasattr(size, "__index__") or size < 1 or size % self.patch_size:
            raise ConfigError(f"image_size: {size!r} is not a positive multiple of the model's patch size "
                              f"{self.patch_size}")
        size = int(size)
        vit = self.image_encoder
        if (size, size) == tuple(vit.patch_embed.img_size):
            return
        src = self._pos_source
        current = vit.pos_embed
        if src is None or current is not src["made"] or current._version != src["version"]:
            src = {"grid": tuple(vit.patch_embed.grid_size), "pos": current.detach().clone()}
        vit.patch_embed.set_input_size(img_size=(size, size))
        new_grid = tuple(vit.patch_embed.grid_size)
        if current is not None:
            prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
            with torch.no_grad():
                resized = src["pos"] if new_grid == src["grid"] else resample_abs_pos_embed(
                    src["pos"], new_size=list(new_grid), old_size=list(src["grid"]), num_prefix_tokens=prefix,
                    interpolation="bicubic", antialias=False)
            vit.pos_embed = nn.Parameter(resized.clone(), requires_grad=current.requires_grad)
            src["made"], src["version"] = vit.pos_embed, vit.pos_embed._version
        self._pos_source = src
        self.config.setdefault("vision", {})
        self.config["vision"] = {**self.config["vision"], "img_size": size}

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: list[str] | str, padding: str = "max_length") -> dict[str, torch.Tensor]:
        """Token ids and attention mask for ``texts`` (max_length 25), on the model's device."""
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer: pass a folder with vocab.txt (or a Hugging Face name such "
                              "as bert-base-uncased) as tokenizer=... to load_model, or --tokenizer on the command "
                              "line")
        batch = self.tokenizer(texts, max_length=self.max_length, padding=padding)
        return {k: v.to(self.device) for k, v in batch.items()}

    def text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, embed_dim) projected text token features ([CLS], [SEP] included)."""
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.text_projection(hidden)

    def text_tokens_packed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           row_length: int = 64) -> torch.Tensor:
        """:meth:`text_tokens` computed without padding: the (right-padded) sequences are packed into rows of at most
        ``row_length`` tokens (first fit, longest first), each sequence attending only to itself (a block-diagonal
        mask) at its own position ids, so BERT computes real tokens only. The same values at the real tokens (to
        float rounding: other matrix shapes); zeros at the padding."""
        lengths = attention_mask.sum(dim=1)
        if bool((lengths < 1).any()):
            raise ValueError("text_tokens_packed: a sequence has no token")
        rows, offsets, width = pack_rows(lengths.tolist(), max(int(row_length), int(lengths.max())))
        device = input_ids.device
        sequence = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        position = torch.arange(len(sequence), device=device) - starts[sequence]
        row = torch.tensor(rows, device=device)[sequence]
        column = torch.tensor(offsets, device=device)[sequence] + position
        n_rows = max(rows) + 1
        ids = torch.zeros((n_rows, width), dtype=input_ids.dtype, device=device)
        ids[row, column] = input_ids[sequence, position]
        positions = torch.zeros((n_rows, width), dtype=torch.long, device=device)
        positions[row, column] = position
        owner = torch.full((n_rows, width), -1, dtype=torch.long, device=device)
        owner[row, column] = sequence
        mask = (owner[:, :, None] == owner[:, None, :]) & (owner[:, :, None] >= 0)
        mask |= torch.eye(width, dtype=torch.bool, device=device)  # a padding slot attends to itself: no empty row
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask[:, None], position_ids=positions,
                                   token_type_ids=torch.zeros_like(ids)).last_hidden_state
        out = hidden.new_zeros((len(lengths), input_ids.shape[1], hidden.shape[-1]))
        out[sequence, position] = hidden[row, column]
        return self.text_projection(out)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, masked: bool = True, normalize: bool = True,
        packed: bool = False,
    ) -> torch.Tensor:
        """(B, embed_dim) pooled text embedding; ``masked`` excludes padding (evaluation), vanilla otherwise.

        ``packed``: BERT computes no padding (:meth:`text_tokens_packed`; with ``masked`` only: the pooling must not
        see the padding's features, which are then zeros)."""
        if packed and not masked:
            raise ValueError("encode_text: packed=True needs masked=True (padding has no features when packed)")
        tokens = self.text_tokens_packed(input_ids, attention_mask) if packed else \
            self.text_tokens(input_ids, attention_mask)
        if self.pooling == "avg":
            pooled = pool_tokens(tokens, "avg", 0, attention_mask)
        else:
            pooled = pool_tokens(tokens, self.pooling, self.text_topk, attention_mask if masked else None,
                                 cls_token=tokens[:, 0])
        return l2_normalize(pooled) if normalize else pooled

    # ---------------------------------------------------------------- image
    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The ViT's position embedding for a ``grid`` of patches: the native one resampled bicubically (align_corners
        False, no antialias, as the original's loader), prefix ([CLS]) positions kept as they are.

        A new tensor on every call (differentiable, cheap next to the forward); the model is not changed.
        """
        from timm.layers import resample_abs_pos_embed

        vit = self.image_encoder
        native = tuple(vit.patch_embed.grid_size)
        if tuple(grid) == native:
            return vit.pos_embed
        prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
        return resample_abs_pos_embed(vit.pos_embed, new_size=list(grid), old_size=list(native),
                                      num_prefix_tokens=prefix, interpolation="bicubic", antialias=False)

    def _image_features(self, images: torch.Tensor,
                        pos_embed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch tokens, first prefix token) after the ViT's final LayerNorm, for any multiple of the patch size.

        At the native size this is timm's ``forward_features``. At another size it is the same sequence of timm's
        modules with :meth:`position_embedding` of that grid added in place of the native one; ``pos_embed`` gives
        that position embedding when it was computed beforehand (the ONNX export holds it as a constant).
        """
        vit = self.image_encoder
        p = self.patch_size
        height, width = images.shape[-2:]
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        grid = (height // p, width // p)
        if pos_embed is None and grid == tuple(vit.patch_embed.grid_size):
            feats = vit.forward_features(images)
        else:
            x = vit.patch_embed(images)  # (B, N, C)
            pos = self.position_embedding(grid) if pos_embed is None else pos_embed
            prefix = [t.expand(x.shape[0], -1, -1) for t in (vit.cls_token, getattr(vit, "reg_token", None))
                      if t is not None]
            if getattr(vit, "no_embed_class", False):
                x = torch.cat(prefix + [x + pos], dim=1)
            else:
                x = torch.cat(prefix + [x], dim=1) + pos
            x = vit.norm_pre(vit.patch_drop(vit.pos_drop(x)))
            feats = vit.norm(vit.blocks(x))
        n_prefix = getattr(vit, "num_prefix_tokens", 1)
        return feats[:, n_prefix:], feats[:, 0]

    def encode_image_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, N, embed_dim) projected patch tokens (not normalised) and the patch grid (gh, gw)."""
        patches, _ = self._image_features(images)
        gh, gw = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        return self.image_projection(patches), (gh, gw)

    def encode_image(self, images: torch.Tensor, masked: bool = True, normalize: bool = True) -> torch.Tensor:
        """(B, embed_dim) pooled image embedding. Patches have no padding, so ``masked`` changes nothing here."""
        patches, cls = self._image_features(images)
        tokens = self.image_projection(patches)
        cls_proj = self.image_projection(cls) if self.pooling == "cls" else None
        pooled = pool_tokens(tokens, self.pooling, self.image_topk, None, cls_token=cls_proj)
        return l2_normalize(pooled) if normalize else pooled

    # ---------------------------------------------------------------- sharing
    def save_pretrained(self, out_dir: str | os.PathLike, repo_id: str | None = None, license: str = "mit",
                        meta: dict | None = None, metrics: Sequence[str | os.PathLike] = (),
                        training_config: dict | None = None) -> Path:
        """Write a folder the Hugging Face Hub can serve: the simseg checkpoint
        (:func:`simseg.checkpoint_format.save_model`), evaluation reports in ``metrics/``, and a model card
        (``README.md``, :func:`simseg.hub.model_card`; one a person wrote is kept).

        Args:
            out_dir: the folder (created if needed).
            repo_id: the Hub repository (``ORG/NAME``) the card names for loading; None names the folder.
            license: the card's ``license`` field.
            meta: metadata stored in ``config.yaml`` (and shown in the card).
            metrics: ``metrics.json`` reports of ``simseg eval-seg`` / ``eval-retrieval`` to store and tabulate.
            training_config: the training run's merged config, for the card.

        Returns:
            The folder. ``simseg push-to-hub`` (or :func:`simseg.hub.upload_folder`) uploads it.
        """
        from simseg.checkpoint_format import save_model
        from simseg.hub import check_license, check_repo_id, store_metrics, write_model_card

        check_license(license)
        if repo_id is not None:
            check_repo_id(repo_id)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        store_metrics(out_dir, metrics)  # first: a bad report fails before anything big is written
        out = save_model(self, out_dir, meta=meta)
        write_model_card(out, repo_id=repo_id, license=license, training_config=training_config)
        return out

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, masked: bool | None = None,
        packed: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward: normalised image and text embeddings.

        ``masked`` chooses the text pooling's variant (True: padding excluded; False: vanilla); None uses the model's
        ``train_pooling`` (``"masked"`` unless built otherwise, as the released code trains). ``packed``: the
        captions are packed without padding (:meth:`text_tokens_packed`; masked pooling only).
        """
        if masked is None:
            masked = self.train_pooling == "masked"
        return self.encode_image(images, masked=masked), self.encode_text(input_ids, attention_mask, masked=masked,
                                                                          packed=packed)


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the probability of every dropout of both towers (every ``nn.Dropout`` module: BERT's embedding, attention
    and hidden dropouts, timm's position, attention, projection and MLP dropouts) to ``p``; returns how many.

    The attention kernels of both libraries read their dropout probability from these modules (``dropout.p`` /
    ``attn_drop.p``), so ``p = 0`` makes a training-mode forward deterministic. Stochastic depth (timm's
    ``drop_path``) is not a dropout and stays as built (off in every preset).

    Raises:
        ConfigError: ``p`` outside [0, 1].
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise ConfigError(f"model.dropout: must be a number in [0, 1] or null, got {p!r}")
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = float(p)
            count += 1
    text = getattr(model, "text_encoder", None)
    if text is not None and hasattr(text, "config"):  # keep the saved BERT config truthful
        text.config.hidden_dropout_prob = float(p)
        text.config.attention_probs_dropout_prob = float(p)
    return count


def eval_view(model: Any) -> Any:
    """``model`` as it computes in eval mode, without changing it: the model itself when no module of it is in
    training mode, else a shallow copy of its module tree with every module in eval mode, sharing every parameter
    and buffer (nothing is copied). Inference on a model handed over in training mode (a training loop's) then has no
    dropout, and the caller's model keeps its mode."""
    if not isinstance(model, nn.Module) or not any(m.training for m in model.modules()):
        return model

    def view(module: nn.Module) -> nn.Module:
        if not any(m.training for m in module.modules()):
            return module
        new = copy.copy(module)
        new._modules = {name: None if child is None else view(child) for name, child in module._modules.items()}
        new.training = False
        for key, value in vars(module).items():  # a method set on the instance runs on the view, not the original
            if isinstance(value, MethodType) and value.__self__ is module:
                setattr(new, key, MethodType(value.__func__, new))
        return new

    return view(model)


def build_model(model_cfg: dict, tokenizer: Tokenizer | None = None, pretrained: bool | None = None,
                empty: bool = False, text_hidden_size: int | None = None) -> SimSegModel:
    """Build a model from the ``model`` section of a config.

    ``pretrained`` overrides both towers' ``pretrained`` flags (False when weights come from a checkpoint).
    ``train_pooling`` ("masked" by default) is the training forward's LoDA variant; ``dropout`` (None: the towers' own
    dropout) sets every dropout of both towers (:func:`set_dropout`).

    ``empty=True`` builds the model on the meta device, without computing any initial weight (a random
    initialisation of 131M parameters costs seconds): for a checkpoint that gives every weight, assigned with
    ``load_state_dict(state, assign=True)`` (:func:`simseg.checkpoint.load_model` does). The buffers that no state
    dict holds (BERT's position and token-type ids) are made on the CPU as the library makes them.

    ``text_hidden_size``: build the model for images only, with :class:`AbsentTextTower` of that width in place of
    BERT (transformers is then not imported); only with ``empty=True``.
    """
    if text_hidden_size is not None and not empty:
        raise ValueError("build_model: text_hidden_size (an image-only model) needs empty=True")
    if empty:
        if pretrained:
            raise ValueError("build_model: empty=True builds without weights; pretrained weights would be lost")
        with torch.device("meta"):
            model = build_model(model_cfg, tokenizer, pretrained=False) if text_hidden_size is None else \
                _build_image_only(model_cfg, tokenizer, text_hidden_size)
        if model.has_text_tower:
            _bert_buffers(model.text_encoder)
        return model
    cfg = dict(model_cfg)
    vision, text = dict(cfg["vision"]), dict(cfg["text"])
    vp = vision.get("pretrained", False) if pretrained is None else pretrained
    tp = text.get("pretrained", False) if pretrained is None else pretrained
    vocab_size = text.get("config", {}).get("vocab_size") or (tokenizer.vocab_size if tokenizer is not None else None)
    vit = build_vision_tower(vision["name"], vp, int(vision.get("img_size", 224)), vision.get("kwargs") or {})
    bert = build_text_tower(text["name"], tp, text.get("config") or {}, vocab_size)
    if tokenizer is not None and tokenizer.vocab_size > bert.config.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the text tower only {bert.config.vocab_size} embeddings"
        )
    positions = int(bert.config.max_position_embeddings)
    if int(cfg.get("max_length", 25)) > positions:
        raise ConfigError(f"model.max_length: {cfg['max_length']} is not allowed (must be at most the text tower's "
                          f"max_position_embeddings, {positions})")
    cfg["text"] = {**text, "config": {**(text.get("config") or {}), "vocab_size": bert.config.vocab_size}}
    model = _assemble(cfg, vit, bert, tokenizer)
    if cfg.get("dropout") is not None:
        set_dropout(model, cfg["dropout"])
    return model


def _build_image_only(model_cfg: dict, tokenizer: Tokenizer | None, text_hidden_size: int) -> SimSegModel:
    vision = dict(model_cfg["vision"])
    vit = build_vision_tower(vision["name"], False, int(vision.get("img_size", 224)), vision.get("kwargs") or {})
    return _assemble(dict(model_cfg), vit, AbsentTextTower(text_hidden_size), tokenizer)


def _assemble(cfg: dict, vit: nn.Module, text: nn.Module, tokenizer: Tokenizer | None) -> SimSegModel:
    """The SimSegModel of a config's settings around built towers."""
    return SimSegModel(
        vit,
        text,
        embed_dim=int(cfg.get("embed_dim", 512)),
        pooling=cfg.get("pooling", "loda"),
        image_topk=int(cfg.get("image_topk", 5)),
        text_topk=int(cfg.get("text_topk", 1)),
        temperature_init=float(cfg.get("temperature_init", 0.02)),
        temperature_min=float(cfg.get("temperature_min", 0.001)),
        temperature_max=float(cfg.get("temperature_max", 0.5)),
        tokenizer=tokenizer,
        max_length=int(cfg.get("max_length", 25)),
        config=cfg,
        train_pooling=str(cfg.get("train_pooling") or "masked"),
    )


def _bert_buffers(bert: nn.Module) -> None:
    """BERT's two non-persistent buffers (in no state dict), on the CPU, with the values ``BertEmbeddings`` gives
    them: position ids ``0..max_position - 1`` and all-zero token-type ids, each of shape (1, max_position)."""
    emb = bert.embeddings
    n = int(bert.config.max_position_embeddings)
    position_ids = torch.arange(n, device="cpu").expand((1, -1))
    emb.register_buffer("position_ids", position_ids, persistent=False)
    if "token_type_ids" in emb._buffers:
        emb.register_buffer("token_type_ids", torch.zeros(position_ids.size(), dtype=torch.long, device="cpu"),
                            persistent=False)


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers still on the meta device (none once a model built with ``empty=True``
    has been given its weights)."""
    return [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]


def parameter_counts(model: SimSegModel) -> dict[str, int]:
    return {
        "image_encoder": sum(p.numel() for p in model.image_encoder.parameters()),
        "text_encoder": sum(p.numel() for p in model.text_encoder.parameters()),
        "projections": model.image_projection.weight.numel() + model.text_projection.weight.numel(),
        "temperature": 1,
        "total": sum(p.numel() for p in model.parameters()),
    }

