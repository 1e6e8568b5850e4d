"""The web page end to end: Debian's headless chromium, driven by Playwright, against a real gateway.

Playwright (PyPI) only drives the browser here: it is launched from /usr/bin/chromium (the Debian
package), never from a browser that `playwright install` downloads. Without chromium these tests FAIL.
Screenshots go to tests/artifacts/.
"""
from __future__ import annotations

import base64
import io
import os
import re
import shutil

import pytest
from PIL import Image
from test_many_models import MIXED, Gateway, mixed_repository_gateway

from conftest import ARTIFACTS, DATA, ServerThread, WorkerThread, make_config

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError as exc:  # a missing driver is a broken setup, not a reason to skip
    raise ImportError("the page tests need Playwright: pip install -r requirements-dev.txt") from exc

CHROMIUM = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CAT_LABELS = {"Egyptian cat", "tabby", "tiger cat"}   # top-1 of the default model on cat.jpg
PERCENT = re.compile(r"^(\d{1,3}\.\d|<0\.1)%$")
RESULT_TIMEOUT_MS = 60_000    # the first prediction of a session warms the model up
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}


@pytest.fixture(scope="module")
def browser():
    if not os.path.isfile(CHROMIUM) or not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"chromium not found at {CHROMIUM!r}: install Debian's `chromium` package "
                    "(apt-get install chromium) or set CHROMIUM_BIN", pytrace=False)
    with sync_playwright() as playwright:
        # launch() gives every browser a fresh temporary --user-data-dir of its own.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser):
    """Pages in fresh browser contexts (own localStorage), closed after the test."""
    contexts = []

    def make(viewport=DESKTOP):
        context = browser.new_context(viewport=viewport)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        return page

    page_errors: list[str] = []
    yield make
    for context in contexts:
        context.close()
    assert not page_errors, f"JavaScript errors on the page: {page_errors}"


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def card(page, file_name: str):
    return page.locator("li.card").filter(has=page.locator(".file-name", has_text=file_name))


def finished_card(page, file_name: str):
    found = card(page, file_name)
    expect(found).to_have_attribute("aria-busy", "false", timeout=RESULT_TIMEOUT_MS)
    return found


def assert_cat_result(page, cat) -> None:
    expect(cat).to_have_class(re.compile(r"\bdone\b"))
    labels = cat.locator(".prediction .label").all_inner_texts()
    values = cat.locator(".prediction .value").all_inner_texts()
    assert len(labels) == 5 and len(values) == 5, (labels, values)
    assert labels[0] in CAT_LABELS, labels
    assert all(PERCENT.match(value) for value in values), values
    assert "_" not in " ".join(labels), labels
    assert re.search(r"\d+ ms", cat.locator(".meta").inner_text())


def not_an_image() -> list[dict]:
    return [{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"this is a shopping list, not a photo\n"},
            {"name": "fake.jpg", "mimeType": "image/jpeg", "buffer": b"plain text pretending to be a JPEG"}]


def test_photo_shows_its_labels(redis_url, classifier, gateway_factory, new_page):
    web, _ = gateway_factory(make_config(redis_url), classifier)
    page = new_page()
    page.goto(web.url + "/")
    expect(page).to_have_title("Image recognition")
    photos = [DATA / name for name in ("cat.jpg", "coffee.jpg", "motorcycle.jpg", "rocket.jpg", "astronaut.jpg")]
    page.set_input_files("#file-input", [str(path) for path in photos])   # 5 files: one waits for a slot
    for path in photos:
        finished_card(page, path.name)
    cat = card(page, "cat.jpg")
    assert_cat_result(page, cat)
    assert page.locator("li.card.done").count() == len(photos)
    expect(cat.locator(".thumb img")).to_have_js_property("complete", True)
    assert cat.locator(".thumb img").evaluate("img => img.naturalWidth") > 0
    expect(page.locator("#announcer")).to_contain_text(re.compile(r"cat\.jpg: (Egyptian cat|tabby|tiger cat), "))
    screenshot(page, "page-result.png")


