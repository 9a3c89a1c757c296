# One-command set-up and run. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev
# The UI and dashboard listen on this address. `:=` keeps it from the environment (many
# shells export HOST): only `make ui UI_HOST=...` on the command line changes it.
UI_HOST := 127.0.0.1
PORT ?= 5000
WORKERS ?= 1
TRIALS ?=
APPLY ?= 0
# 3: TensorFlow's C++ ERROR lines hidden too (see petscan/logs.py); --verbose shows all
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PYTHONHASHSEED := 0
# Stage commands in dvc.yaml call `python`: make it the project's interpreter.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup setup-gpu data run test test-team pretrain-demo lint format deps ui serve app tune dashboard bench contact-sheet clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv and install the pinned dependencies (quick when nothing changed)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $(STAMP)

setup-gpu: setup ## Swap tensorflow-cpu for tensorflow[and-cuda] (Linux with an NVIDIA GPU)
	$(BIN)/python -m pip uninstall --quiet --yes tensorflow-cpu
	$(BIN)/python -m pip install --quiet "tensorflow[and-cuda]==$$(grep -i '^tensorflow.cpu==' constraints.txt | cut -d= -f3)"

data: setup ## Generate the synthetic demo data set (synthetic.out_dir) if it is not there
	@$(BIN)/petscan generate --if-missing

run: data ## Set up, make the demo data if needed, then run the whole DVC pipeline
	$(BIN)/dvc repro

test: setup ## Run the test suite
	$(BIN)/python -m pytest -q

test-team: setup ## Only the team tests (PostgreSQL, make team-up, two clones, tuning; about 5 min)
	PETSCAN_TEST_TEAM=1 $(BIN)/python -m pytest -q tests/test_team.py tests/test_team_tuning.py

lint: setup ## Check style with ruff
	$(BIN)/ruff check src stages tests bench
	$(BIN)/ruff format --check src stages tests bench

format: setup ## Reformat the code with ruff
	$(BIN)/ruff format src stages tests bench
	$(BIN)/ruff check --fix src stages tests bench

deps: setup ## Rewrite each stage's src/ deps in dvc.yaml from what its script imports
	PYTHONPATH=src $(BIN)/python tools/stage_deps.py --write

# A loud warning before a server listens on anything but this machine.
define warn_exposed
	@case '$(UI_HOST)' in 127.0.0.1|localhost|::1) ;; *) \
		echo "WARNING: UI_HOST=$(UI_HOST): $(1) will be reachable from other machines," \
		"without a password, with every run's artifacts. Ctrl-C unless you mean it." >&2; \
		sleep 3 ;; esac
endef

ui: setup ## Open the MLflow UI on the project's own store (on 127.0.0.1; UI_HOST=... to change)
	$(call warn_exposed,the MLflow UI)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns/artifacts --host '$(UI_HOST)' --port $(PORT)

serve: setup ## MLflow's scoring server on 127.0.0.1 (MODEL=models:/pet-classifier@champion; default: latest)
	$(BIN)/petscan serve $(if $(MODEL),--model "$(MODEL)")

app: setup ## The web page on 127.0.0.1: drop PET images, see probabilities and Grad-CAM (MODEL=...)
	$(BIN)/petscan app $(if $(MODEL),--model "$(MODEL)")

tune: setup ## Run or resume the Optuna study on the feature cache (WORKERS=N TRIALS=N APPLY=1)
	$(BIN)/python stages/tune.py --workers $(WORKERS) $(if $(TRIALS),--trials $(TRIALS)) \
		$(if $(filter 1 yes true,$(APPLY)),--apply)

# STORAGE reaches the script through the environment, never through a command line
# (`ps` shows those to every user) nor through shell quoting.
dashboard: export PETSCAN_TUNE_STORAGE = $(STORAGE)
dashboard: setup ## Open optuna-dashboard on the study's storage (STORAGE=url to pick another)
	$(call warn_exposed,optuna-dashboard)
	$(BIN)/python stages/tune.py --dashboard --workers $(WORKERS) --host '$(UI_HOST)' \
		--port $(or $(DASHBOARD_PORT),8080)

bench: run ## Print the speed, memory and learning figures quoted in the README (slow: about 50 minutes)
	$(BIN)/python bench/baseline_logreg.py
	$(BIN)/python bench/learning.py --seed-head
	$(BIN)/python bench/pretrain_curve.py --patients 300 1000 --shipped
	$(BIN)/python bench/precision.py
	$(BIN)/python bench/featurize_throughput.py --data-dir data/raw --images 256 --repeats 2 --scales 1 2
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/tune_speed.py --trials 5

pretrain-demo: setup ## Rebuild the demo backbone (pet_demo) from the generator (about 30 minutes; not part of make run)
	$(BIN)/petscan pretrain-demo
	@echo "Pin the new file: weights.demo.sha256 in params.yaml = $$(sha256sum src/petscan/demo_weights/pet_demo_backbone.h5 | cut -d' ' -f1)"

contact-sheet: data ## Write reports/contact_sheet.png with a few demo images per class
	$(BIN)/petscan contact-sheet --out reports/contact_sheet.png

clean: ## Remove pipeline outputs (keeps data/raw, .venv and mlruns)
	rm -rf data/split data/features models/backbone models/*.keras reports

# The team's services on this machine (README "Working as a team"): PostgreSQL and an
# MLflow server with logins, on 127.0.0.1; secrets in $PETSCAN_TEAM_DIR (~/.config/petscan/team).
.PHONY: team-up team-down
tune: export PETSCAN_TUNE_STORAGE = $(STORAGE)  # make tune STORAGE=$$PETSCAN_TEAM_OPTUNA_URL
team-up: setup ## PostgreSQL + MLflow server (logins, proxied artifacts) on 127.0.0.1 for the team
	deploy/team-up

team-down: ## Stop what team-up started (PURGE=1 also deletes its databases, runs and passwords)
	deploy/team-down $(if $(filter 1 yes true,$(PURGE)),--purge)
