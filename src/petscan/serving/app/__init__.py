"""`petscan app`: the web page where a researcher drops PET images and sees why.

* `server`: the FastAPI app (its API, upload checks) and the `petscan app` command;
* `explainer`: the served model with its provenance, and batched Grad-CAM in one thread;
* `budget`: the cap on the decoded pixels of all requests at once (503 "busy");
* `static/`: the page itself (HTML, CSS, JavaScript; no internet needed).
"""
