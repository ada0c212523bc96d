"""LightningDataModules for segmentation: synthetic shapes and a folder of images + masks.

See docs/ARCHITECTURE.md ("Datamodules") for the batch contract.
"""

from .base import SegmentationDataModule, SegmentationDataset
from .folder import FolderDataModule
from .synthetic import SyntheticDataModule
from .transforms import build_transforms

__all__ = ["FolderDataModule", "SegmentationDataModule", "SegmentationDataset", "SyntheticDataModule", "build_transforms"]
