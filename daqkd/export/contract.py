"""What a receiver of an exported ONNX file needs to use it without daqkd: the input ``image`` and the
output ``logits`` by name, and in the model's metadata (``metadata_props``, keys ``daqkd.*``) the
input's layout and size, the normalisation to apply, the class names in label order, the bit widths,
the quantizer, and the daqkd version and commit that wrote it. README "Using an exported model"
applies it in ten lines."""
from __future__ import annotations

import json
from pathlib import Path

INPUT_DOC = ("image: float32 [batch, channels, height, width] (NCHW); the uint8 pixels scaled to [0, 1] (times the float32 "
             "1/255), then normalised per channel: (x - mean) / std with daqkd.mean and daqkd.std")
OUTPUT_DOC = "logits: float32 [batch, classes]; the argmax is the predicted class, an index into daqkd.classes"


def metadata(*, dataset: str, model: str, quantizer: str, bits_w: int, bits_a: int, mean, std, in_channels: int, image_size: int,
             classes: list[str], form: str) -> dict[str, str]:
    """The ``daqkd.*`` metadata of an exported file, every value a string (JSON for lists)."""
    from daqkd import __version__
    from daqkd.provenance import git_commit

    return {
        "daqkd.version": __version__, "daqkd.commit": git_commit() or "unknown", "daqkd.form": form,
        "daqkd.dataset": dataset, "daqkd.model": model, "daqkd.quantizer": quantizer, "daqkd.bits_w": str(bits_w),
        "daqkd.bits_a": str(bits_a), "daqkd.layout": "NCHW", "daqkd.in_channels": str(in_channels), "daqkd.image_size": str(image_size),
        "daqkd.mean": json.dumps([float(v) for v in mean]), "daqkd.std": json.dumps([float(v) for v in std]),
        "daqkd.classes": json.dumps(list(classes)), "daqkd.input": INPUT_DOC, "daqkd.output": OUTPUT_DOC,
    }


def stamp(path: str | Path, props: dict[str, str]) -> None:
    """Write ``props`` into the ONNX file's metadata (replacing earlier ``daqkd.*`` entries) and its
    doc string, atomically; the graph is left as it is."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if not p.key.startswith("daqkd.")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in kept}, **props})
    model.doc_string = (f"daqkd {props.get('daqkd.form', '')} export of a {props.get('daqkd.model')} "
                        f"W{props.get('daqkd.bits_w')}A{props.get('daqkd.bits_a')} {props.get('daqkd.quantizer')} student on "
                        f"{props.get('daqkd.dataset')}. Input: {INPUT_DOC}. Output: {OUTPUT_DOC}.")
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if names != (["image"], ["logits"]):
        raise RuntimeError(f"{path}: expected the input 'image' and the output 'logits', found {names}")
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def read(path: str | Path) -> dict:
    """The ``daqkd.*`` metadata of an exported file, lists decoded (what a receiver reads)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props if p.key.startswith("daqkd.")}
    for key in ("daqkd.mean", "daqkd.std", "daqkd.classes"):
        if key in props:
            props[key] = json.loads(props[key])
    return props
