"""The browser tests' marker (``-m browser`` / ``-m "not browser"``)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives ComfyUI's frontend in headless Chromium "
                            "(make test-browser; needs bash tools/setup.sh --browser)")
