"""Rotating MIPs and the canonical orientation: a hot voxel lands where geometry says, at
every angle; a volume stored RAS and the same volume stored LPS give the same MIP."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from petscan.ingest.mip import display, isotropic, mip, width, write_png
from petscan.ingest.nifti import canonical, read_nifti

ANGLES = [0, 30, 45, 90, 135, 180, 210, 270, 315]


def expected_pixel(shape, voxel, angle):
    """Independent geometry: the column is the voxel's offset from the pivot voxel (on the
    middle column) along the image's horizontal direction (the patient's left at 0 deg,
    the viewer turning to the patient's right)."""
    nx, ny, nz = shape
    w = 2 * math.ceil(math.hypot(nx, ny) / 2) + 1
    theta = math.radians(angle)
    dx, dy = voxel[0] - (nx - 1) // 2, voxel[1] - (ny - 1) // 2
    column = w // 2 + (-math.cos(theta) * dx + math.sin(theta) * dy)
    return nz - 1 - voxel[2], round(column)


@pytest.mark.parametrize("angle", ANGLES)
def test_a_hot_voxel_lands_on_its_pixel_at_every_angle(angle):
    shape, voxel = (21, 17, 15), (4, 12, 11)  # right-ish, anterior, high
    volume = np.zeros(shape, np.float32)
    volume[voxel] = 10.0
    image = mip(volume, angle)
    assert image.shape == (15, width(shape))  # the same size at every angle
    assert np.unravel_index(np.argmax(image), image.shape) == expected_pixel(shape, voxel, angle)


def test_anterior_view_puts_the_patients_right_on_the_left_and_the_head_on_top():
    volume = np.zeros((9, 9, 9), np.float32)
    volume[8, 4, 8] = 1.0  # far right, top
    row, col = np.unravel_index(np.argmax(mip(volume, 0)), (9, width(volume.shape)))
    assert row == 0 and col < width(volume.shape) / 2


def test_isotropic_resampling_is_linear():
    volume = np.zeros((3, 2, 2), np.float32)
    volume[1] = 4.0
    out = isotropic(volume, (2.0, 1.0, 1.0), 1.0)
    assert out.shape == (5, 2, 2)
    np.testing.assert_allclose(out[:, 0, 0], [0, 2, 4, 2, 0])


def test_display_window_and_inversion():
    mip_suv = np.array([[0.0, 5.0, 10.0, 20.0, -1.0]])
    np.testing.assert_array_equal(display(mip_suv, (0, 10), False)[0], [0, 32768, 65535, 65535, 0])
    np.testing.assert_array_equal(display(mip_suv, (0, 10), True)[0], [65535, 32767, 0, 0, 65535])


def test_png_is_16_bit_grey_without_text(tmp_path):
    write_png(tmp_path / "a.png", np.array([[0, 1000], [65535, 7]], np.uint16))
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode.startswith("I;16") and not img.text
        np.testing.assert_array_equal(np.asarray(img), [[0, 1000], [65535, 7]])
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_ras_and_lps_copies_give_the_same_mip(tmp_path):
    rng = np.random.default_rng(5)
    ras = rng.uniform(0, 8, (10, 8, 12)).astype(np.float32)
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [-10, -12, 5]
    nib.save(nib.Nifti1Image(ras, affine), tmp_path / "ras.nii.gz")
    lps_affine = np.diag([-2.0, -3.0, 4.0, 1.0])  # the same voxels stored flipped in x and y
    lps_affine[:3, 3] = [-10 + 2.0 * 9, -12 + 3.0 * 7, 5]
    nib.save(nib.Nifti1Image(ras[::-1, ::-1].copy(), lps_affine), tmp_path / "lps.nii")
    images = []
    for name in ("ras.nii.gz", "lps.nii"):
        data, spacing = canonical(*read_nifti(tmp_path / name, name))
        assert spacing == (2.0, 3.0, 4.0)
        images.append(mip(isotropic(data, spacing, 2.0), 45))
    np.testing.assert_array_equal(images[0], images[1])
    assert images[0].std() > 0


@pytest.mark.parametrize("angle", [0, 37, 90, 200])
def test_mip_matches_scipy_rotation_then_maximum(angle):
    """Reference: SciPy's 3-D linear affine_transform of the whole volume (zero outside,
    interpolated towards it: grid-constant), then the maximum along the line of sight."""
    from scipy import ndimage

    from petscan.ingest.mip import pivot, view_axes

    rng = np.random.default_rng(angle)
    volume = rng.uniform(0, 5, (13, 10, 6)).astype(np.float32)
    w = width(volume.shape)
    across, sight = view_axes(angle)
    matrix = np.array([[across[0], sight[0], 0], [across[1], sight[1], 0], [0, 0, 1]])
    offset = np.array([*pivot(volume.shape), 0]) - matrix @ np.array([w // 2, w // 2, 0])
    rotated = ndimage.affine_transform(
        volume,
        matrix,
        offset=offset,
        output_shape=(w, w, 6),
        order=1,
        mode="grid-constant",
        cval=0.0,
    )
    np.testing.assert_allclose(mip(volume, angle, chunk=4), rotated.max(axis=1).T[::-1], atol=1e-5)


def test_an_oblique_nifti_is_refused(tmp_path):
    from petscan.ingest.nifti import NiftiError

    turn = math.radians(10)
    affine = np.eye(4)
    affine[:2, :2] = [[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]]
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), affine), tmp_path / "o.nii")
    with pytest.raises(NiftiError, match="study o: o.nii is stored oblique"):
        read_nifti(tmp_path / "o.nii", "o")