def test_non_image_shows_a_readable_error(redis_url, classifier, gateway_factory, new_page):
    web, _ = gateway_factory(make_config(redis_url), classifier)
    page = new_page()
    page.goto(web.url + "/")
    page.set_input_files("#file-input", not_an_image())
    for name in ("notes.txt", "fake.jpg"):
        failed = finished_card(page, name)
        expect(failed).to_have_class(re.compile(r"\bfailed\b"))
        expect(failed.locator(".error-code code")).to_have_text("IMAGE_UNREADABLE")
        expect(failed.locator(".error-message")).to_contain_text("could not be read as an image")
        expect(failed.locator(".no-preview")).to_be_visible()
    expect(page.locator("#announcer")).to_contain_text("notes.txt: could not be classified")
    screenshot(page, "page-error.png")


def test_api_key_field(redis_url, classifier, gateway_factory, new_page):
    web, _ = gateway_factory(make_config(redis_url, api_key="s3cret"), classifier)
    page = new_page()
    page.goto(web.url + "/")
    page.set_input_files("#file-input", str(DATA / "cat.jpg"))
    refused = finished_card(page, "cat.jpg")
    expect(refused.locator(".error-code code")).to_have_text("UNAUTHORIZED")
    expect(refused.locator(".error-message")).to_contain_text("API key")
    screenshot(page, "page-unauthorized.png")

    page.get_by_label("API key").fill("s3cret")
    refused.get_by_role("button", name="Try cat.jpg again").click()
    assert_cat_result(page, finished_card(page, "cat.jpg"))
    assert page.evaluate("Object.keys(localStorage).length") == 0, "the key was stored without the box ticked"

    # A new upload with the key typed in succeeds directly; ticking the box keeps it across reloads.
    page.get_by_label("Remember the key in this browser").check()
    page.reload()
    expect(page.get_by_label("API key")).to_have_value("s3cret")
    page.set_input_files("#file-input", str(DATA / "cat.jpg"))
    assert_cat_result(page, finished_card(page, "cat.jpg"))
    page.get_by_label("Remember the key in this browser").uncheck()
    assert page.evaluate("Object.keys(localStorage).length") == 0


def test_phone_width_has_no_horizontal_scroll(redis_url, classifier, gateway_factory, new_page):
    web, _ = gateway_factory(make_config(redis_url), classifier)
    page = new_page(PHONE)
    page.goto(web.url + "/")
    long_name = "a_photo_with_a_very_long_file_name_that_has_no_spaces_at_all_2024-01-01.txt"
    page.set_input_files("#file-input", [
        {"name": "cat.jpg", "mimeType": "image/jpeg", "buffer": (DATA / "cat.jpg").read_bytes()},
        {"name": long_name, "mimeType": "text/plain", "buffer": b"not an image"}])
    assert_cat_result(page, finished_card(page, "cat.jpg"))
    finished_card(page, long_name)
    scroll_width = page.evaluate("document.scrollingElement.scrollWidth")
    assert scroll_width <= PHONE["width"], f"the page is {scroll_width}px wide at a {PHONE['width']}px viewport"
    screenshot(page, "page-phone.png")


