// simseg serve page: sends the form to POST /segment and shows the overlay, legend and scores, or the error.
"use strict";

const $ = (id) => document.getElementById(id);
let limits = null;

// bytes in MB with 6 significant digits, as the server's messages write them: a limit of 1.2 MB is held as whole
// bytes, so the plain quotient would show 1.1999998092651367
const megabytes = (bytes) => Number((bytes / 1048576).toPrecision(6));

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  // an earlier request's result must not stay beside the error, where it would pass for this request's answer
  $("result").hidden = true;
  $("placeholder").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function swatch(rgb) {
  const s = document.createElement("span");
  s.className = "swatch";
  s.style.background = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
  return s;
}

async function loadConfig() {
  try {
    const response = await fetch("/config");
    const config = await response.json();
    limits = config.limits;
    if (config.title) $("model-title").textContent = `Model: ${config.title}.`;
    crfAvailable = config.crf_available;
    if (!crfAvailable) {
      $("crf").checked = false;
      $("crf").disabled = true;
      $("crf").parentElement.title = "the dense CRF needs pydensecrf2: pip install 'simseg[crf]'";
    }
    if (config.default_classes && !$("classes").value) $("classes").value = config.default_classes;
    if (config.default_protocol) {
      $("protocol").value = config.default_protocol;  // the checkpoint's recorded protocol (e.g. dense for the demo)
      $("crf").disabled = !crfAvailable || $("protocol").value !== "simseg";
    }
    if (config.examples.length) {
      config.examples.forEach((name, i) => {
        const option = document.createElement("option");
        option.value = String(i);
        option.textContent = name;
        $("example").appendChild(option);
      });
      $("examples-row").hidden = false;
    }
    $("limits-hint").textContent =
      `Limits: ${megabytes(limits.max_upload_bytes)} MB, ${(limits.max_pixels / 1e6).toFixed(1)} megapixels, ` +
      `${limits.max_classes} classes, ${limits.timeout_s} s per request.`;
  } catch (e) {
    showError(`cannot reach the server: ${e}`);
  }
}

function render(result, previewUrl) {
  $("input-preview").src = previewUrl;
  $("overlay").src = "data:image/png;base64," + result.overlay_png_base64;
  $("labels-link").href = "data:image/png;base64," + result.labels_png_base64;

  const found = new Set(result.found.map((f) => f.name));
  const legend = $("legend");
  legend.replaceChildren();
  if (!result.found.length) {
    const li = document.createElement("li");
    li.textContent = "nothing found: the whole image is background";
    legend.appendChild(li);
  }
  result.found.forEach((f) => {
    const li = document.createElement("li");
    li.appendChild(swatch(result.colors[result.class_names.indexOf(f.name)]));
    li.appendChild(document.createTextNode(`${f.name} (${f.score.toFixed(3)})`));
    legend.appendChild(li);
  });

  const rows = result.class_names.map((name, i) => ({ name, i, score: result.scores[i] }));
  rows.sort((a, b) => b.score - a.score);
  const body = $("scores").querySelector("tbody");
  body.replaceChildren();
  rows.forEach((row) => {
    const tr = document.createElement("tr");
    if (found.has(row.name)) tr.className = "found";
    const name = document.createElement("td");
    name.appendChild(swatch(result.colors[row.i]));
    name.appendChild(document.createTextNode(row.name));
    const score = document.createElement("td");
    score.className = "num";
    score.textContent = row.score.toFixed(4);
    const present = document.createElement("td");
    present.textContent = found.has(row.name) ? "yes" : "";
    tr.append(name, score, present);
    body.appendChild(tr);
  });
  const p = result.protocol;
  $("protocol-info").textContent =
    `${result.width} x ${result.height} px; protocol ${p.name}, CRF ${p.crf ? "on" : "off"}, ` +
    `templates ${p.templates}; ${result.seconds} s.`;
  $("placeholder").hidden = true;
  $("result").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  clearError();
  const file = $("image").files[0];
  const example = $("example").value;
  if (!file && example === "") {
    showError("image: choose an image to upload or pick a built-in example");
    return;
  }
  if (file && limits && file.size > limits.max_upload_bytes) {
    // refused here: a browser may report a connection reset instead of the server's 413 for a big upload
    showError(`upload too large: ${(file.size / 1048576).toFixed(1)} MB exceeds the limit of ` +
              `${megabytes(limits.max_upload_bytes)} MB`);
    return;
  }
  const form = new FormData();
  if (file) form.append("image", file);
  else form.append("example", example);
  form.append("classes", $("classes").value);
  form.append("protocol", $("protocol").value);
  form.append("crf", $("crf").checked ? "true" : "false");
  form.append("templates", $("templates").value);
  const previewUrl = file ? URL.createObjectURL(file) : `/examples/${example}.png`;

  $("submit").disabled = true;
  $("status").textContent = "segmenting...";
  try {
    const response = await fetch("/segment", { method: "POST", body: form });
    let payload;
    try {
      payload = await response.json();
    } catch (e) {
      payload = { error: `HTTP ${response.status} ${response.statusText}` };
    }
    if (!response.ok) {
      showError(`error (HTTP ${response.status}): ${payload.error || JSON.stringify(payload)}`);
      return;
    }
    render(payload, previewUrl);
  } catch (e) {
    showError(`the request failed: ${e}`);
  } finally {
    $("submit").disabled = false;
    $("status").textContent = "";
  }
}

let crfAvailable = true;
$("protocol").addEventListener("change", () => {
  $("crf").disabled = !crfAvailable || $("protocol").value !== "simseg";
});
$("example").addEventListener("change", () => {
  if ($("example").value !== "") $("image").value = "";
});
$("image").addEventListener("change", () => {
  if ($("image").files.length) $("example").value = "";
});
$("segment-form").addEventListener("submit", submit);
loadConfig();
