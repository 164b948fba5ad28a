import numpy as np
import pytest
import xarray as xr

import ucsciml as uq
from ucsciml.data import DataError


def _sensors(**overrides):
    kwargs = dict(x=np.array([0.1, 0.2, 0.3]), t=np.array([0.0, 0.5, 1.0]), u=np.ones(3))
    kwargs.update(overrides)
    return uq.data.sensors(**kwargs)


def test_sensors_builds_dataset_with_named_coords():
    ds = _sensors(noise_std=0.1)
    assert ds.sizes["sensor"] == 3
    assert uq.data.coordinate_names(ds) == ("x", "t")
    np.testing.assert_array_equal(uq.data.points(ds)[:, 1], [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(uq.data.noise_std(ds), [0.1, 0.1, 0.1])


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"u": np.array([1.0, np.nan, 2.0])}, "'u'"),
        ({"x": np.array([0.1, np.inf, 0.3])}, "'x'"),
        ({"t": np.array([0.0, 0.5])}, "'t'"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"noise_std": 0.0}, "noise_std"),
        ({"u": np.ones((3, 2))}, "'u'"),
    ],
)
def test_bad_sensor_fields_name_the_field(overrides, field):
    with pytest.raises(DataError, match=field):
        _sensors(**overrides)


def test_empty_and_coordinate_free_data_are_rejected():
    with pytest.raises(DataError, match="0 sensors"):
        uq.data.sensors(x=np.array([]), u=np.array([]))
    with pytest.raises(DataError, match="no coordinates"):
        uq.data.sensors(u=np.ones(2))
    ds = xr.Dataset({"u": ("sensor", np.ones(2))})
    with pytest.raises(DataError, match="coordinates"):
        uq.data.validate(ds)


@pytest.mark.parametrize("suffix", [".nc", ".csv"])
def test_save_load_round_trip(tmp_path, suffix):
    ds = _sensors(noise_std=np.array([0.1, 0.2, 0.3]))
    path = uq.data.save(ds, tmp_path / f"sensors{suffix}")
    back = uq.data.load(path)
    np.testing.assert_allclose(uq.data.points(back), uq.data.points(ds))
    np.testing.assert_allclose(uq.data.observations(back), uq.data.observations(ds))
    np.testing.assert_allclose(uq.data.noise_std(back), uq.data.noise_std(ds))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp file left behind"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        uq.data.load(tmp_path / "missing.nc")
    bad = tmp_path / "sensors.xlsx"
    bad.write_text("x")
    with pytest.raises(DataError, match="unknown sensor data file type"):
        uq.data.load(bad)
    csv = tmp_path / "no_u.csv"
    csv.write_text("x,t,v\n0,0,1\n")
    with pytest.raises(DataError, match="no 'u' column"):
        uq.data.load(csv)


def test_initial_boundary_placement_puts_sensors_on_faces():
    from ucsciml.data import synthetic_sensors

    pde = uq.pde.Burgers(lambda1=1.0, lambda2=0.01 / np.pi)
    ds = synthetic_sensors(pde, 400, 0.0, seed=1, placement="initial_boundary")
    x, t = ds.x.values, ds.t.values
    on_face = (t == 0.0) | (x == -1.0) | (x == 1.0)
    assert on_face.all() and not (t == 1.0).any()  # the final time is not a face
    # Faces are drawn by size: the initial slice (length 2) holds half the points on average.
    assert abs((t == 0.0).mean() - 0.5) < 0.1  # 4 binomial sd at n = 400
    np.testing.assert_allclose(ds.u.values[t == 0.0], -np.sin(np.pi * x[t == 0.0]), atol=1e-12)
    with pytest.raises(ValueError, match="placement"):
        synthetic_sensors(pde, 4, 0.0, seed=1, placement="edges")