def test_keyboard_and_drag_and_drop(redis_url, classifier, gateway_factory, new_page):
    web, _ = gateway_factory(make_config(redis_url), classifier)
    page = new_page()
    # Subscribing turns on file-chooser interception without waiting for it: do it well before the key press.
    page.on("filechooser", lambda chooser: None)
    page.goto(web.url + "/")
    # Every control has an accessible name.
    for name in ("Choose images", "API key", "Remember the key in this browser"):
        expect(page.get_by_label(name)).to_have_count(1)
    # The drop zone is a keyboard-reachable button that opens the file chooser.
    drop_zone = page.get_by_role("button", name="Drop images here")
    drop_zone.focus()
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(DATA / "coffee.jpg"))
    expect(finished_card(page, "coffee.jpg")).to_have_class(re.compile(r"\bdone\b"))
    # Dropping a file on the zone uploads it.
    cat_b64 = base64.b64encode((DATA / "cat.jpg").read_bytes()).decode()
    transfer = page.evaluate_handle("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped-cat.jpg", {type: "image/jpeg"}));
        return transfer;
    }""", cat_b64)
    drop_zone.dispatch_event("dragenter", {"dataTransfer": transfer})
    drop_zone.dispatch_event("drop", {"dataTransfer": transfer})
    assert_cat_result(page, finished_card(page, "dropped-cat.jpg"))


def test_network_and_proxy_failures(redis_url, gateway_factory, new_page):
    web, _ = gateway_factory(make_config(redis_url))
    page = new_page()
    page.goto(web.url + "/")
    page.route("**/predict", lambda route: route.abort("connectionrefused"))
    page.set_input_files("#file-input", str(DATA / "cat.jpg"))
    expect(finished_card(page, "cat.jpg").locator(".error-code code")).to_have_text("NETWORK_ERROR")
    page.unroute("**/predict")
    page.route("**/predict", lambda route: route.fulfill(
        status=502, content_type="text/html", body="<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"))
    page.set_input_files("#file-input", str(DATA / "coffee.jpg"))
    proxied = finished_card(page, "coffee.jpg")
    expect(proxied.locator(".error-code code")).to_have_text("BAD_GATEWAY")
    expect(proxied.locator(".error-message")).to_contain_text("proxy")


def test_page_works_under_a_path_prefix(redis_url, classifier, new_page):
    """Behind nginx at /gateway/ the page's relative URLs (static files, `predict`) stay under the prefix."""
    from werkzeug.exceptions import NotFound
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from image_gateway.web.app import create_app
    config = make_config(redis_url)
    web = ServerThread(DispatcherMiddleware(NotFound(), {"/gateway": create_app(config)}), config)
    worker = WorkerThread(config, classifier)
    try:
        page = new_page()
        requests_seen: list[str] = []
        page.on("request", lambda request: requests_seen.append(request.url))
        page.goto(web.url + "/gateway/")
        page.set_input_files("#file-input", str(DATA / "cat.jpg"))
        assert_cat_result(page, finished_card(page, "cat.jpg"))
        assert f"{web.url}/gateway/predict" in requests_seen
        assert all(url.startswith(f"{web.url}/gateway/") for url in requests_seen
                   if url.startswith("http")), requests_seen
    finally:
        worker.stop()
        web.stop()



# ------------------------------------------------------------------------------ the model picker
SERVED = MIXED


@pytest.fixture
def repository_gateway(redis_url, tmp_path):
    with mixed_repository_gateway(redis_url, tmp_path) as gateway:
        yield gateway


# Chromium does not hand Playwright a multipart body holding a file, so the page's fetch is watched instead.
RECORD_FORM_FIELDS = """(() => {
  const fetch = window.fetch;
  window.sentFields = [];
  window.fetch = (url, options) => {
    if (options && options.body instanceof FormData) {
      window.sentFields.push(Object.fromEntries(
        Array.from(options.body.entries()).filter(([, value]) => typeof value === "string")));
    }
    return fetch.call(window, url, options);
  };
})();"""


def upload_as(page, name: str) -> tuple[dict, object]:
    """Upload cat.jpg under `name`: (the text fields the page sent with it, its finished card)."""
    page.set_input_files("#file-input", {"name": name, "mimeType": "image/jpeg",
                                         "buffer": (DATA / "cat.jpg").read_bytes()})
    found = finished_card(page, name)
    return page.evaluate("window.sentFields[window.sentFields.length - 1]"), found


def assert_answered_by(found, model: str, version: str, label: str) -> None:
    expect(found).to_have_class(re.compile(r"\bdone\b"))
    expect(found.locator(".meta .model")).to_have_text(model)
    expect(found.locator(".meta .version")).to_have_text(version)
    expect(found.locator(".prediction.top .label")).to_have_text(label)


