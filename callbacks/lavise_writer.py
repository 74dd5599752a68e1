"""LaViSEWriter: writes LaViSE filter explanations once the predict loop has finished (global rank 0 only).

In ``output_dir`` (the callback's argument, else the module's ``output_dir``), every file written atomically:

* ``filters.csv``: one row per (filter, rank): ``filter, rank, word, score, seen, category, count, similarity,
  images, threshold``. ``score`` is the word's (weighted) frequency among the top-s words of the filter's top
  images (1.0 = in every image's top-s); ``seen`` is ``seen`` when the word names a category used in training,
  else ``unseen`` (an unseen category, or any other word of an open vocabulary); ``category`` is the category
  the word names ("" if none);
* ``filters.json``: the same rows, plus the run's settings, the label vocabulary with its seen flags and the
  resolved CLI configuration when one was saved;
* ``pairs.csv``: one row per explained (filter, top image): image index, max activation, its top words and its
  ground-truth categories (IoU > 0.04 with the thresholded activation);
* ``filters/filter_<u>.png``: the filter's top images, each shown as image × clamp(F_u↑ / max, 0.3) (the authors'
  visualisation), with the explanation words above;
* TensorBoard (when the trainer has a TensorBoardLogger): the table as Markdown text, the pictures as images.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image, ImageDraw

from lit_explain.atomic import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["LaViSEWriter", "filter_rows", "attention_picture", "write_table"]

log = logging.getLogger(__name__)


def filter_rows(ex) -> list[dict[str, Any]]:
    """The explanation table of :class:`~lit_explain.methods.lavise_filters.FilterExplanations` as dict rows."""
    rows = []
    r = ex.ranked
    for i, u in enumerate(ex.units.tolist()):
        for rank in range(r.words.shape[1]):
            w = int(r.words[i, rank])
            if w < 0:
                break
            lab = int(ex.word_labels[w])
            rows.append({
                "filter": u,
                "rank": rank + 1,
                "word": ex.vocabulary[w],
                "score": float(r.scores[i, rank]),
                "seen": "seen" if ex.word_seen(w) else "unseen",
                "category": ex.label_names[lab] if lab >= 0 else "",
                "count": int(r.counts[i, rank]),
                "similarity": float(r.similarity[i, rank]),
                "images": int(r.images[i]),
                "threshold": float(ex.thresholds[i]),
            })
    return rows


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    """CSV with the columns in the rows' own key order (atomic)."""
    buf = io.StringIO()
    cols = list(rows[0]) if rows else []
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _pair_rows(ex, top_words: int) -> list[dict[str, Any]]:
    rows = []
    for i, u in enumerate(ex.units.tolist()):
        for j in range(ex.top_index.shape[1]):
            if not bool(ex.valid[i, j]):
                continue
            words = [ex.vocabulary[int(w)] for w in ex.words[i, j, :top_words] if int(w) >= 0]
            truth = [ex.label_names[int(c)] for c in torch.nonzero(ex.ground_truth[i, j]).flatten()]
            rows.append({"filter": u, "image_rank": j + 1, "image": int(ex.top_index[i, j]),
                         "max_activation": float(ex.top_values[i, j]), "words": " | ".join(words),
                         "ground_truth": " | ".join(truth)})
    return rows


def _to_rgb(image: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> np.ndarray:
    """(3, S, S) normalised image -> (S, S, 3) float in [0, 1]."""
    x = image.float()
    if mean is not None and std is not None:
        x = x * std.view(3, 1, 1) + mean.view(3, 1, 1)
    else:
        x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-8)
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def attention_picture(images: list[np.ndarray], maps: list[torch.Tensor], title: str, tile: int = 112) -> Image.Image:
    """Tiles of image × clamp(upsampled map / its max, 0.3), with ``title`` above.

    Args:
        images: (S, S, 3) float [0, 1] images.
        maps: (h, w) activation maps of the filter on those images.
        title: text line (filter and words).
        tile: tile side in pixels.
    """
    head = 18
    n = max(len(images), 1)
    canvas = Image.new("RGB", (n * tile + (n - 1) * 2, tile + head), "white")
    for t, (img, amap) in enumerate(zip(images, maps)):
        up = F.interpolate(amap[None, None].float(), size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0]
        weight = (up / up.max().clamp(min=1e-8)).clamp(min=0.3).numpy()[..., None]
        arr = (np.clip(img * weight, 0, 1) * 255).astype(np.uint8)
        canvas.paste(Image.fromarray(arr).resize((tile, tile), Image.BILINEAR), (t * (tile + 2), head))
    ImageDraw.Draw(canvas).text((2, 3), title, fill="black")
    return canvas


