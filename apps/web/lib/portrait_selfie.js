// MediaPipe's selfie segmentation model (the .tflite file inside the npm package
// @mediapipe/selfie_segmentation) run with LiteRT.js on the same frames as the bundle, so
// the portrait page shows both models' ms/frame side by side. Only the model file is
// used, not MediaPipe's own graph runner: both models then go through one runtime.
//
// The file's tensors are read from LiteRT.js (getInputDetails / getOutputDetails) rather
// than assumed: the general model takes [1, 256, 256, 3] float32 RGB in 0..1 (NHWC) and
// gives a [1, 256, 256, 1] foreground probability.

import { BundleError, fetchBytes } from "./bundle.js";
import { createLiteRtModel, loadLiteRtJs } from "./litert_runtime.js";

export const SELFIE_URL = new URL(
  "../node_modules/@mediapipe/selfie_segmentation/selfie_segmentation.tflite", import.meta.url).href;

export class SelfieModel {
  constructor(model, height, width) {
    this.model = model;
    this.height = height;
    this.width = width;
  }

  static async create() {
    const litert = await loadLiteRtJs(1);
    const bytes = await fetchBytes(SELFIE_URL);
    const model = await createLiteRtModel(litert, bytes, { name: "selfie_segmentation.tflite" });
    const [input] = model.inputDetails;
    const shape = Array.from(input.shape);
    if (shape.length !== 4 || shape[0] !== 1 || shape[3] !== 3 || input.dtype !== "float32") {
      throw new BundleError(`selfie_segmentation.tflite takes ${input.dtype} ${shape.join("x")}, ` +
        "not the 1xHxWx3 float32 this page feeds: reinstall the pinned npm packages (make web)");
    }
    return new SelfieModel(model, shape[1], shape[2]);
  }

  /** NHWC float32 in 0..1 from RGBA ImageData at the model's size. */
  pixels(image) {
    const out = new Float32Array(this.height * this.width * 3);
    for (let i = 0, j = 0; i < out.length; i += 3, j += 4) {
      out[i] = image.data[j] / 255;
      out[i + 1] = image.data[j + 1] / 255;
      out[i + 2] = image.data[j + 2] / 255;
    }
    return out;
  }

  /** {mask: Float32Array (H*W), shape, ms} for NHWC 0..1 `pixels`. */
  async run(pixels) {
    const start = performance.now();
    const [out] = await this.model.run([{ data: pixels, shape: [1, this.height, this.width, 3] }]);
    return { mask: out.data, shape: out.shape, ms: performance.now() - start };
  }
}
