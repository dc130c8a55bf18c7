"""Making an exported file smaller, faster or ready for a device runtime, with onnxruntime's own tools doing the
work: the ORT format for onnxruntime Mobile (``ort_format``)."""
