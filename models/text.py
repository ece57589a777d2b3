"""A Hugging Face text encoder (BERT, RoBERTa, XLM-R, ...) that turns transcripts into vectors.

``TextEncoder(path_or_id, device)`` loads the tokenizer and model of a folder written by ``save_pretrained`` or of a
hub id already in the local Hugging Face cache (nothing is downloaded at run time; see ``models.speech``).
:meth:`TextEncoder.encode` gives one vector per text: the mean of a hidden state (the last one, or ``layer``) over the
text's tokens, padding left out; an empty text gives zeros, so a video without words is a stream without signal
rather than the embedding of ``[CLS] [SEP]``.
"""

from __future__ import annotations

import numpy as np
import torch

from models.speech import folder_sha256, resolve_folder
from utils.errors import UserError


class TextEncoder:
    """Mean-pooled hidden states of a text model (module text)."""

    name = "text"

    def __init__(self, path_or_id: str, device=None, layer: int | None = None, max_length: int = 512):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        folder = _text_folder(path_or_id)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, local_files_only=True)
        except Exception as error:  # noqa: BLE001 - transformers raises many kinds for a bad folder
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"--text {path_or_id}: not a readable text encoder folder ({reason[:200]})") from None
        config = model.config
        layers = int(getattr(config, "num_hidden_layers", 0) or 0)
        self.layer = layers if layer is None else int(layer)
        if not 0 <= self.layer <= layers:
            raise UserError(f"--text-layer {self.layer}: {path_or_id} has hidden states 0 to {layers}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.eval().to(self.device)
        self.source, self.folder = path_or_id, folder
        self.sha256 = folder_sha256(folder)
        self.dim = int(config.hidden_size)
        model_limit = int(getattr(config, "max_position_embeddings", max_length) or max_length)
        self.max_length = min(max_length, model_limit)

    def describe(self) -> dict:
        """What the vectors depend on: the model's files (a digest, the cache key of stored embeddings) and layer."""
        return {"encoder": self.name, "model": self.source, "sha256": self.sha256, "layer": self.layer,
                "dim": self.dim, "max_length": self.max_length}

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), dim) float32: each text's mean hidden state over its non-padding tokens (module text)."""
        texts = [text if isinstance(text, str) else "" for text in texts]
        output = np.zeros((len(texts), self.dim), np.float32)
        spoken = [k for k, text in enumerate(texts) if text.strip()]
        with torch.inference_mode():
            for first in range(0, len(spoken), batch_size):
                rows = spoken[first:first + batch_size]
                batch = self.tokenizer([texts[k] for k in rows], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                batch = {key: value.to(self.device) for key, value in batch.items()}
                hidden = self.model(**batch, output_hidden_states=True).hidden_states[self.layer].float()
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                output[rows] = mean.cpu().numpy()
        return output


def _text_folder(path_or_id: str) -> str:
    try:
        return resolve_folder(path_or_id)
    except UserError as error:  # the speech encoder's message, for the text flag
        raise UserError(str(error).replace("--audio", "--text").replace("speech encoder", "text encoder")) from None
