# `make train`: the offline quickstart. `make test`: the fast tier of the test suite (pytest -m "not slow",
# a few minutes on 2 cores); `make test-all`: every test, the slow ones too (subprocess trainings, DDP,
# kill-and-resume loops, sweeps, torch.compile, Inception; what CI runs). All install what they need
# into .venv first (PyTorch and the project in editable mode with its dev extras).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install train test test-all table1-cpu pid-vs-p-cpu latent-study latent-cpu dashboard dashboard-figure clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m vaegan.run +experiment=quickstart $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(ARGS)

# Table 1 at CPU scale on the shared CIFAR-10 subset (docs/metrics.md, Reproducing Table 1): under an hour.
table1-cpu: $(STAMP)
	$(PY) experiments/table1.py --scale cpu $(ARGS)

# Sec. 3.4 at CPU scale (docs/sweeps.md): BEGAN's controller vs the paper's PID and a PID whose P and D
# terms act, 3 seeds each on the shared CIFAR-10 subset, 2 jobs at a time; then the ranked diagnostics.
PID_TIME := $(shell date +%Y-%m-%d_%H-%M-%S)
PID_SWEEP ?= multirun/pid_vs_p_cpu/$(PID_TIME)
pid-vs-p-cpu: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m vaegan.run -m +experiment=pid_vs_p_cpu hydra/launcher=joblib hydra.launcher.n_jobs=2 \
		'controller=began,pid,pid_strong' hydra.sweep.dir=$(PID_SWEEP)
	$(PY) -m vaegan.report $(PID_SWEEP)

# The loss-convention study (docs/model.md, The loss convention): every VAE convention, the plain VAE and
# BEGAN* on +experiment=celeba_cpu, 2 jobs at a time with one thread each, evaluated and tabulated
# into docs/latent_study/ (about 2 hours on a 2-core CPU; rerun to resume an interrupted study).
latent-study: $(STAMP)
	$(PY) experiments/latent_study.py --report-dir docs/latent_study $(ARGS)

# The pictures of docs/latent.md: +experiment=celeba_cpu (about 10 minutes on a 2-core CPU, once;
# the study's default row is that run, so after make latent-study nothing is trained again), then
# every explore tool, writing to docs/latent/.
LATENT_RUN ?= outputs/latent_study/elbo_lsm_norm
LATENT_CKPT = ckpt_path=$(LATENT_RUN)/checkpoints/last.ckpt
EXPLORE = $(PY) -m vaegan.explore
latent-cpu: $(STAMP)
	test -f $(LATENT_RUN)/checkpoints/last.ckpt || $(PY) -m vaegan.run +experiment=celeba_cpu hydra.run.dir=$(LATENT_RUN)
	$(EXPLORE) sample $(LATENT_CKPT) n=32 out=docs/latent
	$(EXPLORE) reconstruct $(LATENT_CKPT) n=8 out=docs/latent
	$(EXPLORE) interpolate $(LATENT_CKPT) 'pairs=[[0,1],[2,3],[4,5],[6,7]]' mode=spherical out=docs/latent
	$(EXPLORE) attributes $(LATENT_CKPT) out=docs/latent
	$(EXPLORE) edit $(LATENT_CKPT) 'attrs=[Smiling,Eyeglasses,Male,Blond_Hair]' n=6 out=docs/latent
	$(EXPLORE) edit $(LATENT_CKPT) --measure out=docs/latent

# The W&B workspace of a project (docs/tracking.md): make dashboard PROJECT=my-team/vaegan [ARGS="--sweep ..."];
# ARGS=--dry-run prints it as JSON without a key. The README's figure of its layout: make dashboard-figure.
PROJECT ?= $(USER)/vaegan
dashboard: $(STAMP)
	$(PY) -m vaegan.dashboard $(PROJECT) $(ARGS)

dashboard-figure: $(STAMP)
	$(PY) -m vaegan.dashboard team/vaegan --dry-run > docs/tracking/workspace.json
	$(PY) experiments/dashboard_figure.py docs/tracking/workspace.json docs/tracking/dashboard.png

clean:
	rm -rf outputs multirun .pytest_cache
