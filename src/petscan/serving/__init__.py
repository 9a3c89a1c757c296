"""Using a trained model outside the pipeline.

* `pyfunc`: the MLflow model the train stage logs (image files or bytes in, probabilities
  out, per row); `pyfunc_code`: the file MLflow logs as its code;
* `loading`: finding a logged model in the project's MLflow store and loading it;
* `predict`: `petscan predict`, probabilities for image files and folders;
* `serve`: `petscan serve`, MLflow's scoring server;
* `app/`: `petscan app`, the web page with Grad-CAM;
* `listen`: where the servers listen (a warning off loopback, the URL once it answers).
"""
