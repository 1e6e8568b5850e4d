/* The page: send each chosen image to `POST predict` and show its top labels, or its error in words. */
"use strict";

(function () {
  // Relative on purpose: resolved against the page, so it also works behind a proxy under a prefix.
  const PREDICT_URL = "predict";
  const MAX_IN_FLIGHT = 4;
  const CLIENT_TIMEOUT_MS = 120000;
  const KEY_STORAGE = "imageGateway.apiKey";

  // What each documented error code means for a person (errors.py lists the codes).
  const MESSAGES = {
    IMAGE_UNREADABLE: "This file could not be read as an image. It may be damaged, cut short, or not a picture at all.",
    UNSUPPORTED_FORMAT: "This image format is not accepted. Please use a JPEG, PNG, GIF, WebP, BMP or TIFF file.",
    IMAGE_TOO_LARGE: "This image has too many pixels for the server. Please try a smaller version of it.",
    PAYLOAD_TOO_LARGE: "This file is too big to upload. Please try a smaller or more compressed image.",
    EMPTY_IMAGE: "This file is empty, so there is nothing to recognise.",
    MISSING_IMAGE: "The server received no image. Please choose the file again.",
    INVALID_PARAMETER: "The request asked for something out of range. Please reload the page and try again.",
    INVALID_BASE64: "The image data was damaged on the way. Please try again.",
    INVALID_JSON: "The request was not understood by the server. Please reload the page and try again.",
    UNSUPPORTED_MEDIA_TYPE: "The request was sent in a form the server does not accept. Please reload the page and try again.",
    UNAUTHORIZED: "This server needs a valid API key. Enter it in the \u201cAPI key\u201d field above, then try again.",
    NOT_FOUND: "The recognition service was not found at this address.",
    METHOD_NOT_ALLOWED: "The recognition service refused this kind of request.",
    SERVER_BUSY: "The server is busy with other images right now. Please try again in a few seconds.",
    QUEUE_UNAVAILABLE: "The server cannot reach its work queue at the moment. Please try again shortly.",
    TIMEOUT: "The server took too long to answer. It may be overloaded; please try again.",
    INFERENCE_FAILED: "The model failed on this image. Please try another image, or this one again later.",
    INTERNAL_ERROR: "Something went wrong on the server. Please try again later.",
    // Produced by this page, not by the gateway:
    NETWORK_ERROR: "The server could not be reached. Check your connection and that the service is running, then try again.",
    CLIENT_TIMEOUT: "No answer came back in time. Please check your connection and try again.",
    BAD_GATEWAY: "The proxy in front of the service got no valid answer from it. Please try again shortly.",
    GATEWAY_TIMEOUT: "The proxy in front of the service gave up waiting for it. Please try again.",
    SERVICE_UNAVAILABLE: "The service is unavailable at the moment. Please try again shortly.",
    BAD_RESPONSE: "The server sent an answer this page does not understand.",
  };
  // Sending the same bytes again cannot help with these.
  const FINAL_CODES = new Set(["IMAGE_UNREADABLE", "UNSUPPORTED_FORMAT", "IMAGE_TOO_LARGE",
                               "PAYLOAD_TOO_LARGE", "EMPTY_IMAGE"]);
  // A non-JSON answer (say, from nginx) is named from its HTTP status.
  const CODE_BY_STATUS = {
    401: "UNAUTHORIZED", 403: "UNAUTHORIZED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE", 502: "BAD_GATEWAY", 503: "SERVICE_UNAVAILABLE", 504: "GATEWAY_TIMEOUT",
  };

  const $ = (id) => document.getElementById(id);
  const fileInput = $("file-input");
  const dropZone = $("drop-zone");
  const keyInput = $("api-key");
  const rememberBox = $("remember-key");
  const cardList = $("cards");
  const emptyNote = $("empty");
  const clearButton = $("clear");
  const announcer = $("announcer");

  // ------------------------------------------------------------------ small helpers
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function humanLabel(label) {
    return String(label).replace(/_/g, " ");
  }

  function percent(probability) {
    const value = Math.max(0, Math.min(1, Number(probability) || 0)) * 100;
    if (value > 0 && value < 0.1) return "<0.1%";
    return value.toFixed(1) + "%";
  }

  function announce(message) {
    const line = el("p", null, message);
    announcer.appendChild(line);
    while (announcer.childNodes.length > 5) announcer.removeChild(announcer.firstChild);
  }

  // ------------------------------------------------------------------ the API key field
  function storage() {
    try { return window.localStorage; } catch (e) { return null; }
  }

  function restoreKey() {
    const store = storage();
    const saved = store && store.getItem(KEY_STORAGE);
    if (saved) {
      keyInput.value = saved;
      rememberBox.checked = true;
    }
  }

  function saveKey() {
    const store = storage();
    if (!store) return;
    try {
      if (rememberBox.checked && keyInput.value) store.setItem(KEY_STORAGE, keyInput.value);
      else store.removeItem(KEY_STORAGE);
    } catch (e) { /* storage full or blocked: the key still works for this visit */ }
  }

  // ------------------------------------------------------------------ at most MAX_IN_FLIGHT requests at once
  const waiting = [];
  let inFlight = 0;

  function schedule(task) {
    waiting.push(task);
    pump();
  }

  function pump() {
    while (inFlight < MAX_IN_FLIGHT && waiting.length) {
      const task = waiting.shift();
      inFlight += 1;
      Promise.resolve().then(task).catch(() => {}).then(() => {
        inFlight -= 1;
        pump();
      });
    }
  }

  // ------------------------------------------------------------------ one card per image
  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    announce(files.length === 1 ? "Classifying 1 image." : "Classifying " + files.length + " images.");
    files.forEach((file) => {
      const card = makeCard(file);
      cardList.insertBefore(card.root, cardList.firstChild);
      queueCard(card);
    });
    emptyNote.hidden = true;
    clearButton.disabled = false;
    // On a phone the results sit below the form: bring the newest card into view.
    cardList.firstChild.scrollIntoView({ block: "nearest" });
  }

  function makeCard(file) {
    const root = el("li", "card");
    root.setAttribute("aria-busy", "true");
    const thumb = el("div", "thumb");
    let url = null;
    if (!file.type || file.type.indexOf("image/") === 0) {
      url = URL.createObjectURL(file);
      const img = el("img");
      img.alt = "";
      img.decoding = "async";
      img.addEventListener("error", () => {
        img.remove();
        noPreview(thumb);
      });
      img.src = url;
      thumb.appendChild(img);
    } else {
      noPreview(thumb);
    }
    const body = el("div", "card-body");
    const name = el("h3", "file-name", file.name || "image");
    name.tabIndex = -1;   // focus lands here when "Try again" removes its button
    const state = el("p", "state", "Waiting\u2026");
    const result = el("div", "result");
    body.append(name, state, result);
    root.append(thumb, body);
    const card = { file, root, name, state, result, url };
    root.imageCard = card;
    return card;
  }

  function noPreview(thumb) {
    thumb.classList.add("empty");
    thumb.appendChild(el("span", "no-preview", "No preview"));
  }

  function queueCard(card) {
    card.root.setAttribute("aria-busy", "true");
    card.root.classList.remove("failed", "done");
    card.result.replaceChildren();
    card.state.hidden = false;
    card.state.textContent = "Waiting\u2026";
    schedule(() => classify(card));
  }

  async function classify(card) {
    card.state.textContent = "Classifying\u2026";

    const form = new FormData();
    form.append("image", card.file, card.file.name || "image");
    const headers = {};
    const key = keyInput.value.trim();
    if (key) headers["X-API-Key"] = key;

    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), CLIENT_TIMEOUT_MS);
    const started = performance.now();
    let outcome;
    try {
      const response = await fetch(PREDICT_URL, {
        method: "POST", body: form, headers, signal: controller.signal, credentials: "same-origin",
      });
      outcome = await readResponse(response);
    } catch (err) {
      const code = err && err.name === "AbortError" ? "CLIENT_TIMEOUT" : "NETWORK_ERROR";
      outcome = { ok: false, code, status: 0, detail: err && err.message ? err.message : "" };
    } finally {
      clearTimeout(timer);
    }
    const elapsedMs = Math.round(performance.now() - started);
    if (outcome.ok) showPredictions(card, outcome.body, elapsedMs);
    else showError(card, outcome, elapsedMs);
  }

  async function readResponse(response) {
    const text = await response.text();
    let body = null;
    try { body = JSON.parse(text); } catch (e) { body = null; }
    const retryAfter = response.headers.get("Retry-After");
    if (response.ok && body && body.success === true && Array.isArray(body.predictions)) {
      return { ok: true, body };
    }
    if (body && body.error && typeof body.error === "object") {
      return { ok: false, code: String(body.error.code || "HTTP_" + response.status), status: response.status,
               detail: body.error.message ? String(body.error.message) : "", id: body.id, retryAfter };
    }
    const code = response.ok ? "BAD_RESPONSE" : (CODE_BY_STATUS[response.status] || "HTTP_" + response.status);
    return { ok: false, code, status: response.status, detail: "", retryAfter };
  }

  function showPredictions(card, body, elapsedMs) {
    const name = card.file.name || "image";
    const list = el("ol", "predictions");
    list.setAttribute("aria-label", "Top labels for " + name);
    body.predictions.forEach((prediction, index) => {
      const item = el("li", index === 0 ? "prediction top" : "prediction");
      const label = el("span", "label", humanLabel(prediction.label));
      if (prediction.class_id !== undefined) label.title = "class " + prediction.class_id;
      const value = el("span", "value", percent(prediction.probability));
      const bar = el("span", "bar");
      bar.setAttribute("aria-hidden", "true");
      const fill = el("span", "fill");
      fill.style.width = (Math.max(0, Math.min(1, Number(prediction.probability) || 0)) * 100) + "%";
      bar.appendChild(fill);
      item.append(label, value, bar);
      list.appendChild(item);
    });
    if (!body.predictions.length) list.appendChild(el("li", "prediction", "No labels returned."));
    const meta = el("p", "meta");
    meta.append(el("span", "elapsed", elapsedMs + " ms"));
    if (body.model) meta.append(document.createTextNode(" \u00b7 model "), el("span", "model", String(body.model)));
    card.result.append(list, meta);
    card.state.hidden = true;
    card.root.classList.add("done");
    card.root.setAttribute("aria-busy", "false");
    const top = body.predictions[0];
    announce(top ? name + ": " + humanLabel(top.label) + ", " + percent(top.probability) + "."
                 : name + ": no labels returned.");
  }

  function showError(card, outcome, elapsedMs) {
    const name = card.file.name || "image";
    const human = MESSAGES[outcome.code] || outcome.detail ||
                  "The request failed" + (outcome.status ? " (HTTP " + outcome.status + ")" : "") + ".";
    const box = el("div", "error");
    box.append(el("p", "error-title", "Could not classify this image"));
    box.append(el("p", "error-message", human));
    if (outcome.code === "SERVER_BUSY" && outcome.retryAfter) {
      box.append(el("p", "error-retry", "The server suggests waiting " + outcome.retryAfter + " s."));
    }
    const codeLine = el("p", "error-code");
    codeLine.append("Code: ", el("code", null, outcome.code));
    if (outcome.status) codeLine.append(" \u00b7 HTTP " + outcome.status);
    codeLine.append(" \u00b7 " + elapsedMs + " ms");
    box.append(codeLine);
    if (outcome.detail && outcome.detail !== human) {
      box.append(el("p", "error-detail", "Details: " + outcome.detail));
    }
    if (!FINAL_CODES.has(outcome.code)) {
      const retry = el("button", "secondary retry", "Try again");
      retry.type = "button";
      retry.setAttribute("aria-label", "Try " + name + " again");
      retry.addEventListener("click", () => {
        queueCard(card);
        card.name.focus();
      });
      box.append(retry);
    }
    card.result.append(box);
    card.state.hidden = true;
    card.root.classList.add("failed");
    card.root.setAttribute("aria-busy", "false");
    announce(name + ": could not be classified. " + human + " Code " + outcome.code + ".");
  }

  function clearCards() {
    Array.from(cardList.children).forEach((item) => {
      if (item.imageCard && item.imageCard.url) URL.revokeObjectURL(item.imageCard.url);
    });
    cardList.replaceChildren();
    emptyNote.hidden = false;
    clearButton.disabled = true;
    announce("Results cleared.");
    fileInput.focus();
  }

  // ------------------------------------------------------------------ wiring
  fileInput.addEventListener("change", () => {
    addFiles(fileInput.files);
    fileInput.value = "";   // choosing the same file again fires `change` again
  });

  dropZone.addEventListener("click", () => fileInput.click());
  dropZone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      fileInput.click();
    }
  });

  let dragDepth = 0;
  dropZone.addEventListener("dragenter", (event) => {
    event.preventDefault();
    dragDepth += 1;
    dropZone.classList.add("dragging");
  });
  dropZone.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) dropZone.classList.remove("dragging");
  });
  dropZone.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
  });
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    dropZone.classList.remove("dragging");
    event.stopPropagation();
    if (event.dataTransfer) addFiles(event.dataTransfer.files);
  });
  // A file dropped beside the zone is taken too, rather than the browser replacing the page with it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer) addFiles(event.dataTransfer.files);
  });

  keyInput.addEventListener("input", saveKey);
  rememberBox.addEventListener("change", saveKey);
  clearButton.addEventListener("click", clearCards);

  restoreKey();
})();