class LaViSEWriter(Callback):
    """Writes LaViSE filter explanations (see the module docstring).

    Args:
        output_dir: output folder; None = the module's ``output_dir``.
        num_pictures: how many filters get a picture (in the order of the explained units).
        images_per_picture: top images shown per filter.
        words_in_title: explanation words written above a picture.
    """

    def __init__(self, output_dir: str | None = None, num_pictures: int = 16, images_per_picture: int = 8,
                 words_in_title: int = 5) -> None:
        self.output_dir = output_dir
        self.num_pictures = num_pictures
        self.images_per_picture = images_per_picture
        self.words_in_title = words_in_title

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ex = getattr(pl_module, "explanations", None)
        if ex is None:
            return
        log_dir = trainer.log_dir  # a collective under DDP (it broadcasts): every rank must ask
        if not trainer.is_global_zero:
            return
        hp = pl_module.hparams
        out = Path(self.output_dir or hp.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = filter_rows(ex)
        config_text = None
        if log_dir and (Path(log_dir) / "config.yaml").is_file():
            config_text = (Path(log_dir) / "config.yaml").read_text()
            atomic_write_text(out / "config.yaml", config_text)
        write_table(rows, out / "filters.csv")
        atomic_write_json(out / "filters.json", dict(method="LaViSE", model=hp.model, weights=hp.weights,
                   layer=hp.layer_target, attention=ex.attention, quantile=ex.quantile,
                   word_source=hp.word_source, top_images=int(ex.top_index.shape[1]), top_words=hp.top_words,
                   relevance_weighting=hp.relevance_weighting, num_images=ex.num_images,
                   labels=[{"name": n, "seen": bool(s)} for n, s in zip(ex.label_names, ex.seen.tolist())],
                   train_labels=ex.extra.get("train_label_names"), config=config_text, rows=rows))
        write_table(_pair_rows(ex, hp.top_words), out / "pairs.csv")
        pictures = self._pictures(trainer, ex, out)
        self._tensorboard(trainer, rows, pictures)
        log.info("LaViSE: wrote explanations of %d filters to %s", len(ex.units), out)

    def _pictures(self, trainer: Trainer, ex, out: Path) -> list[tuple[int, Image.Image]]:
        loader = trainer.predict_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
        dataset = loader.dataset
        tf = getattr(dataset, "transform", None)
        mean, std = getattr(tf, "mean", None), getattr(tf, "std", None)
        pictures = []
        cache: dict[int, np.ndarray] = {}
        for i, u in enumerate(ex.units.tolist()[: self.num_pictures]):
            js = [j for j in range(ex.top_index.shape[1]) if bool(ex.valid[i, j])][: self.images_per_picture]
            if not js:
                continue
            imgs = []
            for j in js:
                idx = int(ex.top_index[i, j])
                if idx not in cache:
                    cache[idx] = _to_rgb(dataset[idx]["image"], mean, std)
                imgs.append(cache[idx])
            words = [ex.vocabulary[int(w)] for w in ex.ranked.words[i, : self.words_in_title] if int(w) >= 0]
            pic = attention_picture(imgs, [ex.maps[i, j] for j in js], f"filter {u}: {', '.join(words)}")
            buf = io.BytesIO()
            pic.save(buf, format="PNG")
            atomic_write(out / "filters" / f"filter_{u:04d}.png", lambda f, b=buf.getvalue(): f.write(b))
            pictures.append((u, pic))
        return pictures

    @staticmethod
    def _tensorboard(trainer: Trainer, rows: list[dict[str, Any]], pictures: list[tuple[int, Image.Image]]) -> None:
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            lines = ["| filter | rank | word | score | seen |", "|---|---|---|---|---|"]
            lines += [f"| {r['filter']} | {r['rank']} | {r['word']} | {r['score']:.3f} | {r['seen']} |"
                      for r in rows[:500]]
            logger.experiment.add_text("lavise/filters", "\n".join(lines), 0)
            for u, pic in pictures:
                arr = np.asarray(pic.convert("RGB"))
                logger.experiment.add_image(f"lavise/filter_{u:04d}", arr, 0, dataformats="HWC")
