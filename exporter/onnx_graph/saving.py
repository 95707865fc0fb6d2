"""Writing an ONNX graph, inline or with external data, and checking the written file."""

from __future__ import annotations

from pathlib import Path

import onnx

from ..errors import ExportError

# Graphs above this size go to external data: protobuf cannot hold more than 2 GiB.
EXTERNAL_DATA_THRESHOLD = 1 << 30


def save_onnx(
    model: onnx.ModelProto, path: Path, *, external_data: bool | None = None
) -> list[str]:
    """Write ``model`` to ``path`` (and ``<name>.data`` for large models); return the file names.

    ``external_data=None`` decides by size. The graph is checked with ``full_check=True`` (which
    includes strict shape inference) from the written file, which works at any size.
    """
    if external_data is None:
        external_data = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    names = [path.name]
    if external_data:
        data_name = path.name + ".data"
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        names.append(data_name)
    else:
        onnx.save_model(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(
            f"the exported graph fails onnx's checker: {str(error).splitlines()[0]}"
        ) from None
    return names
