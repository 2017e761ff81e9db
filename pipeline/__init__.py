"""edgepipe's build side: typed config, dataset, the stages (finetune, export, quantize, verify,
report, bundle), the manifest and the stage keys. It needs torch, timm and onnx; a field unit
never imports it."""
