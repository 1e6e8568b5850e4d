/* The page: send each chosen image to `POST predict` (with the model picked from `GET v1/models`) or to
   `POST v1/pipelines/<name>/predict` (a pipeline from `GET v1/pipelines`) and show its top labels, its
   detections (as text, and as boxes drawn over the thumbnail), the texts an OCR pipeline read (listed,
   and their lines outlined and numbered over the thumbnail), or its error in words. A caller with
   recognition types (`GET v1/clients/me`, the CLIENTS file's routes) may pick one: `POST v1/recognize/<type>`. */
"use strict";

(function () {
  // Relative on purpose: resolved against the page, so it also works behind a proxy under a prefix.
  const PREDICT_URL = "predict";
  const MODELS_URL = "v1/models";
  const PIPELINES_URL = "v1/pipelines";
  const PIPELINE_VALUE = "pipeline:";      // picker values of pipelines, apart from model names
  const ME_URL = "v1/clients/me";
  const RECOGNIZE_URL = "v1/recognize/";
  const TYPE_VALUE = "type:";              // picker values of the caller's recognition types
  const SVG_NS = "http://www.w3.org/2000/svg";
  const BOX_LABEL_PX = 12;                 // box labels are this tall on screen, whatever the thumbnail's scale
  const MODELS_TIMEOUT_MS = 15000;
  const MODELS_LOADING_RETRY_MS = 5000;    // look again while a version is still loading
  const MODELS_FAILED_RETRY_MS = 30000;    // and now and then after the list could not be read
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
    MODEL_NOT_ALLOWED: "Your key may not use this model directly. Pick one of your recognition types instead.",
    TYPE_NOT_FOUND: "Your key has no such recognition type any more. The list has been refreshed: pick another one.",
    RATE_LIMITED: "Too many requests for your key right now. Please wait a moment, then try again.",
    MODEL_NOT_FOUND: "The chosen model is not served any more. The model list has been refreshed: pick another model, then try again.",
    MODEL_VERSION_NOT_FOUND: "The chosen version of this model is not served (it may have been removed). The model list has been refreshed: pick another version, then try again.",
    PIPELINE_NOT_FOUND: "The chosen pipeline is not served any more. The list has been refreshed: pick another model or pipeline, then try again.",
    PIPELINE_STEP_FAILED: "One step of the pipeline failed on this image. The details below name the step.",
    MODEL_UNAVAILABLE: "This model version could not be loaded, or no worker is running it right now. Pick another version, or try again later.",
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
  // The picker may be out of date when the server answers one of these: read the list again.
  const MODEL_CODES = new Set(["MODEL_NOT_FOUND", "MODEL_VERSION_NOT_FOUND", "MODEL_UNAVAILABLE",
                               "PIPELINE_NOT_FOUND", "TYPE_NOT_FOUND", "MODEL_NOT_ALLOWED"]);
  const STATE_WORDS = { READY: "ready", LOADING: "loading", UNAVAILABLE: "unavailable" };
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
  const modelSelect = $("model");
  const modelStatus = $("model-status");

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

  function apiHeaders() {
    const key = keyInput.value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  // ------------------------------------------------------------------ the model picker
  let modelsDrawn = null;     // the listing the picker shows (JSON), to redraw only when it changed
  let modelsTimer = null;

  let pipelinesKnown = [];    // the pipelines from the last good `v1/pipelines` answer
  let typesKnown = [];        // the caller's recognition types (`v1/clients/me` routes), and
  let typesOnly = false;      // whether it may use only them (no model named directly)

  async function loadModels() {
    clearTimeout(modelsTimer);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), MODELS_TIMEOUT_MS);
    let models, pipelines;
    try {
      [models, pipelines] = await Promise.all([readList(MODELS_URL, "models", controller.signal),
                                               readList(PIPELINES_URL, "pipelines", controller.signal),
                                               readTypes(controller.signal)]);
    } finally {
      clearTimeout(timer);
    }
    // A gateway without pipelines (or an older one: 404) still has its models listed.
    if (pipelines.list) pipelinesKnown = pipelines.list;
    if (!models.list) {
      showModelsFailed(models.problem);
      modelsTimer = setTimeout(loadModels, MODELS_FAILED_RETRY_MS);
      return;
    }
    const listing = models.list;
    drawModels(listing, pipelinesKnown);
    const loading = listing.some((model) => versionsOf(model).some((version) => version.state === "LOADING"));
    if (loading) modelsTimer = setTimeout(loadModels, MODELS_LOADING_RETRY_MS);
  }

  // `{list}` with the named entries of the answer's `key` array, or `{list: null, problem}` in words.
  async function readList(url, key, signal) {
    try {
      const response = await fetch(url, {
        headers: apiHeaders(), signal, credentials: "same-origin", cache: "no-store",
      });
      const body = await response.json().catch(() => null);
      if (response.ok && body && Array.isArray(body[key])) {
        return { list: body[key].filter((entry) => entry && typeof entry.name === "string") };
      }
      return { list: null, problem: response.ok ? "an answer this page does not understand" : "HTTP " + response.status };
    } catch (err) {
      return { list: null,
               problem: err && err.name === "AbortError" ? "no answer in time" : "the server could not be reached" };
    }
  }

  // The caller's types from `v1/clients/me` (none when it cannot be read: an older gateway).
  async function readTypes(signal) {
    try {
      const response = await fetch(ME_URL, { headers: apiHeaders(), signal, credentials: "same-origin", cache: "no-store" });
      const body = await response.json().catch(() => null);
      if (response.ok && body && body.routes && typeof body.routes === "object") {
        typesKnown = Object.keys(body.routes).sort();
        typesOnly = Array.isArray(body.models) && body.models.length === 0;
      }
    } catch (err) {
      // keep what was known
    }
  }

  function typesGroup() {
    if (!typesKnown.length) return null;
    const group = el("optgroup");
    group.label = "Your recognition types";
    group.append(...typesKnown.map((name) => {
      const option = el("option", null, name);
      option.value = TYPE_VALUE + name;
      option.dataset.type = name;
      return option;
    }));
    return group;
  }

  function versionsOf(model) {
    return Array.isArray(model.versions) ? model.versions : [];
  }

  function showModelsFailed(problem) {
    if (modelsDrawn !== null) return;      // keep the list from the last good answer
    const fallback = el("option", null, "Server default");
    fallback.value = "";
    const group = pipelinesGroup(pipelinesKnown, null);
    modelSelect.replaceChildren(fallback, ...(group ? [group] : []));
    modelSelect.value = "";
    modelStatus.textContent = "The list of models could not be loaded (" + problem +
                              "), so images go to the server\u2019s default model.";
  }

  function drawModels(listing, pipelines) {
    const drawn = JSON.stringify([listing, pipelines, typesKnown, typesOnly]);
    if (drawn === modelsDrawn) return;
    modelsDrawn = drawn;
    const previous = modelSelect.value;
    const groups = listing.map((model) => {
      const group = el("optgroup");
      group.label = model.name + (model.kind && model.kind !== "classifier" ? " (" + model.kind + ")" : "");
      group.append(newestOption(model), ...versionsOf(model).map((version) => versionOption(model, version)));
      return group;
    });
    if (!groups.length) {
      const fallback = el("option", null, "Server default");
      fallback.value = "";
      groups.push(fallback);
    }
    const pipelineGroup = pipelinesGroup(pipelines, listing);
    if (pipelineGroup) groups.push(pipelineGroup);
    const typeGroup = typesGroup();
    if (typeGroup) groups.unshift(typeGroup);
    modelSelect.replaceChildren(...groups);
    const usable = Array.from(modelSelect.options).filter((option) => !option.disabled);
    const keep = usable.find((option) => option.value === previous && previous !== "");
    const fallback = (typesOnly && usable.find((option) => option.dataset.type)) ||
                     usable.find((option) => option.dataset.isDefault) || usable[0];
    if (keep || fallback) modelSelect.value = (keep || fallback).value;
    modelStatus.textContent = !listing.length ? "The server lists no models; images go to its default model."
      : listing.length + (listing.length === 1 ? " model" : " models") +
        " served. Each image goes to the chosen model\u2019s newest version, unless you pick a version." +
        (pipelines.length ? " Pipelines run several models on each image." : "");
  }

  function newestOption(model) {
    const ready = versionsOf(model).find((version) => version.state === "READY");
    const text = model.name + " \u00b7 newest" + (ready ? " (v" + ready.version + ")" : " (none ready yet)") +
                 (model.default ? " (default)" : "");
    const option = el("option", null, text);
    option.value = model.name;
    option.dataset.model = model.name;
    if (model.default) option.dataset.isDefault = "true";
    return option;
  }

  function versionOption(model, version) {
    const state = String(version.state || "");
    const option = el("option", null, model.name + " \u00b7 v" + version.version +
                      (state === "READY" ? "" : " (" + (STATE_WORDS[state] || state.toLowerCase()) + ")"));
    option.value = model.name + "@" + version.version;
    option.dataset.model = model.name;
    option.dataset.version = String(version.version);
    option.disabled = state !== "READY";
    if (version.reason) option.title = String(version.reason);
    return option;
  }

  // The "Pipelines" group: one option per pipeline, disabled while a model it needs is not ready
  // (`listing` null: the models are not known, so none is checked).
  function pipelinesGroup(pipelines, listing) {
    if (!pipelines.length) return null;
    const group = el("optgroup");
    group.label = "Pipelines";
    group.className = "pipelines";
    group.append(...pipelines.map((pipeline) => pipelineOption(pipeline, listing)));
    return group;
  }

  function pipelineOption(pipeline, listing) {
    const steps = Array.isArray(pipeline.steps) ? pipeline.steps.filter((step) => step && typeof step === "object") : [];
    const needed = [];
    let anyClassifier = false;
    const parts = steps.map((step) => {
      if (typeof step.model === "string") {
        needed.push(step.model);
        return step.model;
      }
      if (Array.isArray(step.models)) {
        const names = step.models.map(String);
        needed.push(...names);
        return names.join(" + ");
      }
      if (step.models === "all_classifiers") {
        anyClassifier = true;
        return "every classifier";
      }
      return String(step.step || "step");
    });
    const missing = [];
    if (listing) {
      const ready = (model) => versionsOf(model).some((version) => version.state === "READY");
      const readyNames = new Set(listing.filter(ready).map((model) => model.name));
      needed.filter((name, index) => !readyNames.has(name) && needed.indexOf(name) === index)
        .forEach((name) => missing.push(name));
      if (anyClassifier && !listing.some((model) => ready(model) && (!model.kind || model.kind === "classifier"))) {
        missing.push("a classifier");
      }
    }
    const option = el("option", null, pipeline.name + (parts.length ? " \u00b7 " + parts.join(" \u2192 ") : "") +
                      (missing.length ? " (needs " + missing.join(", ") + ")" : ""));
    option.value = PIPELINE_VALUE + pipeline.name;
    option.dataset.pipeline = pipeline.name;
    option.disabled = missing.length > 0;
    const description = pipeline.description ? String(pipeline.description) : "";
    const reason = missing.length ? "Not available: " + missing.join(", ") + " not served or not ready." : "";
    if (description || reason) option.title = [description, reason].filter(Boolean).join(" ");
    return option;
  }

  // What the picker names now: a pipeline, or a model (and version, when pinned); null sends no model:
  // the server's default.
  function chosenModel() {
    const option = modelSelect.selectedOptions[0];
    if (option && option.dataset.type) return { type: option.dataset.type };
    if (option && option.dataset.pipeline) return { pipeline: option.dataset.pipeline };
    if (!option || !option.dataset.model) return null;
    return { model: option.dataset.model, version: option.dataset.version || null };
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
    let img = null;
    if (!file.type || file.type.indexOf("image/") === 0) {
      url = URL.createObjectURL(file);
      img = el("img");
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
    const card = { file, root, name, state, result, url, thumb, img, overlay: null };
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
    clearBoxes(card);
    card.state.hidden = false;
    card.state.textContent = "Waiting\u2026";
    card.choice = chosenModel();     // "Try again" sends the picker's choice at that moment
    schedule(() => classify(card));
  }

  async function classify(card) {
    card.state.textContent = "Classifying\u2026";

    const form = new FormData();
    form.append("image", card.file, card.file.name || "image");
    let url = PREDICT_URL;
    if (card.choice && card.choice.type) {
      url = RECOGNIZE_URL + encodeURIComponent(card.choice.type);
    } else if (card.choice && card.choice.pipeline) {
      url = PIPELINES_URL + "/" + encodeURIComponent(card.choice.pipeline) + "/predict";
    } else if (card.choice) {
      form.append("model", card.choice.model);
      if (card.choice.version) form.append("version", card.choice.version);
    }
    const headers = apiHeaders();

    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), CLIENT_TIMEOUT_MS);
    const started = performance.now();
    let outcome;
    try {
      const response = await fetch(url, {
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
    if (response.ok && body && body.success === true && (isAnswer(body) || isFanOut(body) || isFrames(body))) {
      return { ok: true, body };
    }
    if (body && body.error && typeof body.error === "object") {
      return { ok: false, code: String(body.error.code || "HTTP_" + response.status), status: response.status,
               detail: body.error.message ? String(body.error.message) : "", id: body.id, retryAfter };
    }
    const code = response.ok ? "BAD_RESPONSE" : (CODE_BY_STATUS[response.status] || "HTTP_" + response.status);
    return { ok: false, code, status: response.status, detail: "", retryAfter };
  }

  // A classifier answers `predictions`; a detector (a model of another kind) answers `detections`; an OCR
  // pipeline answers `texts` (each with the four corners of its line).
  function isAnswer(body) {
    return Array.isArray(body.predictions) || Array.isArray(body.detections) || Array.isArray(body.texts);
  }

  // A fan-out pipeline answers `results`: one answer per model, each shaped like that model's own.
  function isFanOut(body) {
    const results = body.results;
    return Boolean(results) && typeof results === "object" && !Array.isArray(results) &&
           Object.values(results).every((result) => result && typeof result === "object" && isAnswer(result));
  }

  // A frames pipeline answers `frames` (each frame's answer with its `index` and `timestamp`) and a `merge`:
  // each label's best probability over the frames (`max`), shown first, then every frame.
  function isFrames(body) {
    return Array.isArray(body.frames) && body.frames.every((frame) => frame && typeof frame === "object" && isAnswer(frame));
  }

  function frameAnswers(body) {
    const best = body.merge && Array.isArray(body.merge.max) ? body.merge.max : null;
    return (best ? [["best of " + body.frames.length + " frames", { predictions: best }]] : []).concat(
      body.frames.map((frame) => ["frame " + frame.index + " \u00b7 " + Number(frame.timestamp).toFixed(2) + " s", frame]));
  }

  function resultRows(body) {
    if (Array.isArray(body.texts)) {         // verbatim: no underscores turned into spaces here
      return body.texts.map((t, index) => ({ label: String(t.text), probability: t.score, number: index + 1,
                                             title: isQuad(t.box) ? "corners " + t.box.map((p) => p.join(", ")).join("; ") : "" }));
    }
    if (Array.isArray(body.predictions)) {
      return body.predictions.map((p) => ({ label: humanLabel(p.label), probability: p.probability,
                                            title: p.class_id !== undefined ? "class " + p.class_id : "" }));
    }
    // Each detection of a detect-then-classify pipeline also carries its crop's `predictions`.
    return body.detections.map((d) => {
      const top = topPrediction(d);
      return { label: humanLabel(d.label) + (top ? " \u00b7 " + humanLabel(top.label) + " (" + percent(top.probability) + ")" : ""),
               probability: d.score,
               title: [Array.isArray(d.box) ? "box " + d.box.join(", ") : "",
                       Array.isArray(d.predictions) && d.predictions.length > 1
                         ? "crop: " + d.predictions.map((p) => humanLabel(p.label) + " " + percent(p.probability)).join(", ")
                         : ""].filter(Boolean).join(" \u00b7 ") };
    });
  }

  function topPrediction(detection) {
    return Array.isArray(detection.predictions) && detection.predictions.length ? detection.predictions[0] : null;
  }

  function predictionList(rows, ariaLabel, emptyText) {
    const list = el("ol", "predictions");
    list.setAttribute("aria-label", ariaLabel);
    rows.forEach((prediction, index) => {
      const item = el("li", index === 0 && prediction.number === undefined ? "prediction top" : "prediction");
      const label = el("span", "label");
      if (prediction.number !== undefined) {          // a text line: numbered as its outline on the photo
        label.append(el("span", "line-number", prediction.number + "."), " ", el("span", "text", prediction.label));
      } else {
        label.textContent = prediction.label;
      }
      if (prediction.title) label.title = prediction.title;
      const value = el("span", "value", percent(prediction.probability));
      const bar = el("span", "bar");
      bar.setAttribute("aria-hidden", "true");
      const fill = el("span", "fill");
      fill.style.width = (Math.max(0, Math.min(1, Number(prediction.probability) || 0)) * 100) + "%";
      bar.appendChild(fill);
      item.append(label, value, bar);
      list.appendChild(item);
    });
    if (!rows.length) list.appendChild(el("li", "prediction", emptyText));
    return list;
  }

  function showPredictions(card, body, elapsedMs) {
    const name = card.file.name || "image";
    const answers = [];        // [model name or null, its answer]
    if (isAnswer(body)) answers.push([null, body]);
    else if (isFrames(body)) answers.push(...frameAnswers(body));
    else Object.keys(body.results).forEach((model) => answers.push([model, body.results[model]]));
    const spoken = [];
    answers.forEach(([model, answer]) => {
      const rows = resultRows(answer);
      const classified = Array.isArray(answer.predictions);
      const read = Array.isArray(answer.texts);
      const list = predictionList(rows, (classified ? "Top labels " : read ? "Text " : "Detections ") +
                                  (model ? "of " + model + " " : "") + (classified ? "for " : "in ") + name,
                                  classified ? "No labels returned." : read ? "No text found." : "Nothing found.");
      if (read) list.classList.add("texts");
      if (model) {
        const section = el("div", "model-result");
        const heading = el("h4", "model-heading", model);
        if (answer.version !== undefined && answer.version !== null) {
          heading.append(el("span", "model-version", " \u00b7 v" + answer.version));
        }
        section.append(heading, list);
        card.result.append(section);
      } else {
        card.result.append(list);
      }
      const top = rows[0];
      spoken.push((model ? model + ": " : "") + (read ? readAloud(rows)
        : top ? top.label + ", " + percent(top.probability) : (classified ? "no labels returned" : "nothing found")));
    });
    const meta = el("p", "meta");
    meta.append(el("span", "elapsed", elapsedMs + " ms"));
    if (body.pipeline) {
      meta.append(document.createTextNode(" \u00b7 pipeline "), el("span", "pipeline", String(body.pipeline)));
    }
    if (body.model) meta.append(document.createTextNode(" \u00b7 model "), el("span", "model", String(body.model)));
    if (body.version !== undefined && body.version !== null) {
      meta.append(document.createTextNode(" \u00b7 version "), el("span", "version", String(body.version)));
    }
    card.result.append(meta);
    card.state.hidden = true;
    card.root.classList.add("done");
    card.root.setAttribute("aria-busy", "false");
    const shapes = [];
    (isFrames(body) ? [] : answers).forEach(([, answer]) => {     // a frame's boxes are not on the thumbnail
      if (Array.isArray(answer.detections)) {
        shapes.push(...answer.detections.filter((d) => d && isBox(d.box)).map((d) => ({ box: d.box, label: boxLabel(d) })));
      }
      if (Array.isArray(answer.texts)) {
        answer.texts.forEach((t, index) => {
          if (t && isQuad(t.box)) shapes.push({ points: t.box, label: String(index + 1) });
        });
      }
    });
    drawBoxes(card, shapes);
    announce(name + ": " + spoken.join("; ") + ".");
  }

  function readAloud(rows) {
    if (!rows.length) return "no text found";
    return (rows.length === 1 ? "1 line of text" : rows.length + " lines of text") + ": " + rows[0].label +
           (rows.length > 1 ? " \u2026" : "");
  }

  function isBox(box) {
    return Array.isArray(box) && box.length === 4 && box.every((value) => Number.isFinite(Number(value)));
  }

  // Four [x, y] corners (an OCR line, possibly turned).
  function isQuad(points) {
    return Array.isArray(points) && points.length === 4 && points.every((point) => Array.isArray(point) &&
      point.length === 2 && point.every((value) => Number.isFinite(Number(value))));
  }

  // ------------------------------------------------------------------ boxes over the thumbnail
  // An SVG over the <img>, its viewBox the image's natural size and its aspect kept as `object-fit:
  // contain` keeps the picture's: the boxes, in the image's pixels (after EXIF rotation, as the browser
  // shows it), land on it at any displayed size. Decorative: the text list above says the same.
  const overlayResized = typeof ResizeObserver === "function"
    ? new ResizeObserver((entries) => entries.forEach((entry) => layoutLabels(entry.target))) : null;

  function clearBoxes(card) {
    card.drawing = null;
    if (!card.overlay) return;
    if (overlayResized) overlayResized.unobserve(card.overlay);
    card.overlay.remove();
    card.overlay = null;
  }

  // `boxes`: {box: [x0, y0, x1, y1]} (a detection) or {points: four [x, y]} (an OCR line), each with a `label`.
  function drawBoxes(card, boxes) {
    clearBoxes(card);
    const img = card.img;
    if (!boxes.length || !img) return;
    const drawing = {};
    card.drawing = drawing;
    const draw = () => {
      if (card.drawing !== drawing || !img.isConnected || !img.naturalWidth || !img.naturalHeight) return;
      card.overlay = boxOverlay(img.naturalWidth, img.naturalHeight, boxes);
      card.thumb.appendChild(card.overlay);
      layoutLabels(card.overlay);
      if (overlayResized) overlayResized.observe(card.overlay);
    };
    if (img.complete && img.naturalWidth) draw();
    else img.addEventListener("load", draw, { once: true });
  }

  function svg(tag, className) {
    const node = document.createElementNS(SVG_NS, tag);
    if (className) node.setAttribute("class", className);
    return node;
  }

  function boxOverlay(width, height, boxes) {
    const overlay = svg("svg", "boxes");
    overlay.setAttribute("viewBox", "0 0 " + width + " " + height);
    overlay.setAttribute("preserveAspectRatio", "xMidYMid meet");
    overlay.setAttribute("aria-hidden", "true");
    overlay.setAttribute("focusable", "false");
    overlay.boxes = [];
    boxes.forEach((shape) => {
      const xs = shape.points ? shape.points.map((p) => Number(p[0])) : [shape.box[0], shape.box[2]].map(Number);
      const ys = shape.points ? shape.points.map((p) => Number(p[1])) : [shape.box[1], shape.box[3]].map(Number);
      const left = Math.max(0, Math.min(...xs)), right = Math.min(width, Math.max(...xs));
      const top = Math.max(0, Math.min(...ys)), bottom = Math.min(height, Math.max(...ys));
      const group = svg("g", shape.points ? "box text-line" : "box");
      const shapes = ["box-halo", "box-line"].map((className) => {
        if (shape.points) {
          const polygon = svg("polygon", className);
          polygon.setAttribute("points", shape.points.map((p) => Number(p[0]) + "," + Number(p[1])).join(" "));
          return polygon;
        }
        const rect = svg("rect", className);
        rect.setAttribute("x", left);
        rect.setAttribute("y", top);
        rect.setAttribute("width", Math.max(0, right - left));
        rect.setAttribute("height", Math.max(0, bottom - top));
        return rect;
      });
      const label = svg("text", "box-label");
      label.textContent = shape.label;
      group.append(...shapes, label);
      overlay.appendChild(group);
      overlay.boxes.push({ left, top, right, bottom, label });
    });
    overlay.natural = { width, height };
    return overlay;
  }

  // "face 0.99", and for a face crop classified by a pipeline its top label: "face 0.99 · suit".
  function boxLabel(detection) {
    const score = Number(detection.score);
    const top = topPrediction(detection);
    return humanLabel(detection.label === undefined ? "object" : detection.label) +
           (Number.isFinite(score) ? " " + score.toFixed(2) : "") +
           (top ? " \u00b7 " + humanLabel(top.label) : "");
  }

  // Labels keep BOX_LABEL_PX on screen: their size in the image's pixels follows the displayed scale.
  // Each sits above its box, or below it, or inside it where the picture has no room.
  function layoutLabels(overlay) {
    const rect = overlay.getBoundingClientRect();
    const natural = overlay.natural;
    const scale = Math.min(rect.width / natural.width, rect.height / natural.height);
    if (!(scale > 0)) return;
    const size = BOX_LABEL_PX / scale;
    overlay.boxes.forEach((box) => {
      const label = box.label;
      label.setAttribute("font-size", size.toFixed(2));
      label.setAttribute("stroke-width", (3 / scale).toFixed(2));
      const rightHalf = (box.left + box.right) / 2 > natural.width / 2;
      label.setAttribute("text-anchor", rightHalf ? "end" : "start");
      label.setAttribute("x", (rightHalf ? box.right : box.left).toFixed(1));
      const gap = 0.25 * size;
      let baseline;
      if (box.top >= size + gap) baseline = box.top - gap;                              // above
      else if (natural.height - box.bottom >= size + gap) baseline = box.bottom + size;  // below
      else baseline = box.top + size;                                                  // inside
      label.setAttribute("y", baseline.toFixed(1));
    });
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
    if (MODEL_CODES.has(outcome.code)) loadModels();
  }

  function clearCards() {
    Array.from(cardList.children).forEach((item) => {
      if (!item.imageCard) return;
      clearBoxes(item.imageCard);
      if (item.imageCard.url) URL.revokeObjectURL(item.imageCard.url);
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
  keyInput.addEventListener("change", loadModels);      // another key: maybe another client's types
  rememberBox.addEventListener("change", saveKey);
  clearButton.addEventListener("click", clearCards);

  restoreKey();
  loadModels();
})();
