"""Plain helpers of the task tests (conftest.py turns some into fixtures): TSV splits, tasks over them, a tiny
model. Imported by name: pytest puts this folder on sys.path for its test modules."""
import torch

from unival.models.unival import UnivalConfig, UnivalModel, architecture_defaults


def write_split(folder, split, rows, prefix):
    """Writes ``<prefix>_<split>.tsv`` (tab-separated ``rows``) into ``folder``; returns its path."""
    path = folder / f"{prefix}_{split}.tsv"
    path.write_text("".join("\t".join(row) + "\n" for row in rows))
    return path


def setup_task(task_class, config_class, folder, prefix, **overrides):
    """A task reading ``<prefix>_*.tsv`` in ``folder`` at 32 px, seeded, with train/valid splits."""
    values = dict(data=str(folder), tsv_prefix=prefix, patch_image_size=32, train_subset="train",
                  valid_subset="valid", seed=1)
    values.update(overrides)
    return task_class.setup_task(config_class(**values))


def first_rows_batch(task, split, size):
    """A collated batch of the first ``size`` rows of ``split`` (loaded here)."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    return dataset.collater([dataset[index] for index in range(size)])


def build_tiny_model(dictionary, **overrides) -> UnivalModel:
    """A seeded unival model of width 32 (ResNet stage 1 only: 32 px images give 8x8 patches)."""
    values = architecture_defaults("unival_tiny")
    values.update(encoder_embed_dim=32, decoder_embed_dim=32, encoder_ffn_embed_dim=64, decoder_ffn_embed_dim=64,
                  encoder_attention_heads=2, decoder_attention_heads=2, dropout=0.0, encoder_drop_path_rate=0.0,
                  decoder_drop_path_rate=0.0, image_bucket_size=8, image_encoder_stages=1)
    values.update(overrides)
    torch.manual_seed(0)
    return UnivalModel.from_config(UnivalConfig(**values), dictionary).eval()
