// The portrait effects on a canvas: the model's low-resolution probability mask is
// scaled up to the frame (the canvas's bilinear smoothing, so edges stay soft) and used
// as the foreground's alpha:
//   overlay  the frame with the person tinted
//   blur     the person sharp over a blurred copy of the frame (canvas filter blur)
//   replace  the person over a plain colour
// The mask's values are probabilities (the bundle's postprocessing.value), used as they
// are: alpha = p, no threshold, so uncertain pixels blend.

const TINT = "rgba(47, 111, 222, 0.55)";

/** A canvas holding `mask` (H*W probabilities) as alpha. */
export function maskCanvas(mask, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  for (let i = 0; i < width * height; i += 1) {
    image.data[4 * i + 3] = Math.round(255 * Math.min(1, Math.max(0, mask[i])));
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

/** Draws `source` with `effect` into `out` (sized to `width` x `height`). */
export function compose(out, source, mask, maskWidth, maskHeight, { effect = "blur", width, height, colour = "#2e7d32" }) {
  out.width = width;
  out.height = height;
  const context = out.getContext("2d");
  const alpha = maskCanvas(mask, maskWidth, maskHeight);
  const person = new OffscreenCanvas(width, height);
  const pc = person.getContext("2d");
  pc.drawImage(source, 0, 0, width, height);
  pc.globalCompositeOperation = "destination-in";
  pc.imageSmoothingEnabled = true;
  pc.drawImage(alpha, 0, 0, width, height);
  context.save();
  context.clearRect(0, 0, width, height);
  if (effect === "overlay") {
    context.drawImage(source, 0, 0, width, height);
    const tint = new OffscreenCanvas(width, height);
    const tc = tint.getContext("2d");
    tc.fillStyle = TINT;
    tc.fillRect(0, 0, width, height);
    tc.globalCompositeOperation = "destination-in";
    tc.drawImage(alpha, 0, 0, width, height);
    context.drawImage(tint, 0, 0);
  } else {
    if (effect === "replace") {
      context.fillStyle = colour;
      context.fillRect(0, 0, width, height);
    } else {
      context.filter = `blur(${Math.max(2, Math.round(width / 60))}px)`;
      context.drawImage(source, 0, 0, width, height);
      context.filter = "none";
    }
    context.drawImage(person, 0, 0);
  }
  context.restore();
}

/** A canvas showing raw float pixels (NCHW or NHWC, 0..255, 1 or 3 channels). */
export function pixelsToCanvas(pixels, { width, height, channels, layout }) {
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  const plane = width * height;
  for (let i = 0; i < plane; i += 1) {
    for (let c = 0; c < 3; c += 1) {
      const k = Math.min(c, channels - 1);
      const v = layout === "NCHW" ? pixels[k * plane + i] : pixels[i * channels + k];
      image.data[4 * i + c] = Math.max(0, Math.min(255, Math.round(v)));
    }
    image.data[4 * i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
  return canvas;
}
