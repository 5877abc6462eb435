"""`toolkit bench --device browser|phone`: the same bench protocol run by the web app
(apps/web/bench.html) in a browser, a local headless Chromium or a phone's, and merged
into the host bench's report.

    job.py          what the page is asked to run: the served files, manifests, inputs
    server.py       the local HTTP(S) server: the app, the named files only, results in
    certificate.py  a self-signed certificate for https (WebGPU, service workers)
    qr.py           the URL as a terminal QR code, for the phone's camera
    browser.py      headless Chromium through Playwright (the system's browser)
    results.py      the page's results checked and turned into a bench report
    run.py          the orchestration: serve, open or wait, merge
"""
