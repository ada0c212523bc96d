"""3D volumes: reading and writing NIfTI and TIFF stacks, nnU-Net's raw layout, a generated dataset.

The room of the 3D path (issue 26), apart from the 2D readers of :mod:`datamodules.io`:

* io.py: :func:`read_volume` / :func:`read_volume_header` / :func:`write_volume`: arrays ``[D, H, W]``
  = ``(z, y, x)`` with their spacing ``(z, y, x)``, affine and header (NIfTI by nibabel, 3D TIFF
  by tifffile with nnU-Net's spacing sidecar JSON);
* nnunet.py: :func:`read_dataset_json`, :func:`find_cases`, :func:`check_case`, :func:`check_labels`:
  nnU-Net v2's ``dataset.json`` + ``imagesTr/`` + ``labelsTr/`` (+ ``imagesTs/``) with nnU-Net's rules;
* synthetic.py: :func:`write_nnunet_dataset`, a small generated dataset in that layout;
* normalization.py: :func:`normalize_volume`, the per-channel normalisation (the fingerprint's specs);
* datamodule.py: :class:`VolumeDataModule` (``data=nnunet``): patches by sampler.py (class-centred
  oversampling, padding), planning.py (the patch size), augment.py (MONAI transforms), dataset.py.

Nothing here imports Lightning, Hydra or segtrain; nibabel and tifffile are imported when a file
is read. The volume fingerprint is :mod:`fingerprint.volumes`.
"""

from .io import Volume, VolumeHeader, VolumeReadError, read_volume, read_volume_header, write_volume
from .nnunet import Case, DatasetInfo, check_case, check_labels, find_cases, read_dataset_json
from .synthetic import write_nnunet_dataset
from .normalization import normalize_volume
from .datamodule import VolumeDataModule

__all__ = [
    "Case", "DatasetInfo", "Volume", "VolumeHeader", "VolumeReadError", "check_case", "check_labels", "find_cases",
    "read_dataset_json", "read_volume", "read_volume_header", "write_nnunet_dataset", "write_volume",
    "normalize_volume", "VolumeDataModule",
]