def test_model_picker_lists_the_served_models_and_pins_a_version(repository_gateway, new_page):
    page = new_page()
    page.add_init_script(RECORD_FORM_FIELDS)
    page.goto(repository_gateway.url + "/")
    picker = page.get_by_label("Model", exact=True)
    models = picker.locator("optgroup:not(.pipelines) option")
    expect(models).to_have_count(6)
    options = models.evaluate_all(
        "options => options.map(o => [o.parentElement.label, o.textContent, o.disabled])")
    assert options == [["other", "other \u00b7 newest (v1)", False],
                       ["other", "other \u00b7 v2 (unavailable)", True],      # broken: shown, not choosable
                       ["other", "other \u00b7 v1", False],
                       ["toy", "toy \u00b7 newest (v2) (default)", False],
                       ["toy", "toy \u00b7 v2", False],
                       ["toy", "toy \u00b7 v1", False]], options
    assert picker.locator("option", has_text="v2 (unavailable)").get_attribute("title"), "no reason shown"
    # The pipelines file loads by default: face_crops needs models this gateway does not serve.
    pipelines = picker.locator("optgroup.pipelines option").evaluate_all(
        "options => options.map(o => [o.parentElement.label, o.value, o.disabled])")
    assert pipelines == [["Pipelines", "pipeline:face_crops", True],
                         ["Pipelines", "pipeline:all_classifiers", False],
                         ["Pipelines", "pipeline:ocr", True],
                         ["Pipelines", "pipeline:frames_classify", True]], pipelines     # efficientnet_lite0
    assert "mtcnn" in picker.locator("option[value='pipeline:face_crops']").inner_text()
    expect(picker).to_have_value("toy")                                   # the default model is preselected
    expect(page.locator("#model-status")).to_contain_text("2 models served")

    fields, found = upload_as(page, "default.jpg")
    assert fields == {"model": "toy"}, fields
    assert_answered_by(found, "toy", "2", "beta")

    picker.select_option(label="toy \u00b7 v1")                            # a pinned version
    fields, found = upload_as(page, "pinned.jpg")
    assert fields == {"model": "toy", "version": "1"}, fields
    assert_answered_by(found, "toy", "1", "alpha")

    picker.focus()                                                        # the keyboard reaches it too
    page.keyboard.press("Home")
    expect(picker).to_have_value("other")
    assert_answered_by(upload_as(page, "other.jpg")[1], "other", "1", "gamma")
    screenshot(page, "page-model-picker.png")


def test_model_picker_failure_sends_no_model(repository_gateway, new_page):
    page = new_page()
    page.add_init_script(RECORD_FORM_FIELDS)
    page.route("**/v1/models", lambda route: route.fulfill(status=503, content_type="text/html", body="<h1>down</h1>"))
    page.goto(repository_gateway.url + "/")
    expect(page.locator("#model-status")).to_contain_text("could not be loaded (HTTP 503)")
    expect(page.get_by_label("Model", exact=True)).to_have_value("")
    fields, found = upload_as(page, "cat.jpg")
    assert fields == {}, fields                                           # no model: the server's default
    assert_answered_by(found, "toy", "2", "beta")


# ------------------------------------------------------------------------------ detectors and pipelines
@pytest.fixture
def detector_gateway(redis_url):
    """A real gateway serving mtcnn beside the default classifier; the default pipelines file loads."""
    gateway = Gateway(make_config(redis_url, models="mtcnn", request_timeout=60.0))
    try:
        yield gateway
    finally:
        gateway.stop()


