"""napari sample-data contributions: synthetic nuclei with ground truth (seeded; see sample_data.py)."""

import numpy as np

from .sample_data import as_layer_data, nuclei_timelapse, nuclei_zstack, synthetic_nuclei_4d


def timelapse_sample():
    """2-D + t fluorescence time-lapse: moving, touching, dividing and vanishing nuclei (8-bit)."""
    return as_layer_data(nuclei_timelapse(), name="nuclei time-lapse")


def timelapse_16bit_sample():
    """The same time-lapse as a 12-bit camera writes it into uint16."""
    return as_layer_data(nuclei_timelapse(dtype=np.uint16), name="nuclei time-lapse (16-bit)")


def zstack_sample():
    """3-D nuclei z-stack with stronger axial blur and depth attenuation."""
    return as_layer_data(nuclei_zstack(), name="nuclei z-stack")


def timelapse_4d_sample():
    """3-D + t time-lapse (T, Z, Y, X): nuclei moving in 3-D, one diving through the slices, one dividing."""
    return as_layer_data(synthetic_nuclei_4d(), name="nuclei 3D+t")
