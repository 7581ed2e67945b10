"""The Gradio demo in a real browser: headless Chromium (selenium + the system chromedriver) opens the page served
on 127.0.0.1, uploads an image, waits for the result, and the listed detections must be the model's own (its
image processor's post-processing at the same threshold). A screenshot is kept in the test's tmp_path."""
import shutil
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import SMALL

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no Chromium: install Debian's chromium and chromium-driver (as .ci/run does) to run the browser "
                "test", allow_module_level=True)
pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from detrkit.deploy.demo import build_app  # noqa: E402
from detrkit.modeling import DeformableDetrConfig, DeformableDetrForObjectDetection  # noqa: E402
from detrkit.processing import DeformableDetrImageProcessor  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

THRESHOLD = 0.5  # the slider's default
TIMEOUT = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def model_and_processor():
    torch.manual_seed(0)
    model = DeformableDetrForObjectDetection(DeformableDetrConfig(
        **SMALL, use_pretrained_backbone=False, id2label={i: f"class {i}" for i in range(4)})).eval()
    with torch.no_grad():  # class scores spread around the threshold, so some detections pass and some do not
        for head in model.class_embed:
            head.bias.copy_(torch.tensor([0.5, -0.5, 0.0, -3.0]))
            head.weight.normal_(0, 0.2)
    return model, DeformableDetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 160})


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    yield driver
    driver.quit()


def test_upload_lists_the_models_detections(model_and_processor, browser, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    model, processor = model_and_processor
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (120, 150, 3), dtype=np.uint8))
    image_path = tmp_path / "upload.png"
    image.save(image_path)

    with torch.no_grad():  # the model's own answer, through its processor
        inputs = processor(images=[image], return_tensors="pt")
        expected = processor.post_process_object_detection(
            model(**inputs), threshold=THRESHOLD, target_sizes=[(image.height, image.width)])[0]
    assert 0 < len(expected["scores"]) < 100  # the threshold must select: some pass, some do not

    port = free_port()
    app = build_app(model, processor)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, TIMEOUT)
        upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#input-image input[type=file]")))
        upload.send_keys(str(image_path))
        table = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#detections-table")))
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#detections-image img")))
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#attention img")))
        time.sleep(1)  # let the images finish drawing for the screenshot
        browser.save_screenshot(str(tmp_path / "demo.png"))
        rows = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
                for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    finally:
        app.close()

    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert len(rows) == len(expected["scores"])
    for row, score, label, box in zip(rows, expected["scores"], expected["labels"], expected["boxes"]):
        assert row[1] == f"class {int(label)}"
        assert float(row[2]) == pytest.approx(float(score), abs=1e-4)
        np.testing.assert_allclose([float(v) for v in row[3:7]], box.numpy(), atol=0.06)