def rotated_copy(path, size: tuple[int, int]) -> bytes:
    """The photo's top-left `size`, stored turned a quarter with EXIF orientation 6 saying how to show it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    upright = Image.open(path).crop((0, 0, *size))
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def upload_answered(page, path, name: str, endpoint: str, data: bytes | None = None):
    """Upload `path` (or `data`) as `name`: (the JSON answer the page got from `endpoint`, the finished card)."""
    with page.expect_response(lambda response: response.url.endswith(endpoint),
                              timeout=RESULT_TIMEOUT_MS) as answered:
        page.set_input_files("#file-input", {"name": name, "mimeType": "image/jpeg",
                                             "buffer": data if data is not None else path.read_bytes()})
    found = finished_card(page, name)
    expect(found).to_have_class(re.compile(r"\bdone\b"))
    return answered.value.json(), found


def expected_rect(img, box) -> dict:
    """Where `box` (natural pixels) lands on the <img>: object-fit contain scales and centres the picture."""
    shown = img.bounding_box()
    natural = img.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    scale = min(shown["width"] / natural[0], shown["height"] / natural[1])
    left = shown["x"] + (shown["width"] - natural[0] * scale) / 2
    top = shown["y"] + (shown["height"] - natural[1] * scale) / 2
    return {"x": left + box[0] * scale, "y": top + box[1] * scale,
            "width": (box[2] - box[0]) * scale, "height": (box[3] - box[1]) * scale}


def assert_box_drawn(found, detection: dict) -> str:
    """One box over the thumbnail, where the answer's box is: its label's text."""
    boxes = found.locator(".thumb svg.boxes .box")
    expect(boxes).to_have_count(1)
    assert found.locator(".thumb svg.boxes").get_attribute("aria-hidden") == "true"
    drawn = boxes.locator("rect.box-line").bounding_box()
    want = expected_rect(found.locator(".thumb img"), detection["box"])
    assert all(abs(drawn[key] - want[key]) < 3 for key in want), (drawn, want)
    label = boxes.locator("text.box-label")
    label_rect, thumb_rect = label.bounding_box(), found.locator(".thumb").bounding_box()
    assert 9 < label_rect["height"] < 24, label_rect                           # readable on screen
    assert thumb_rect["y"] <= label_rect["y"]                                  # inside the thumbnail
    assert label_rect["y"] + label_rect["height"] <= thumb_rect["y"] + thumb_rect["height"]
    return label.text_content()


def test_detector_and_pipeline_boxes_are_drawn_over_the_photo(detector_gateway, new_page):
    page = new_page()
    page.goto(detector_gateway.url + "/")
    picker = page.get_by_label("Model", exact=True)
    expect(picker.locator("option[value='mtcnn']")).to_be_enabled(timeout=RESULT_TIMEOUT_MS)
    expect(picker.locator("option[value='pipeline:face_crops']")).to_be_enabled()

    picker.select_option("mtcnn")
    body, found = upload_answered(page, DATA / "astronaut.jpg", "astronaut.jpg", "/predict")
    assert body["model"] == "mtcnn" and len(body["detections"]) == 1, body
    face = body["detections"][0]
    label = assert_box_drawn(found, face)
    assert re.fullmatch(r"face \d\.\d\d", label) and float(label.split()[1]) == pytest.approx(face["score"], abs=0.006)
    # The text list stays, for screen readers: the box itself is decorative.
    expect(found.locator(".predictions")).to_have_attribute("aria-label", "Detections in astronaut.jpg")
    expect(found.locator(".prediction.top .label")).to_have_text("face")

    # An EXIF-rotated copy: the browser shows it upright (image-orientation: from-image), as the
    # server measures its boxes, so the box lands on the face again.
    # A copy cut to 512x400 (the face stays in), so a sideways display would show as 400x512.
    body, turned = upload_answered(page, None, "astronaut-turned.jpg", "/predict",
                                   rotated_copy(DATA / "astronaut.jpg", (512, 400)))
    assert turned.locator(".thumb img").evaluate("img => [img.naturalWidth, img.naturalHeight]") == [512, 400]
    turned_box = body["detections"][0]["box"]
    assert max(abs(a - b) for a, b in zip(turned_box, face["box"], strict=True)) < 6, (turned_box, face["box"])
    assert_box_drawn(turned, body["detections"][0])

    picker.select_option("pipeline:face_crops")
    body, crops = upload_answered(page, DATA / "astronaut.jpg", "faces-of-astronaut.jpg",
                                  "/v1/pipelines/face_crops/predict")
    assert body["pipeline"] == "face_crops" and len(body["detections"]) == 1, body
    top = body["detections"][0]["predictions"][0]["label"].replace("_", " ")
    label = assert_box_drawn(crops, body["detections"][0])
    assert label.startswith("face ") and label.endswith("\u00b7 " + top), (label, top)
    expect(crops.locator(".prediction.top .label")).to_contain_text(top)
    expect(crops.locator(".meta .pipeline")).to_have_text("face_crops")
    expect(page.locator("#announcer")).to_contain_text("faces-of-astronaut.jpg: face \u00b7 " + top)

    # A fan-out answers one small list per model, and draws no box for classifiers.
    picker.select_option("pipeline:all_classifiers")
    body, fanned = upload_answered(page, DATA / "cat.jpg", "cat.jpg", "/v1/pipelines/all_classifiers/predict")
    results = fanned.locator(".model-result")
    expect(results).to_have_count(len(body["results"]))
    for index, (model, result) in enumerate(body["results"].items()):
        expect(results.nth(index).locator(".model-heading")).to_contain_text(model)
        expect(results.nth(index).locator(".prediction .label")).to_have_text(
            [p["label"].replace("_", " ") for p in result["predictions"]])
    expect(fanned.locator(".thumb svg")).to_have_count(0)
    screenshot(page, "page-detections.png")


def test_frames_pipeline_lists_the_best_labels_then_each_frame(redis_url, classifier, gateway_factory, new_page):
    from test_frames import cycling_gif

    web, _ = gateway_factory(make_config(redis_url, request_timeout=60.0), classifier)
    page = new_page()
    page.goto(web.url + "/")
    picker = page.get_by_label("Model", exact=True)
    expect(picker.locator("option[value='pipeline:frames_classify']")).to_be_enabled(timeout=RESULT_TIMEOUT_MS)
    picker.select_option("pipeline:frames_classify")
    body, found = upload_answered(page, None, "anim.gif", "/v1/pipelines/frames_classify/predict", cycling_gif(5)[0])
    assert body["success"] and len(body["frames"]) == 5, body
    headings = found.locator(".model-result .model-heading")
    expect(headings).to_have_count(6)
    expect(headings.nth(0)).to_have_text("best of 5 frames")
    expect(headings.nth(2)).to_have_text("frame 1 \u00b7 0.10 s")
    expect(found.locator(".model-result").nth(0).locator(".prediction.top .label")).to_have_text(
        body["merge"]["max"][0]["label"].replace("_", " "))
    expect(found.locator(".meta .pipeline")).to_have_text("frames_classify")


def test_ocr_texts_are_listed_and_their_lines_outlined_over_the_photo(redis_url, new_page):
    from test_ocr import LINES, encoded, ocr_config, printed

    gateway = Gateway(ocr_config(redis_url))
    try:
        page = new_page()
        page.goto(gateway.url + "/")
        picker = page.get_by_label("Model", exact=True)
        expect(picker.locator("option[value='pipeline:ocr']")).to_be_enabled(timeout=RESULT_TIMEOUT_MS)
        picker.select_option("pipeline:ocr")
        image, _ = printed(LINES[:3], width=720)
        body, found = upload_answered(page, None, "letter.jpg", "/v1/pipelines/ocr/predict",
                                      encoded(image, "JPEG", quality=95))
        assert [text["text"] for text in body["texts"]] == list(LINES[:3]), body
        listed = found.locator(".predictions.texts")
        expect(listed).to_have_attribute("aria-label", "Text in letter.jpg")
        expect(listed.locator(".prediction .text")).to_have_text(list(LINES[:3]))
        expect(listed.locator(".prediction .line-number")).to_have_text(["1.", "2.", "3."])
        lines = found.locator(".thumb svg.boxes .box.text-line")
        expect(lines).to_have_count(3)
        expect(lines.locator("text.box-label")).to_have_text(["1", "2", "3"])
        for index, text in enumerate(body["texts"]):
            xs, ys = [x for x, _ in text["box"]], [y for _, y in text["box"]]
            drawn = lines.nth(index).locator("polygon.box-line").bounding_box()
            want = expected_rect(found.locator(".thumb img"), [min(xs), min(ys), max(xs), max(ys)])
            assert all(abs(drawn[key] - want[key]) < 3 for key in want), (index, drawn, want)
        expect(page.locator("#announcer")).to_contain_text("letter.jpg: 3 lines of text: " + LINES[0])
        screenshot(page, "page-ocr.png")
    finally:
        gateway.stop()
