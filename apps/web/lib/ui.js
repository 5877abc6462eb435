// Small page helpers: a visible error banner (a failed load never leaves a blank page)
// and number formatting.

export function showError(message) {
  let banner = document.getElementById("error");
  if (!banner) {
    banner = document.createElement("div");
    banner.id = "error";
    banner.setAttribute("role", "alert");
    document.body.prepend(banner);
  }
  banner.className = "error";
  banner.textContent = message;
  banner.hidden = false;
}

export function clearError() {
  const banner = document.getElementById("error");
  if (banner) banner.hidden = true;
}

/** Reports any error that escapes a page's code in the banner. */
export function catchUnhandled() {
  addEventListener("error", (event) => showError(event.message));
  addEventListener("unhandledrejection", (event) => showError(String(event.reason?.message ?? event.reason)));
}

export function fmt(value, digits = 1) {
  return value === null || value === undefined || Number.isNaN(value) ? "-" : Number(value).toFixed(digits);
}

export function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}
