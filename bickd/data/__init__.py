"""Data sets by name (`load_dataset`) and the batches the training loop consumes (`make_batches`)."""
from bickd.data import cifar, digits, imagenet, lowshot, shapes  # noqa: F401  (register the data sets)
from bickd.data.augment import augment_batch, normalize
from bickd.data.batches import make_batches
from bickd.data.registry import DATASETS, dataset_options, load_data, load_dataset, register_dataset
from bickd.data.types import AugmentSpec, DataError, FolderData, ImageData

__all__ = ["DATASETS", "AugmentSpec", "DataError", "FolderData", "ImageData", "augment_batch", "cifar",
           "dataset_options", "load_data", "load_dataset", "make_batches", "normalize", "register_dataset"]
