"""Every state of a result store validates against the official OME-NGFF 0.5 JSON schemas, strict variants included.

The schemas are the ones the NGFF specification publishes; they are read from the files that the PyPI package
ngff-zarr ships (ngff_zarr/spec/0.5/schemas/*.schema). tox installs it with --no-deps for this test only (only
its schema files are used; the package is never imported).
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")

from napari_sam2.io.ome_zarr import LabelStore
from napari_sam2.io.results import save_result

BASE = "https://ngff.openmicroscopy.org/0.5/schemas/"


def _schema_dir() -> Path | None:
    spec = importlib.util.find_spec("ngff_zarr")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "spec" / "0.5" / "schemas"
    return folder if (folder / "strict_label.schema").is_file() else None


@pytest.fixture(scope="module")
def validate():
    """validate(attributes, "strict_image") raises jsonschema.ValidationError when `attributes` break the schema."""
    folder = _schema_dir()
    if folder is None:
        pytest.skip("the NGFF 0.5 schemas come from `pip install --no-deps ngff-zarr` (tox installs it)")
    schemas = {p.name: json.loads(p.read_text()) for p in folder.glob("*.schema")}
    assert {"image.schema", "label.schema", "strict_image.schema", "strict_label.schema"} <= set(schemas)
    registry = referencing.Registry().with_resources(
        (s["$id"], referencing.Resource.from_contents(s, default_specification=referencing.jsonschema.DRAFT202012))
        for s in schemas.values()
    )

    def check(attributes: dict, name: str) -> None:
        schema = schemas[f"{name}.schema"]
        jsonschema.Draft202012Validator(schema, registry=registry).validate(attributes)

    return check


def _attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]


def _check_store(validate, path: Path, with_image: bool) -> None:
    labels = path / "labels" / "sam2"
    for name in ("image", "strict_image", "label", "strict_label"):
        validate(_attrs(labels), name)  # the label image is a multiscale image and a label image
    if with_image:
        validate(_attrs(path), "image")
        validate(_attrs(path), "strict_image")
    assert _attrs(path / "labels")["ome"] == {"version": "0.5", "labels": ["sam2"]}


@pytest.mark.parametrize("with_image", [True, False])
def test_every_state_of_a_store_is_schema_valid(tmp_path, validate, with_image):
    shape = (3, 16, 24)
    image = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape) if with_image else None
    path = tmp_path / "run.ome.zarr"
    store = LabelStore.create(path, shape, image=image, scale=[30.0, 0.5, 0.5],
                              units={"t": "second", "y": "micrometer", "x": "micrometer"})  # fmt: skip
    _check_store(validate, path, with_image)  # empty: no frame written, no object yet
    frame = np.zeros(shape[1:], np.uint32)
    frame[2:6, 3:9] = 4
    store.write_frame(0, frame)
    _check_store(validate, path, with_image)  # partly written
    store.write_frame(1, np.zeros(shape[1:], np.uint32))
    store.write_frame(2, frame)
    _check_store(validate, path, with_image)  # complete

    # A result with no object at all (an empty napari Labels layer saved) is valid too.
    save_result(tmp_path / "empty.ome.zarr", np.zeros(shape, np.uint32))
    _check_store(validate, tmp_path / "empty.ome.zarr", False)


def test_the_schemas_do_reject_what_they_should(tmp_path, validate):
    path = tmp_path / "run.ome.zarr"
    LabelStore.create(path, (2, 8, 8), image=np.zeros((2, 8, 8), np.uint8))
    attrs = _attrs(path / "labels" / "sam2")
    broken = json.loads(json.dumps(attrs))
    broken["ome"]["image-label"]["colors"] = []  # what stores before this check held
    with pytest.raises(jsonschema.ValidationError):
        validate(broken, "label")
    strict = json.loads(json.dumps(attrs))
    del strict["ome"]["multiscales"][0]["type"]
    validate(strict, "image")
    with pytest.raises(jsonschema.ValidationError):
        validate(strict, "strict_image")
    assert zarr.open_group(path, mode="r")  # the store itself is untouched
