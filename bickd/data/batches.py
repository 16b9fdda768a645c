"""Batches for the training loop: in-memory tensors augmented on the device, or folder data via DataLoader.

Both yield train batches as (images float normalised on the device, labels, sample indices) and evaluation
batches (`val()`, `test()`) as (images, labels). Without a validation split `val()` is the test split. Shuffling is a seeded permutation per (seed, epoch); DDP rank r of w takes
every w-th sample of it, all ranks the same number of steps.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler

from bickd.data.augment import _splitmix64, augment_batch, normalize
from bickd.data.types import FolderData, ImageData


# Evaluation keeps no activations for a backward pass, so it takes this many training batches at once.
EVAL_BATCHES_AT_ONCE = 4


def memory_format(channels_last: bool) -> torch.memory_format:
    """NHWC (channels_last) or the default layout, for image batches and the models they meet."""
    return torch.channels_last if channels_last else torch.contiguous_format


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(_splitmix64(torch.tensor([seed * 65_537 + epoch]))[0]) & (2**62 - 1))
    return torch.randperm(num_samples, generator=generator)


class TensorBatches:
    def __init__(self, data: ImageData, batch_size: int, device: torch.device, seed: int, rank: int = 0,
                 world_size: int = 1, channels_last: bool = False, drop_last: bool = True,
                 view_seed: int | None = None, view_epochs: int | None = None):
        self.data, self.batch_size, self.device, self.seed = data, batch_size, torch.device(device), seed
        # Augmented views: by default a function of the run's seed and epoch; with a teacher-logit cache,
        # of the cache's seed and epoch mod its length, so every view has stored teacher logits.
        self.view_seed = seed if view_seed is None else view_seed
        self.view_epochs = view_epochs
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.memory_format = memory_format(channels_last)
        # Moved once: every per-batch operation below runs where the model runs.
        self.train_images = data.train_images.to(self.device)
        self.train_labels = data.train_labels.to(self.device)
        self.test_images = data.test_images.to(self.device)
        self.test_labels = data.test_labels.to(self.device)
        self.has_validation = data.val_images is not None
        self.val_images = data.val_images.to(self.device) if self.has_validation else self.test_images
        self.val_labels = data.val_labels.to(self.device) if self.has_validation else self.test_labels
        self.num_classes = data.num_classes
        per_rank = len(data.train_labels) // world_size
        if drop_last:
            self.steps_per_epoch = per_rank // batch_size
        else:
            self.steps_per_epoch = -(-per_rank // batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size {batch_size} x {world_size} worker(s) exceeds the "
                             f"{len(data.train_labels)} training images")

    def view_epoch(self, epoch: int) -> int:
        return epoch if self.view_epochs is None else epoch % self.view_epochs

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch`, in training order."""
        order = epoch_permutation(len(self.data.train_labels), self.seed, epoch)
        per_rank = len(order) // self.world_size
        return order[self.rank::self.world_size][:per_rank]

    def train(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self.shard(epoch).to(self.device)
        for step in range(self.steps_per_epoch):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            images = augment_batch(self.train_images[idx], idx, self.view_epoch(epoch), self.view_seed,
                                   self.data.augment, self.data.mean, self.data.std)
            yield images.contiguous(memory_format=self.memory_format), self.train_labels[idx], idx

    def _evaluation(self, images: torch.Tensor, labels: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = torch.arange(self.rank, len(labels), self.world_size, device=self.device)
        size = self.batch_size * EVAL_BATCHES_AT_ONCE
        for start in range(0, len(indices), size):
            idx = indices[start:start + size]
            batch = normalize(images[idx], self.data.mean, self.data.std)
            yield batch.contiguous(memory_format=self.memory_format), labels[idx]

    def val(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._evaluation(self.val_images, self.val_labels)

    def test(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._evaluation(self.test_images, self.test_labels)


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, label, index


class FolderBatches:
    """ImageNet-style data through a DataLoader with rank sharding (DistributedSampler)."""

    def __init__(self, data: FolderData, batch_size: int, device: torch.device, seed: int, rank: int = 0,
                 world_size: int = 1, channels_last: bool = False, drop_last: bool = True, num_workers: int = 4):
        self.device, self.num_classes = torch.device(device), data.num_classes
        self.memory_format = memory_format(channels_last)
        self.sampler = DistributedSampler(_Indexed(data.train), world_size, rank, shuffle=True, seed=seed,
                                          drop_last=True)
        pin = self.device.type == "cuda"
        self.train_loader = DataLoader(_Indexed(data.train), batch_size, sampler=self.sampler, drop_last=drop_last,
                                       num_workers=num_workers, pin_memory=pin, persistent_workers=num_workers > 0)
        def evaluation_loader(dataset):
            sampler = DistributedSampler(dataset, world_size, rank, shuffle=False, drop_last=False)
            return DataLoader(dataset, batch_size, sampler=sampler, num_workers=num_workers, pin_memory=pin)
        self.test_loader = evaluation_loader(data.test)
        self.has_validation = data.val is not None
        self.val_loader = evaluation_loader(data.val) if self.has_validation else self.test_loader
        self.steps_per_epoch = len(self.train_loader)

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def train(self, epoch: int):
        self.sampler.set_epoch(epoch)
        for images, labels, idx in self.train_loader:
            yield self._to_device(images), labels.to(self.device, non_blocking=True), idx

    def _evaluation(self, loader):
        # DistributedSampler pads the last shard by repeating samples; the few repeats are accepted here.
        for images, labels in loader:
            yield self._to_device(images), labels.to(self.device, non_blocking=True)

    def val(self):
        return self._evaluation(self.val_loader)

    def test(self):
        return self._evaluation(self.test_loader)


def make_batches(data: ImageData | FolderData, batch_size: int, device: torch.device | str, seed: int,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False, drop_last: bool = True,
                 num_workers: int = 4, view_seed: int | None = None,
                 view_epochs: int | None = None) -> TensorBatches | FolderBatches:
    if isinstance(data, ImageData):
        return TensorBatches(data, batch_size, torch.device(device), seed, rank, world_size, channels_last,
                             drop_last, view_seed, view_epochs)
    if view_epochs is not None:
        raise ValueError("a teacher-logit cache needs an in-memory data set (not folder data such as imagenet)")
    return FolderBatches(data, batch_size, torch.device(device), seed, rank, world_size, channels_last,
                         drop_last, num_workers)
